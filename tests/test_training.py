"""The three arms, for a few steps on the micro profile: real TRL trainers, real checkpoints."""

import functools
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from forgetting.arms import arm_dir, run_arm
from forgetting.config import REPO_ROOT
from forgetting.models import SHIPPED
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles
from forgetting.puzzles import make_target
from forgetting.rft import group_diversity
from forgetting.rollout_sft import correct_rollouts, rollout_sft_examples, rollout_source
from forgetting.sft import train_sft
from forgetting.trainer import ArmResult

pytestmark = pytest.mark.slow
BASE = str(SHIPPED["micro"])


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    torch.set_num_threads(2)
    config = load_config("micro", output_dir=str(tmp_path))
    return config, generate_puzzles(config.puzzles, tmp_path)


def _weights(path) -> dict:
    return load_file(str(path / "model.safetensors"))


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_sft_trains_saves_checkpoints_and_changes_weights(setup):
    config, dataset = setup
    result = run_arm(config, "sft", BASE, dataset)
    assert [c.rsplit("-", 1)[-1] for c in result.checkpoints] == ["2", "4"]
    assert _changed(_weights(SHIPPED["micro"]), _weights(result.final))
    assert (result.final / "preprocessor_config.json").is_file() or (result.final / "processor_config.json").is_file()
    history = json.loads((result.final / "trainer_state.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]


def test_checkpoints_at_chosen_steps_too_and_the_evaluation_reads_them(setup):
    from forgetting.evaluation import eval_targets

    config, dataset = setup
    arms = config.arms.model_copy(update={"checkpoint_steps": [1, 3], "checkpoint_every": 4})
    config = config.model_copy(update={"arms": arms})
    result = run_arm(config, "sft", BASE, dataset)
    assert [c.rsplit("-", 1)[-1] for c in result.checkpoints] == ["1", "3", "4"]
    assert result.path != arm_dir(load_config("micro", output_dir=str(config.output.path)), "sft", BASE, dataset)
    steps = [t.step for t in eval_targets(config, BASE, {"sft": result})]
    assert steps == [0, 1, 3, 4]  # the base, both chosen steps, the final model (evaluation.every 2: not 1, 3)


def test_rft_records_every_rollout_with_its_reward(setup):
    config, dataset = setup
    result = run_arm(config, "rft", BASE, dataset)
    rft = config.arms.rft
    rows = [json.loads(line) for line in result.rollouts.read_text().splitlines()]
    assert len(rows) == rft.steps * rft.batch_size  # every completion of every step
    assert {r["step"] for r in rows} == set(range(rft.steps))
    ids = {r["id"] for r in dataset.records("train")}
    for row in rows:
        assert row["puzzle_id"] in ids and isinstance(row["completion"], str)
        assert row["reward"] == pytest.approx(row["accuracy"] + row["exact"] + row["format"])
    assert _changed(_weights(SHIPPED["micro"]), _weights(result.final))
    logged = [h for h in json.loads((result.final / "trainer_state.json").read_text()) if "loss" in h]
    assert all(0 <= h["groups/zero_spread"] <= 1 for h in logged)
    assert all(1 <= h["groups/distinct_answers"] <= rft.num_generations for h in logged)


def test_group_diversity_counts_groups_that_teach_grpo_nothing():
    ids = ["a", "a", "a", "b", "b", "b"]
    texts = ["1 2 3 4", " 1 2 3 4", "1 2 3 4", "2 1 3 4", "4 3 2 1", "2 1 3 4"]
    rewards = [0.5, 0.5, 0.5, 1.0, 0.0, 1.0]
    assert group_diversity(ids, texts, rewards) == {"zero_spread": 0.5, "distinct_answers": 1.5}


def test_rollout_sft_learns_from_exact_rollouts_only(setup, tmp_path):
    config, dataset = setup
    records = dataset.records("train")[:3]
    rows = []
    for i, record in enumerate(records):
        right = make_target(record["answer"], "direct")
        wrong = make_target(list(reversed(record["answer"])), "direct")
        rows += [
            {"step": i, "puzzle_id": record["id"], "completion": right, "exact": 1.0},
            {"step": i, "puzzle_id": record["id"], "completion": right + " ", "exact": 1.0},  # duplicate
            {"step": i, "puzzle_id": record["id"], "completion": wrong, "exact": 0.0},
        ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = correct_rollouts(path)
    assert [r["puzzle_id"] for r in kept] == [r["id"] for r in records]
    examples = rollout_sft_examples(dataset, kept, "direct")
    assert examples[0]["messages"][1]["content"][0]["text"] == make_target(records[0]["answer"], "direct")
    out = tmp_path / "arms" / "rollout_sft-test"
    result = train_sft(config, "rollout_sft", config.arms.rollout_sft, BASE, examples, out)
    assert _changed(_weights(SHIPPED["micro"]), _weights(result.final))


def test_fresh_rollouts_draw_samples_per_puzzle_from_the_rft_model(setup, tmp_path):
    """rollout_source final samples every train puzzle samples_per_puzzle times (default: the RFT group
    size) from the RFT arm's final model, starting afresh after a killed run, and the setting names the arm's
    folder only when it is set."""
    config, dataset = setup
    rft_dir = tmp_path / "rft"
    shutil.copytree(SHIPPED["micro"], rft_dir / "final")  # stands in for a trained RFT model
    rft = ArmResult("rft", rft_dir, (), rft_dir / "rollouts.jsonl")
    n = len(dataset.records("train"))
    folders = set()
    for samples, expected in [(None, config.arms.rft.num_generations), (2, 2)]:
        one = config.model_copy(deep=True)
        one.arms.rollout_sft.rollout_source = "final"
        one.arms.rollout_sft.samples_per_puzzle = samples
        out = tmp_path / f"rollout_sft-{samples}"
        out.mkdir()  # a run killed while sampling left part of a file, its last line torn
        (out / "rollouts-final.tmp").write_text(json.dumps({"step": -1, "puzzle_id": "x"}) + '\n{"step": -1, "puzz')
        rows = [json.loads(line) for line in rollout_source(one, rft, dataset, out).read_text().splitlines()]
        assert len(rows) == n * expected
        assert {r["puzzle_id"] for r in rows} == {r["id"] for r in dataset.records("train")}
        folders.add(arm_dir(one, "rollout_sft", BASE, dataset))
    assert "samples_per_puzzle" not in config.arms.rollout_sft.model_dump(mode="json")  # ids as before
    assert len(folders) == 2


def test_a_killed_arm_resumes_from_its_last_checkpoint(setup, tmp_path):
    config, dataset = setup
    whole = run_arm(config, "sft", BASE, dataset)
    # The same arm elsewhere, "killed" while saving checkpoint-4: final/ never written, checkpoint-4 in part.
    other = load_config("micro", output_dir=str(tmp_path / "other"))
    out = arm_dir(other, "sft", BASE, dataset)
    out.parent.mkdir(parents=True)
    shutil.copytree(whole.path, out)
    shutil.rmtree(out / "final")
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    (out / "checkpoint-4" / "config.json").write_text('{"model_type": "qwen2')
    stamp = (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    resumed = run_arm(other, "sft", BASE, dataset)
    history = json.loads((resumed.final / "trainer_state.json").read_text())
    assert (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == stamp
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]  # 1-2 from the checkpoint, 3-4 resumed
    # Bit-identical to the uninterrupted run: the same losses after resuming, the same final weights. (The
    # Trainer alone resumed from the base weights: see forgetting.trainer.restore_weights.)
    losses = json.loads((whole.final / "trainer_state.json").read_text())
    assert [h.get("loss") for h in history] == [h.get("loss") for h in losses]
    a, b = _weights(whole.final), _weights(resumed.final)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_arm_saves_an_adapter_that_loads_back(setup, tmp_path):
    from forgetting.config import ModelConfig
    from forgetting.evaluation import puzzle_scores
    from forgetting.models import load_model

    config, dataset = setup
    config = config.model_copy(update={"model": ModelConfig(name_or_path="micro", finetune="lora", lora_rank=4)})
    result = run_arm(config, "sft", BASE, dataset)
    assert (result.final / "adapter_config.json").is_file() and not (result.final / "model.safetensors").exists()
    model, _ = load_model(config.model, str(result.final))
    assert any("lora_" in n for n, _ in model.named_parameters())
    model, processor = load_model(config.model, str(result.final), trainable=False)
    scores = puzzle_scores(model, processor, dataset, limit=config.evaluation.limit)
    assert set(scores) == {"puzzle.exact", "puzzle.valid", "puzzle.reward"}


def test_an_arms_progress_reaches_the_flow_runs_log(capsys):
    """Prefect keeps printed lines, not the Trainer's progress bar: a line every tenth of the steps."""
    from types import SimpleNamespace

    from tasks.training import StepLog

    log = StepLog("sft")
    for step in range(1, 21):
        state = SimpleNamespace(max_steps=20, global_step=step, is_world_process_zero=True)
        log.on_log(None, state, None, logs={"loss": 1.0 / step})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"sft: step {s}/20" for s in range(2, 21, 2)]
    assert lines[-1].startswith("sft: step 20/20, loss 0.05 (")


def test_a_rounds_callbacks_see_the_arms_steps(capsys):
    """Iterative-SFT trains each round with a Trainer of its own, counting from 0: the study's callbacks see the
    arm's steps (round 3 of 4, 5 steps each: 11-15 of 20), so the step log and MLflow's curves run on."""
    from transformers import TrainerState

    from forgetting.iterative_sft import Shifted
    from tasks.training import StepLog

    shifted = Shifted(StepLog("iterative_sft"), offset=10, total=20)
    state = TrainerState(max_steps=5, is_world_process_zero=True)
    for step in range(1, 6):
        state.global_step = step
        shifted.on_log(None, state, None, logs={"loss": 1.0})
        shifted.on_step_end(None, state, None)  # an event StepLog does not define: nothing, as on any Callback
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == [
        f"iterative_sft: step {s}/20" for s in (12, 14)
    ]
    assert state.global_step == 5 and state.max_steps == 5  # the round's Trainer keeps its own count
    with pytest.raises(AttributeError):
        shifted.not_an_event  # noqa: B018


def test_a_round_keeps_the_first_answers_of_each_puzzle_up_to_its_cap():
    """answers_per_puzzle: the first n distinct exact answers of each puzzle in sampling order; none, every one.
    Left at its default the setting is not in the config's dump, so studies run before it keep their ids."""
    from forgetting.iterative_sft import first_per_puzzle
    from forgetting.profiles import load_config

    rows = [{"puzzle_id": p, "completion": c} for p, c in ["a1", "b1", "a2", "a3", "c1", "b2"]]
    assert first_per_puzzle(rows, 1) == [rows[0], rows[1], rows[4]]
    assert first_per_puzzle(rows, 2) == [rows[0], rows[1], rows[2], rows[4], rows[5]]
    assert first_per_puzzle(rows, None) == rows == first_per_puzzle(rows, 3)
    wide = load_config("tiny-think-iterative-wide")
    capped = load_config("tiny-think-iterative-wide", ["arms.iterative_sft.answers_per_puzzle=1"])
    assert "answers_per_puzzle" not in wide.model_dump()["arms"]["iterative_sft"]
    assert capped.study_id != wide.study_id and capped.arms.iterative_sft.answers_per_puzzle == 1


def test_a_round_keeps_what_its_cap_allows_of_its_samples(tmp_path):
    """round_samples over a round's samples (a file already there is read, not sampled again): distinct exact
    answers, then at most answers_per_puzzle of each puzzle."""
    from forgetting.iterative_sft import round_samples
    from forgetting.profiles import load_config

    samples = [("a", "x", 1), ("a", "x", 1), ("a", "y", 1), ("a", "z", 1), ("b", "x", 0), ("b", "y", 1)]
    path = tmp_path / "rollouts-round-1.jsonl"
    path.write_text("".join(json.dumps({"puzzle_id": p, "completion": c, "exact": e}) + "\n" for p, c, e in samples))
    for cap, kept in ((None, ["ax", "ay", "az", "by"]), (2, ["ax", "ay", "by"]), (1, ["ax", "by"])):
        config = load_config("micro", [f"arms.iterative_sft.answers_per_puzzle={cap or 'null'}"])
        chosen, rows = round_samples(config, "unused", None, path, 0)
        assert [r["puzzle_id"] + r["completion"] for r in chosen] == kept and len(rows) == len(samples)


def test_a_round_can_keep_only_well_formed_exact_answers(tmp_path):
    """well_formed_only: exact answers without the format bonus are not kept (the first well-formed one of a
    puzzle is, where there is one); off, the setting is not in the config's dump, so studies keep their ids."""
    from forgetting.iterative_sft import round_samples
    from forgetting.profiles import load_config

    samples = [("a", "x", 1, 0.0), ("a", "y", 1, 0.5), ("b", "x", 1, 0.0), ("c", "x", 0, 0.5), ("c", "y", 1, 0.5)]
    path = tmp_path / "rollouts-round-1.jsonl"
    rows = [{"puzzle_id": p, "completion": c, "exact": e, "format": f} for p, c, e, f in samples]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for only, kept in ((False, ["ax", "bx", "cy"]), (True, ["ay", "cy"])):
        config = load_config(
            "micro", ["arms.iterative_sft.answers_per_puzzle=1", f"arms.iterative_sft.well_formed_only={only}"]
        )
        chosen, _ = round_samples(config, "unused", None, path, 0)
        assert [r["puzzle_id"] + r["completion"] for r in chosen] == kept
    assert "well_formed_only" not in load_config("tiny-think-capped-hot").model_dump()["arms"]["iterative_sft"]


def test_an_iterative_arm_stops_at_a_round_with_no_exact_answer(tmp_path):
    """Round 2's samples hold no exact answer: the arm stops there, its final/ the step-2 model that round sampled
    (no optimizer state), its data round 1's, and rollout_source.json and the report's data line say where it
    stopped. A rerun finds it finished; a first round with no exact answer (the base's) raises and trains nothing.
    """
    from forgetting.data_report import source_text
    from forgetting.iterative_sft import train_iterative_sft
    from forgetting.profiles import load_config
    from forgetting.rollout_sft import SOURCE, NoCorrectRollouts

    config = load_config("micro", ["arms.iterative_sft={enabled: true, steps: 4, rounds: 2}"])
    out = tmp_path / "arm"
    checkpoint = out / "checkpoint-2"  # round 1 trained: its round finds its last checkpoint and trains nothing
    checkpoint.mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).write_text(name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [{"loss": 0.5}]}))

    def samples(r: int, exact: list[int]) -> None:
        rows = [{"puzzle_id": f"p{i}", "completion": f"c{i}", "exact": e} for i, e in enumerate(exact)]
        (out / f"rollouts-round-{r}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    samples(1, [1, 0, 1])
    samples(2, [0, 0, 0])
    result = train_iterative_sft(config, "base", None, out)
    assert sorted(p.name for p in result.final.iterdir()) == ["config.json", "model.safetensors", "trainer_state.json"]
    assert json.loads((result.final / "trainer_state.json").read_text()) == [{"loss": 0.5}]
    assert result.checkpoints == (str(checkpoint),)
    source = json.loads((out / SOURCE).read_text())
    assert [(r["round"], r["kept"]) for r in source["rounds"]] == [(1, 2), (2, 0)]
    assert source["stopped"] == {"round": 2, "step": 2, "reason": "no exact answer in 3 samples"}
    assert [json.loads(line)["puzzle_id"] for line in (out / "training_data.jsonl").read_text().splitlines()] == [
        "p0",
        "p2",
    ]
    assert source_text("iterative_sft", source).endswith(
        "; stopped in round 2 (no exact answer in 3 samples): its final model is its step-2 model"
    )
    (out / "rollouts-round-2.jsonl").unlink()  # finished: a rerun samples nothing
    assert train_iterative_sft(config, "base", None, out).final == result.final

    first = tmp_path / "base-solves-none"
    first.mkdir()
    (first / "rollouts-round-1.jsonl").write_text(json.dumps({"puzzle_id": "p", "completion": "c", "exact": 0}))
    with pytest.raises(NoCorrectRollouts, match="round 1: no exact answer in 1 samples"):
        train_iterative_sft(config, "base", None, first)
    assert not (first / "final").exists()


def test_the_trainers_metrics_reach_mlflow_in_batches_each_at_its_step(tmp_path, monkeypatch):
    """Pending metrics go out every `every` seconds, at a checkpoint and at the end; each keeps its step."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from tasks.training import MlflowMetrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("metrics")).info.run_id
    metrics = MlflowMetrics(run_id, every=3600)

    def log(step: int) -> None:
        state = SimpleNamespace(global_step=step, is_world_process_zero=True)
        metrics.on_log(None, state, None, logs={"loss": 1.0 / step, "epoch": step / 10, "note": "x", "flag": True})

    def logged() -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]

    for step in (1, 2, 3):
        log(step)
    assert logged() == []  # pending until the next send
    metrics.on_save(None, None, None)
    assert logged() == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    log(4)
    metrics.every = 0  # time's up at the next log
    log(5)
    assert logged()[-2:] == [(4, 0.25), (5, 0.2)]
    log(6)
    metrics.on_train_end(None, None, None)
    assert [step for step, _ in logged()] == [1, 2, 3, 4, 5, 6]
    assert set(client.get_run(run_id).data.metrics) == {"loss", "epoch"}


def test_the_trainers_read_the_puzzle_images_from_their_files(setup):
    """Examples carry image paths; the dataset TRL trains on decodes them to the RGB images the puzzles are, one
    image a file however often a batch holds it (GRPO's groups), as `image` (RFT) or `images` lists (SFT)."""
    import numpy as np

    from forgetting.rft import rft_examples
    from forgetting.sft import sft_examples
    from forgetting.trainer import image_dataset

    _, dataset = setup
    records = dataset.records("train")
    data = image_dataset(rft_examples(dataset, "direct"))
    assert len(data) == len(records)
    for i in (0, len(records) - 1):
        image = data[i]["image"]
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(dataset.image(records[i])))
    group = data.__getitems__([3, 3, 3, 5])  # how TRL's sampler asks for a batch
    assert group[0]["image"] is group[2]["image"] is data[3]["image"] and group[3]["image"] is not group[0]["image"]
    sft = image_dataset(sft_examples(dataset, "direct", {r["id"]: "1 2 3 4" for r in records}))
    assert np.array_equal(np.asarray(sft[0]["images"][0]), np.asarray(dataset.image(records[0])))


def test_sampling_is_plain_temperature_sampling_whatever_the_checkpoint_says(setup, tmp_path):
    """A checkpoint's generation_config.json (here Qwen2.5-VL-Instruct's: top_k 1, top_p 0.001, temperature 0.1,
    repetition_penalty 1.05) does not shape the study's samples: at temperature 1 a puzzle's 16 samples differ."""
    from forgetting.inference import generate, sampling
    from forgetting.models import chat, load_model

    config, dataset = setup
    stock = tmp_path / "stock"
    shutil.copytree(SHIPPED["micro"], stock)
    settings = json.loads((stock / "generation_config.json").read_text())
    settings.update(do_sample=True, temperature=0.1, top_k=1, top_p=0.001, repetition_penalty=1.05)
    (stock / "generation_config.json").write_text(json.dumps(settings))
    model, processor = load_model(config.model, str(stock), trainable=False)
    record = dataset.records("train")[0]
    conversation = chat(record["prompt_direct"], dataset.image(record))
    torch.manual_seed(0)
    texts = generate(model, processor, [conversation] * 16, 8, **sampling(1.0))
    assert len(set(texts)) > 1, texts
    greedy = generate(model, processor, [conversation] * 2, 8)
    assert greedy[0] == greedy[1]


def test_sft_on_the_stock_qwen_template_learns_the_answer_alone(setup, tmp_path):
    """Qwen2.5-VL's stock chat template has no {% generation %} markers; the assistant-only mask still covers
    the answer and <|im_end|> only, in our batches and in TRL's SFT, and the preflight accepts the model."""
    from pathlib import Path

    import trl
    from transformers import AutoProcessor

    from flows.preflight import check_inputs
    from forgetting.models import batch as make_batch
    from forgetting.models import chat
    from forgetting.sft import sft_examples

    config, dataset = setup
    stock = tmp_path / "stock"
    shutil.copytree(SHIPPED["micro"], stock)
    template = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja"  # the hub model's own
    (stock / "chat_template.jinja").write_text(template.read_text())
    processor = AutoProcessor.from_pretrained(stock)
    assert "{% generation %}" not in processor.chat_template
    record = dataset.records("train")[0]
    inputs = make_batch(processor, [chat(record["prompt_direct"], dataset.image(record), "1 2 3 4")], train=True)
    learned = inputs["input_ids"][inputs["labels"] != -100]
    assert processor.tokenizer.decode(learned).rstrip("\n") == "1 2 3 4<|im_end|>"  # TRL's version adds the \n
    assert "You are a helpful assistant." in processor.tokenizer.decode(inputs["input_ids"][0])  # the stock text

    one = config.model_copy(deep=True)
    one.model.name_or_path = str(stock)
    one.arms.sft.steps = 2
    check_inputs(one, benchmarks=False)
    targets = {r["id"]: make_target(r["answer"], "direct") for r in dataset.records("train")}
    result = train_sft(one, "sft", one.arms.sft, str(stock), sft_examples(dataset, "direct", targets), tmp_path / "a")
    losses = [h["loss"] for h in json.loads((result.final / "trainer_state.json").read_text()) if "loss" in h]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)


def test_the_preflight_refuses_a_template_without_an_assistant_mask(setup, tmp_path, monkeypatch):
    """A chat template without {% generation %} markers that TRL has no training version of is refused before
    any training, naming the markers; a marked template (the project's models) passes without its processor
    being loaded."""
    import transformers

    from flows.preflight import check_inputs
    from forgetting.models import ModelLoadError

    config, _ = setup
    odd = tmp_path / "odd"
    shutil.copytree(SHIPPED["micro"], odd)
    (odd / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content is string else '' }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    one = config.model_copy(deep=True)
    one.model.name_or_path = str(odd)
    with pytest.raises(ModelLoadError, match="generation %} markers"):
        check_inputs(one, benchmarks=False)
    one.arms.sft.enabled = one.arms.teacher_sft.enabled = one.arms.rollout_sft.enabled = False
    check_inputs(one, benchmarks=False)  # RFT alone needs no mask

    def no_processor(*args, **kwargs):
        raise AssertionError("the processor was loaded")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_processor)
    check_inputs(config, benchmarks=False)
    # nor imported (transformers.image_processing_utils imports torchvision: seconds)
    code = "import sys; from forgetting.models import check_training_template as c; c('micro'); "
    code += "print('transformers.image_processing_utils' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert shown.stdout.strip() == "False"


def test_micro_batches_take_the_same_step_in_less_memory(setup, tmp_path):
    """micro_batch_size splits each step's batch and accumulates the gradients: the weights come out as with the
    whole batch at once (to float rounding); GRPO takes a micro batch too."""
    from forgetting.trainer import batch_args

    config, dataset = setup
    assert batch_args(8, 2) == {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4}
    trained = {}
    for micro in (None, 2):
        one = config.model_copy(deep=True)
        one.arms.sft.steps, one.arms.sft.micro_batch_size = 2, micro
        result = run_arm(one, "sft", BASE, dataset)
        state = json.loads((result.path / "checkpoint-2" / "trainer_state.json").read_text())
        assert state["train_batch_size"] == (micro or 4)  # a device's batch
        trained[micro] = _weights(result.final)
    assert _changed(_weights(SHIPPED["micro"]), trained[2])
    for name, whole in trained[None].items():
        torch.testing.assert_close(trained[2][name], whole, rtol=1e-4, atol=1e-5)
    one = config.model_copy(deep=True)
    one.arms.rft.steps, one.arms.rft.micro_batch_size = 1, 4
    history = json.loads((run_arm(one, "rft", BASE, dataset).final / "trainer_state.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1]


def test_an_arm_is_retrained_when_its_libraries_or_training_code_change(setup, monkeypatch):
    """An arm's folder (its cache key) holds the training libraries' versions, the training code's syntax and the
    CPU's rounding settings: a TRL upgrade, a code change, the Hub's kernels turned on or the CPU's native rounding
    make a new arm; a docstring or comment does not."""
    import forgetting
    from forgetting import environment

    config, dataset = setup
    before = arm_dir(config, "sft", BASE, dataset)

    def renames(*changes) -> bool:
        """Whether the arm's folder is another with the changes (monkeypatch calls) made; all undone after."""
        for change in changes:
            change()
        environment.training_fingerprint.cache_clear()
        try:
            return arm_dir(config, "sft", BASE, dataset) != before
        finally:
            monkeypatch.undo()
            environment.training_fingerprint.cache_clear()

    assert renames(lambda: monkeypatch.setattr(environment, "installed", lambda n: "99.0" if n == "trl" else "1.0"))
    # layers from the Hub (any of transformers' true values): another arm; NO, the default: the same
    assert renames(lambda: monkeypatch.setenv("USE_HUB_KERNELS", "y"))
    assert not renames(lambda: monkeypatch.setenv("USE_HUB_KERNELS", "NO"))
    # the CPU's native rounding (FORGETTING_NUMERICS=native)
    assert renames(*(functools.partial(monkeypatch.delenv, name) for name in forgetting.REPRODUCIBLE_NUMERICS))
    assert arm_dir(config, "sft", BASE, dataset) == before

    def fingerprint(text: str) -> str:
        return environment.code_fingerprint((("code.py", text),))

    same = fingerprint('def f(x):\n    """Twice x."""\n    return 2 * x\n')
    assert fingerprint('def f(x):\n    """Two times x."""\n\n    # doubled\n    return 2 * x\n') == same
    assert fingerprint('def f(x):\n    """Two times x."""\n    return 3 * x\n') != same


def test_resuming_under_deepspeed_leaves_the_weights_to_deepspeed(setup):
    """Under DeepSpeed the Trainer resumes from DeepSpeed's own checkpoint, and ZeRO-3 holds every parameter as a
    shard (outside a gather, an empty tensor, as here), which a whole-tensor load_state_dict cannot fill:
    restore_weights leaves them to DeepSpeed instead of failing the resume."""
    from forgetting.models import load_model
    from forgetting.trainer import restore_weights

    config, dataset = setup
    checkpoint = run_arm(config, "sft", BASE, dataset).checkpoints[-1]
    model, _ = load_model(config.model, BASE)
    for parameter in model.parameters():
        parameter.data = torch.empty(0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        restore_weights(model, config, checkpoint)  # what a ZeRO-3 resume did
    zero3 = config.model_copy(deep=True)
    zero3.arms.deepspeed = "configs/accelerate/zero3.json"
    restore_weights(model, zero3, checkpoint)

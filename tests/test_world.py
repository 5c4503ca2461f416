"""The tiny world: tasks, tokenizer and processor, chat template, loader, pretraining."""

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from forgetting import world
from forgetting.config import ModelConfig, PretrainConfig
from forgetting.inference import generate
from forgetting.model_files import check_model_files
from forgetting.models import (
    LORA_TARGETS,
    SHIPPED,
    ModelLoadError,
    batch,
    chat,
    load_model,
    model_fingerprint,
    resolve_model_path,
)
from forgetting.pretrain import (
    TaskDraws,
    backward_by_length,
    build_base,
    pretrain,
    teacher_forced_correct,
    tokenizer_corpus,
    train_batches,
    warm_up_vision,
)
from forgetting.puzzles import answer_text, make_prompt, well_formed_think
from forgetting.tiny_models import build_processor, build_tiny_model, chat_template, train_tokenizer
from forgetting.vision_heads import VISION_TASKS, VisionAux


@pytest.fixture(scope="module")
def processor():
    return build_processor(train_tokenizer(tokenizer_corpus(seed=0, per_task=100), vocab_size=512))


# --- tasks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(world.PRIOR_TASKS))
def test_tasks_are_deterministic_and_held_out_is_separate(task):
    a = world.make_split(task, "test", 200, seed=0)
    b = world.make_split(task, "test", 200, seed=0)
    assert [(i.key, i.prompt, i.answer) for i in a] == [(i.key, i.prompt, i.answer) for i in b]
    assert all((x.image is None) == (y.image is None) for x, y in zip(a, b, strict=True))
    assert all(x.image is None or x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b, strict=True))
    assert len({i.key for i in a}) == 200  # 200 distinct held-out items
    train = world.make_split(task, "train", 400, seed=0)
    assert not {i.key for i in train} & {i.key for i in a}
    assert all(world.split_of(f"{task}|{i.key}") == "test" for i in a)
    assert all(i.image is None or i.image.size == (world.SIDE, world.SIDE) for i in a + train)
    assert "jigsaw" not in " ".join(i.prompt for i in a).lower() and "shuffled" not in " ".join(i.prompt for i in a)


def test_the_world_fingerprint_follows_the_items(monkeypatch):
    before = world.fingerprint("test", 0)
    assert world.fingerprint("train", 0) != before
    original = world.PRIOR_TASKS["spatial"]

    def reworded(rng):
        item = original(rng)
        return world.Item(item.task, item.key, item.prompt.upper(), item.answer, item.image)

    monkeypatch.setitem(world.PRIOR_TASKS, "spatial", reworded)
    world.fingerprint.cache_clear()
    assert world.fingerprint("test", 0) != before
    world.fingerprint.cache_clear()


def test_the_digits_are_scikit_learns_read_without_importing_it():
    from sklearn.datasets import load_digits

    images, targets = world._digits()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and images.dtype == digits.images.dtype
    assert np.array_equal(targets, digits.target)
    drawn = "from forgetting import world; world.fingerprint('test'); import sys; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", drawn], capture_output=True, text=True, check=True).stdout == "False\n"


def test_list_tasks_answer_with_permutations_as_a_jigsaw_does():
    for task in ("quadrant_colours", "quadrant_shapes", "quadrant_counts"):
        answers = set()
        for item in world.make_split(task, "train", 50):
            assert "Positions are numbered row by row" in item.prompt
            assert sorted(item.answer.split()) == ["1", "2", "3", "4"]
            answers.add(item.answer)
        assert len(answers) > 12  # many of the 24 permutations, not a few
    # a fixed code table, as a jigsaw's map from tile to original position is fixed
    for task, names in (("quadrant_colours", world.CELL_COLOURS), ("quadrant_shapes", world.SHAPES)):
        assert all(world.code_table(names) in it.prompt for it in world.make_split(task, "test", 20))


# --- tokenizer, processor, chat template -----------------------------------------------------------------


def test_spatial_asks_for_the_colour_on_the_named_side():
    for item in world.make_split("spatial", "test", 40):
        pixels = np.asarray(item.image).astype(int)
        side = next(s for pair in world.SIDES.values() for s in pair if s in item.prompt)
        axis = 1 if side in world.SIDES["x"] else 0  # numpy: rows are y, columns x
        where = {}
        for name, rgb in world.COLOURS.items():
            found = np.argwhere(np.abs(pixels - rgb).sum(-1) == 0)
            if len(found):
                where[name] = found[:, axis].mean()
        assert len(where) == 2 and item.answer in where
        other = next(c for c in where if c != item.answer)
        assert (where[item.answer] < where[other]) == (side in ("left", "top")), (item.prompt, item.answer, where)


def test_processor_round_trips_offline(processor, tmp_path):
    from transformers import AutoProcessor

    processor.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert type(again).__name__ == "Qwen2_5_VLProcessor"
    item = world.make_split("shape", "train", 1)[0]
    one, two = (batch(p, [chat(item.prompt, item.image, item.answer)], train=True) for p in (processor, again))
    assert torch.equal(one["input_ids"], two["input_ids"]) and torch.equal(one["labels"], two["labels"])
    assert torch.equal(one["pixel_values"], two["pixel_values"])
    # A 112 px image is 8x8 patches of 14 px, merged 2x2: 16 image tokens.
    assert int((one["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    assert "mm_token_type_ids" in one


def test_digits_are_one_token_each(processor):
    tokens = processor.tokenizer.tokenize("12 + 345")
    assert [t for t in tokens if t.isdigit()] == ["1", "2", "3", "4", "5"]
    assert processor.tokenizer.decode(processor.tokenizer.encode("12 + 345")) == "12 + 345"


def test_assistant_mask_covers_the_answer_and_im_end_only(processor):
    items = [world.make_split(t, "train", 1)[0] for t in ("arithmetic", "quadrant_counts", "colour")]
    inputs = batch(processor, [chat(i.prompt, i.image, i.answer) for i in items], train=True)
    tokenizer = processor.tokenizer
    for row, item in enumerate(items):
        labelled = inputs["labels"][row][inputs["labels"][row] != -100]
        assert tokenizer.decode(labelled) == item.answer + "<|im_end|>"
    prompt_only = batch(processor, [chat(i.prompt, i.image) for i in items], train=False)
    assert "labels" not in prompt_only
    text = tokenizer.decode(prompt_only["input_ids"][0], skip_special_tokens=False)
    assert text.rstrip("\n").endswith("<|im_start|>assistant") and "<|endoftext|>" in text  # left padding


def test_the_template_puts_the_image_where_the_model_was_built_to_read_it():
    item = world.make_split("colour", "train", 1)[0]
    text = {}
    for where in ("first", "last"):
        p = build_processor(train_tokenizer(tokenizer_corpus(seed=0, per_task=20), 400, image_position=where))
        text[where] = p.apply_chat_template(chat(item.prompt, item.image, item.answer), tokenize=False)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text["first"].startswith(f"<|im_start|>user\n{image}{item.prompt}<|im_end|>")
    assert text["last"].startswith(f"<|im_start|>user\n{item.prompt}{image}<|im_end|>")
    assert text["first"].endswith(f"<|im_start|>assistant\n{item.answer}<|im_end|>\n")
    # Every shipped base carries the template it was built with (image last): "last" renders it exactly.
    from transformers import AutoProcessor

    conversations = [chat(item.prompt, item.image, item.answer), chat("What is 2 + 3?")]
    for name in SHIPPED:
        shipped = AutoProcessor.from_pretrained(SHIPPED[name])
        saved = shipped.apply_chat_template(conversations, tokenize=False)
        shipped.chat_template = chat_template("last")
        assert shipped.apply_chat_template(conversations, tokenize=False) == saved
    with pytest.raises(ValueError, match="image_position"):
        chat_template("middle")


# --- loader ----------------------------------------------------------------------------------------------


def test_loader_takes_shipped_names_and_local_dirs(processor, tmp_path):
    model = build_tiny_model("micro", processor)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    loaded, loaded_processor = load_model(ModelConfig(name_or_path=str(tmp_path / "m"), device="cpu"))
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert loaded_processor.tokenizer.padding_side == "left"
    for name in SHIPPED:
        assert resolve_model_path(name) == str(SHIPPED[name])
        assert (SHIPPED[name] / "model.safetensors").stat().st_size < 25 * 2**20


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/no/such/dir", "not a model directory"),
        ("./nope", "not a model directory"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "HF_HUB_OFFLINE=1"),
        ("not a model!", "neither one of micro, tiny, tiny-think, tiny-think-brief, tiny-think-brief-long"),
    ],
)
def test_loader_errors_are_clear(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_path(name)


def test_a_damaged_model_is_named_with_how_to_make_it_again(tmp_path):
    """A stored model whose files were cut short or overwritten: the check before any work and the loader name the
    file and, for an arm's checkpoint, the arm folder to delete to train it anew."""
    final = tmp_path / "arms" / "sft-0123456789" / "final"
    shutil.copytree(SHIPPED["micro"], final)
    check_model_files(str(final))  # whole: nothing to say
    remedy = f"; delete {final.parent.resolve()} and run again to have it made anew"  # the arm's folder: trained anew
    weights = final / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    for call in (check_model_files, lambda path: load_model(ModelConfig(), path, trainable=False)):
        with pytest.raises(ModelLoadError, match=re.escape(f"model: {weights.resolve()} cannot be read (")) as err:
            call(str(final))
        assert str(err.value).endswith(remedy)
    shutil.copy(SHIPPED["micro"] / "model.safetensors", weights)
    (final / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(ModelLoadError, match=re.escape(f"model: {(final / 'tokenizer.json').resolve()} cannot be")):
        load_model(ModelConfig(), str(final), trainable=False)
    (final / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=f"model: cannot load {re.escape(str(final))} \\(") as err:
        load_model(ModelConfig(), str(final), trainable=False)
    assert str(err.value).endswith(remedy)


def test_cached_results_follow_the_base_models_content_not_its_path(tmp_path):
    """A base rebuilt in place (same folder, new weights) must not reuse arms or evaluations of the old one."""
    from types import SimpleNamespace

    from forgetting.arms import arm_dir
    from forgetting.benchmarks import BenchmarkData
    from forgetting.evaluation import EvalTarget, eval_dir
    from forgetting.profiles import load_config

    config = load_config("micro", output_dir=str(tmp_path / "out"))
    base, copy = tmp_path / "base", tmp_path / "copy"
    shutil.copytree(SHIPPED["micro"], base)
    shutil.copytree(SHIPPED["micro"], copy)
    dataset = SimpleNamespace(dataset_hash="puzzles")
    data = BenchmarkData(tiny_world_dir=str(tmp_path / "heldout"), puzzles_dir=str(tmp_path / "puzzles"))

    def keys(path):
        target = EvalTarget("base", 0, str(base))
        return arm_dir(config, "sft", str(path), dataset), eval_dir(config, target, data, str(path))

    before = keys(base)
    assert model_fingerprint(str(base)) == model_fingerprint(str(copy))  # content, so a clone shares its cache
    weights = base / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(blob))
    after = keys(base)
    assert before[0] != after[0] and before[1] != after[1]
    assert model_fingerprint("org/not-cached") == "org/not-cached"


def test_lora_adapts_only_the_language_model(processor, tmp_path):
    model = build_tiny_model("micro", processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lora, _ = load_model(ModelConfig(name_or_path=str(tmp_path), finetune="lora", lora_rank=4, device="cpu"))
    adapted = [n for n, _ in lora.named_parameters() if "lora_" in n]
    assert adapted and all("language_model" in n for n in adapted)
    assert any("mlp.down_proj" in n for n in adapted)  # the language model's MLP too
    assert "language_model" in LORA_TARGETS


def test_a_fresh_lora_adapter_starts_from_the_arms_seed(processor, tmp_path):
    """The adapter's random A matrices come from the seed, not from whatever drew random numbers before in the
    process (which made LoRA arms differ run to run), and the process's own random stream is left as it was."""
    model = build_tiny_model("micro", processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = ModelConfig(name_or_path=str(tmp_path), finetune="lora", lora_rank=4, device="cpu")

    def adapter(seed: int) -> dict:
        lora, _ = load_model(config, seed=seed)
        return {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_A" in n}

    torch.manual_seed(1)
    first = adapter(3)
    after_load = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after_load)  # loading drew nothing from the process's stream
    torch.rand(1000)  # other work before the next arm
    again, other = adapter(3), adapter(4)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


# --- pretraining -----------------------------------------------------------------------------------------


def test_the_think_style_asks_as_the_jigsaw_does_and_answers_with_what_it_sees():
    """Under the think prompt every task ends with the jigsaw's think instruction and its completion is
    `<think>what the model sees</think><answer>the answer</answer>`; the list tasks name each cell."""
    jigsaw_end = make_prompt(2, 2, "think").rsplit(". ", 1)[-1]
    for task in world.PRIOR_TASKS:
        for item in world.make_split(task, "train", 5):
            think = world.in_style(item, "think")
            assert think.answer == item.answer and world.in_style(item, "direct") is item
            assert "Answer with" not in think.prompt and well_formed_think(think.completion)
            assert answer_text(think.completion) == item.answer and think.reasoning
            if task.startswith("quadrant"):
                assert think.prompt.endswith(jigsaw_end) and think.reasoning.startswith("1 ")
    item = world.make_split("quadrant_shapes", "test", 1)[0]
    assert world.in_style(item, "think").reasoning == world.cell_list(
        world.SHAPES[int(code) - 1] for code in item.answer.split()
    )


def test_think_share_mixes_styles_and_zero_draws_what_it_always_did():
    """think_share 0 draws exactly the items the shipped tiny base was trained on; 0.5 asks about half in think."""
    plain = PretrainConfig(batch_size=64, seed=3)
    batches = train_batches(plain)
    assert all(it.style == "direct" for it in next(batches))
    mixed = next(train_batches(plain.model_copy(update={"think_share": 0.5})))
    share = sum(it.style == "think" for it in mixed) / len(mixed)
    assert 0.3 < share < 0.7
    first = next(train_batches(plain))
    assert [it.key for it in first] == [it.key for it in mixed]  # the same items, asked in either style
    assert "think_share" not in plain.model_dump(mode="json")  # ids of direct-only pretraining as before
    config = PretrainConfig(steps=2, batch_size=8, eval_every=2, eval_items=8, vocab_size=512, think_share=0.5)
    model, processor, history = pretrain("micro", config)
    tokens = processor.tokenizer.tokenize("<think>1 red</think><answer>1</answer>")
    assert tokens[0] == "<think>" and "</think>" in tokens and tokens[-3:] == ["<answer>", "1", "</answer>"]
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    assert {"heldout.mean", "heldout_think.mean"} <= set(history[2])


def test_brief_share_gives_think_items_brief_reasoning_and_zero_leaves_the_stream_as_it_was():
    """brief_share: that share of the think items says briefly that it looks (a list task: at its cells) instead
    of what it sees, with the same prompt and answer; 0 draws the same items in the same styles as before."""
    mixed = PretrainConfig(batch_size=64, seed=3, think_share=0.5)
    brief = next(train_batches(mixed.model_copy(update={"brief_share": 0.5})))
    before = next(train_batches(mixed))
    assert [(it.key, it.style, it.prompt) for it in brief] == [(it.key, it.style, it.prompt) for it in before]
    short = [it for it in brief if it.reasoning in world.BRIEF_REASONING.values()]
    assert 0.3 < len(short) / sum(it.style == "think" for it in brief) < 0.7
    assert all(it.style == "think" for it in short)
    for it in short:
        assert answer_text(it.completion) == it.answer and well_formed_think(it.completion)
        assert (it.reasoning == world.BRIEF_REASONING["list"]) == it.task.startswith("quadrant")
    assert "brief_share" not in mixed.model_dump(mode="json")


def test_micro_pretraining_smoke():
    torch.set_num_threads(2)
    losses = []
    config = PretrainConfig(steps=40, batch_size=16, warmup_steps=5, eval_every=40, eval_items=8, vocab_size=512)
    _, _, history = pretrain("micro", config, log=lambda m, step: losses.append(m["loss"]) if "loss" in m else None)
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2  # the loss falls (5.7 -> 3.8 measured)
    assert set(history[40]) >= {f"heldout.{t}" for t in world.PRIOR_TASKS}


@pytest.mark.parametrize("size", ["micro", "tiny"])
def test_teacher_forced_equals_greedy_generate_on_every_task(size):
    """With batches through the processor, 3D image positions are the same in training and generate."""
    model, processor = load_model(ModelConfig(name_or_path=size, device="cpu"))
    items = [it for task in world.PRIOR_TASKS for it in world.make_split(task, "test", 6)]
    forced = teacher_forced_correct(model, processor, items)
    completions = generate(model, processor, [chat(i.prompt, i.image) for i in items], 12, do_sample=False)
    greedy = [c.strip() == i.answer for c, i in zip(completions, items, strict=True)]
    assert forced == greedy
    if size == "tiny":
        assert sum(greedy) / len(greedy) > 0.8  # the shipped weights load and answer (model_card: held-out mean 0.948)


def test_vision_warmup_trains_the_vision_tower_alone():
    torch.set_num_threads(2)
    config = PretrainConfig(steps=1, batch_size=14, warmup_steps=2, eval_items=8, vocab_size=512, seed=3)
    model, processor = build_base("micro", config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    scores = warm_up_vision(
        model, processor, config.model_copy(update={"vision_warmup_steps": 12}), lambda m, step: losses.append(m)
    )
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("model.visual.") for n in changed)
    assert set(scores) == {f"vision_warmup.{t}" for t in VISION_TASKS} and all(0 <= v <= 1 for v in scores.values())
    assert losses[-1] == scores and losses[0]["vision_warmup.loss"] > 0


def test_vision_aux_reads_the_image_tokens_of_the_models_own_forward():
    torch.set_num_threads(2)
    config = PretrainConfig(steps=1, batch_size=8, eval_items=8, vocab_size=512, seed=1)
    model, processor = build_base("micro", config)
    aux = VisionAux(model, processor, config.seed, weight=2.0)
    tasks = ("shape", "spatial", "quadrant_counts", "arithmetic")
    items = [it for task in tasks for it in world.make_split(task, "train", 2)]
    backward_by_length(model, processor, items, aux)
    trained = {t for t, head in aux.heads.heads.items() if head.weight.grad is not None}
    assert trained == {"shape", "quadrant_counts"}  # the image-only tasks of the batch; spatial is not one
    # the tokens caught from the last forward (the list group, quadrant_counts) are the tower's own, in item order
    group = items[4:6]
    caught = aux.loss(group, len(items))
    assert torch.allclose(caught, 2.0 * aux.heads.loss("quadrant_counts", group) * 2 / len(items))
    assert aux.loss(items[6:], len(items)) is None  # text only: nothing to read
    aux.close()
    assert not model.model.visual._forward_hooks


def test_the_training_step_scores_each_item_as_teacher_forcing_does():
    """backward_by_length trains in length groups, yet says per item, in the items' order, what
    teacher_forced_correct says: the signal error-weighted draws read, free from the step's forward pass."""
    torch.set_num_threads(2)
    model, processor = load_model(ModelConfig(name_or_path="tiny", device="cpu"))
    items = [it for task in world.PRIOR_TASKS for it in world.make_split(task, "train", 3, seed=5)]
    # the second item of each task takes the first one's answer: wrong answers among right ones in every group
    items = [replace(it, answer=items[i - 1].answer) if i % 3 == 1 else it for i, it in enumerate(items)]
    items = items[1::2] + items[::2]  # the groups interleave
    _, correct = backward_by_length(model, processor, items)
    assert correct == teacher_forced_correct(model, processor, items)
    assert 0 < sum(correct) < len(correct)  # both kinds of answer occur, so the order is checked


def test_error_weighted_draws_favour_the_tasks_still_wrong():
    config = PretrainConfig(batch_size=16, task_draws="error", draw_floor=0.25)
    draws = TaskDraws(config)
    assert len(set(draws.shares().values())) == 1  # nothing scored yet: all count as wrong, draws start equal
    colour = world.make_split("colour", "train", 4)
    counts = world.make_split("quadrant_counts", "train", 4)
    draws.record(colour + counts, [True] * 4 + [False, False, False, True])
    shares = draws.shares()
    assert shares["draws.colour"] == pytest.approx(0.25 / (0.25 + 1.0 + 7 * 1.25))
    assert shares["draws.quadrant_counts"] == pytest.approx(1.0 / (0.25 + 1.0 + 7 * 1.25))
    drawn = [it.task for batch_ in itertools.islice(train_batches(config, draws), 200) for it in batch_]
    assert drawn.count("colour") < 0.5 * drawn.count("quadrant_counts")
    equal = TaskDraws(PretrainConfig())
    equal.record(colour, [True] * 4)
    assert len(set(equal.shares().values())) == 1  # the default ignores the scores
    assert "task_draws" not in PretrainConfig().model_dump()  # the default leaves config hashes as they were


def test_pretraining_is_reproducible():
    torch.set_num_threads(2)
    config = PretrainConfig(
        steps=6, batch_size=8, warmup_steps=2, eval_every=6, eval_items=8, vocab_size=512, task_draws="error"
    )  # error draws: the batches follow the model's own answers, and still repeat exactly
    first, _, _ = pretrain("micro", config)
    second, _, _ = pretrain("micro", config)
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(("grid", "chance"), [("2x2", 1 / 23), ("3x3", 1 / 362879)])
def test_the_jigsaw_probe_gives_the_chance_of_its_own_grid(grid, chance):
    """A shuffled puzzle is any permutation but the identity: chance exact accuracy is 1 / (tiles! - 1)."""
    from forgetting.config import PuzzleConfig
    from forgetting.pretrain import jigsaw_probe

    model, processor = load_model(ModelConfig(name_or_path="micro"), trainable=False)
    puzzles = PuzzleConfig(grid=grid, source="synthetic" if grid == "2x2" else "bundled")
    probe = jigsaw_probe(model, processor, n=2, samples=0, puzzles=puzzles, max_new_tokens=4)
    assert probe["jigsaw.chance_exact"] == pytest.approx(chance)


def _without_writer(path):
    return re.sub(r'"transformers_version": "[^"]*"', '"transformers_version": ""', path.read_text())


def test_the_shipped_architecture_is_what_its_command_writes_and_loads_only_through_a_study(tmp_path):
    """assets/qwen2.5-vl-3b-smoke is forgetting/architectures.py's output (Qwen2.5-VL-3B's settings, 2 text layers,
    2 vision blocks, no weights); loading it as a model is a clear error (a study's base stage initialises it)."""
    from forgetting.architectures import write_architecture
    from forgetting.config import REPO_ROOT
    from forgetting.models import ModelLoadError

    shipped = REPO_ROOT / "assets" / "qwen2.5-vl-3b-smoke"
    fresh = write_architecture(tmp_path / shipped.name, text_layers=2, vision_blocks=2)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for file in shipped.iterdir():  # the transformers release that wrote a file is not part of the architecture
        assert _without_writer(fresh / file.name) == _without_writer(file), file.name
    with pytest.raises(ModelLoadError, match="architecture without weights"):
        load_model(ModelConfig(name_or_path="assets/qwen2.5-vl-3b-smoke"))


def test_the_study_runs_transformers_own_layers_not_kernels_from_the_hub():
    """transformers (from 5.25) swaps layers for kernels fetched from the Hub when a model loaded on a GPU switches
    between training and evaluation, which fails offline and runs code the study does not pin; importing the
    loader turns that off unless the environment already asks for it (USE_HUB_KERNELS=YES)."""
    assert os.environ["USE_HUB_KERNELS"] == "NO"
    model, _ = load_model(ModelConfig(name_or_path="micro", device="cpu"))
    model.eval()
    assert model.use_kernels is False

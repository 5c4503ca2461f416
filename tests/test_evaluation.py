"""Evaluation through lm-eval on the shipped task YAMLs, and the output-format check."""

import dataclasses
import hashlib
import json

import pytest
import torch
from PIL import Image

from forgetting import world
from forgetting.base_model import write_heldout_sets
from forgetting.benchmarks import (
    BenchmarkData,
    EvaluationError,
    StudyLM,
    check_benchmarks,
    doc_to_image,
    load_docs,
    request_conversation,
    run_benchmarks,
)
from forgetting.evaluation import EvalTarget, evaluate_target
from forgetting.inference import continuation_logprobs, generate
from forgetting.models import SHIPPED, load_model
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles

BENCHMARKS = ["jigsaw", "tiny_world"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The micro profile's held-out sets (48 items per task) and puzzles (16 test puzzles)."""
    out = tmp_path_factory.mktemp("eval")
    config = load_config("micro", output_dir=str(out))
    heldout = write_heldout_sets(config)
    dataset = generate_puzzles(config.puzzles, config.output.path)
    return config, BenchmarkData(str(heldout), str(dataset.path))


def _key(conversation: list[dict]) -> tuple[str, str]:
    """What identifies a document from the model's side: its text and the bytes of its image."""
    content = conversation[0]["content"]
    text = next(part["text"] for part in content if part["type"] == "text")
    images = [part["image"] for part in content if part["type"] == "image"]
    return text, hashlib.sha256(images[0].tobytes()).hexdigest() if images else ""


class ScriptedLM(StudyLM):
    """The registered model class with its generation replaced by a script: answer(doc) or a constant."""

    def __init__(self, data: BenchmarkData, answer):
        super().__init__(model=None, processor=None)
        self.answers = {}
        for benchmark in [*world.PRIOR_TASKS, "jigsaw"]:
            for doc in load_docs(benchmark, data.tiny_world_dir, data.puzzles_dir)["test"]:
                self.answers[_key(request_conversation(doc["prompt"], doc_to_image(doc)))] = answer(doc)

    def complete(self, conversations, max_new_tokens, sampling, answers=None):
        return [self.answers[_key(c)] for c in conversations], [None] * len(conversations)


def test_oracle_scores_one_and_wrong_answers_zero(data):
    _, benchmark_data = data
    rows, samples = run_benchmarks(ScriptedLM(benchmark_data, lambda d: d["answer"]), BENCHMARKS, benchmark_data)
    assert {r["benchmark"] for r in rows} == {"jigsaw", *(f"tiny_world_{t}" for t in world.PRIOR_TASKS)}
    for row in rows:
        assert row["value"] == 1.0 and row["format_failures"] == 0, row
        assert row["n"] == (16 if row["benchmark"] == "jigsaw" else 48)
    assert len(samples) == 16 + 48 * len(world.PRIOR_TASKS)

    rows, _ = run_benchmarks(ScriptedLM(benchmark_data, lambda d: "banana"), BENCHMARKS, benchmark_data)
    for row in rows:
        assert row["value"] == 0.0 and row["format_failures"] == row["n"], row


def test_format_check_tells_a_wrong_answer_from_a_wrong_format(data):
    _, benchmark_data = data

    def wrong_in_format(doc):  # a valid answer of the right kind, but not the right one
        fmt = doc["format"]
        if fmt.startswith("one_of:"):
            return next(c for c in fmt.removeprefix("one_of:").split(",") if c != doc["answer"])
        if fmt == "number":
            return str(int(doc["answer"]) + 1)
        return " ".join(reversed(doc["answer"].split())) if len(set(doc["answer"].split())) > 1 else "9 9 9 9"

    rows, _ = run_benchmarks(ScriptedLM(benchmark_data, wrong_in_format), ["tiny_world"], benchmark_data, limit=20)
    for row in rows:
        assert row["format_failures"] == 0, row
        assert row["value"] < 0.2, row  # (a reversed list can equal a palindromic answer)


@pytest.mark.parametrize(
    ("text", "answer", "fmt", "expected"),
    [
        ("red", "red", world.ANSWER_FORMATS["colour"], (True, True)),
        (" Red.", "red", world.ANSWER_FORMATS["colour"], (True, True)),
        ("blue", "red", world.ANSWER_FORMATS["colour"], (False, True)),
        ("1 2 3 4", "red", world.ANSWER_FORMATS["colour"], (False, False)),
        ("7", "7", "number", (True, True)),
        ("seven", "7", "number", (False, False)),
        ("1, 2, 3, 4", "1 2 3 4", "numbers:4", (True, True)),
        ("1 2 3", "1 2 3 4", "numbers:4", (False, False)),
        ("4 3 2 1", "1 2 3 4", "numbers:4", (False, True)),
    ],
)
def test_grade(text, answer, fmt, expected):
    assert world.grade(text, answer, fmt) == expected


def test_unknown_benchmark_fails_fast():
    with pytest.raises(EvaluationError, match="no_such_benchmark"):
        check_benchmarks(["tiny_world", "no_such_benchmark"])
    check_benchmarks(["tiny_world", "jigsaw"])


def test_benchmark_documents_print_nothing(data, monkeypatch):
    """Building a benchmark's documents calls no print (under a Prefect run that logs prints, datasets' own
    fingerprint, dill disassembling a function through print, put bytecode in the run's log), and gives the
    table and features datasets' own construction gives."""
    import builtins

    import datasets

    _, benchmark_data = data
    printed, print_ = [], builtins.print
    docs = {}
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: printed.append(args))
    for benchmark in ("jigsaw", "colour", "digit"):
        docs[benchmark] = load_docs(benchmark, benchmark_data.tiny_world_dir, benchmark_data.puzzles_dir)["test"]
    monkeypatch.setattr(builtins, "print", print_)
    assert printed == []
    for benchmark, dataset in docs.items():
        stock = datasets.Dataset.from_list(dataset.to_list())
        assert dataset.features == stock.features and dataset.to_list() == stock.to_list(), benchmark
    assert len({dataset._fingerprint for dataset in docs.values()}) == 3


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="no held-out data"):
        load_docs("colour", tiny_world_dir=str(tmp_path))


@pytest.mark.slow
def test_log_probabilities_agree_with_greedy_generation(data):
    """continuation_logprobs runs the prompt exactly as generate does: an answer greedy decoding produced is
    greedy under it too, and a batch scores each item as it scores alone."""
    config, benchmark_data = data
    model, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    docs = [
        d for task in ("colour", "count", "arithmetic") for d in load_docs(task, benchmark_data.tiny_world_dir)["test"]
    ]
    prompts = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
    produced = [t.strip() for t in generate(model, processor, prompts, 8, do_sample=False)]
    scored = continuation_logprobs(model, processor, prompts, produced, batch_size=16)
    assert all(greedy for (_, n, greedy), text in zip(scored, produced, strict=True) if n > 0 and text)
    alone = [
        continuation_logprobs(model, processor, [p], [t])[0] for p, t in zip(prompts[:5], produced[:5], strict=True)
    ]
    for (a, n, _), (b, m, _) in zip(alone, scored[:5], strict=False):
        assert n == m and a == pytest.approx(b, abs=1e-4)


def test_generation_scores_answers_on_its_own_prompt_forward(data):
    """generate_and_score: the same completions as generate and the same log-probabilities as token_logprobs,
    for prompts with an image and text-only ones (their positions count past the left padding), with and
    without an answer to score; StudyLM collects them per tiny-world benchmark as lm-eval generates."""
    from forgetting.inference import generate_and_score, token_logprobs

    config, benchmark_data = data
    model, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    for task in ("colour", "arithmetic", "quadrant_counts"):
        docs = list(load_docs(task, benchmark_data.tiny_world_dir)["test"])[:12]
        prompts = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
        answers = [d["answer"] if i % 3 else None for i, d in enumerate(docs)]
        texts, scored = generate_and_score(model, processor, prompts, answers, 8, 5, do_sample=False)
        assert texts == generate(model, processor, prompts, 8, 5, do_sample=False)
        alone = token_logprobs(model, processor, prompts, [a or "" for a in answers], 5)
        for answer, got, expected in zip(answers, scored, alone, strict=True):
            assert (got is None) == (answer is None)
            if got is not None:
                assert got.total == pytest.approx(expected.total, abs=1e-5) and got.greedy == expected.greedy
    lm = StudyLM(model, processor, 8, score_answers=True)
    run_benchmarks(lm, ["jigsaw", "tiny_world_colour", "tiny_world_arithmetic"], benchmark_data, 6)
    found = lm.answer_logprobs()
    assert sorted(found) == ["tiny_world_arithmetic", "tiny_world_colour"] and all(v < 0 for v in found.values())
    docs = list(load_docs("colour", benchmark_data.tiny_world_dir)["test"])[:6]
    prompts = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
    expected = [s.total for s in token_logprobs(model, processor, prompts, [d["answer"] for d in docs])]
    assert found["tiny_world_colour"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)


def test_prompt_batches_seen_before_are_the_processors_own(data, monkeypatch):
    """models.batch keeps prompt batches by content: a batch asked again (every checkpoint's evaluation asks the
    same held-out prompts) is the processor's output kept, not the processor run again; a batch a caller changed
    in place, another image, text, padding side or processor is processed anew, and the least recently used batch
    goes past the cap."""
    import forgetting.models as models

    config, benchmark_data = data
    _, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    _, other = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    docs = list(load_docs("colour", benchmark_data.tiny_world_dir)["test"])[:6]
    prompts = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
    cache = models.PromptBatches()
    monkeypatch.setattr(models, "PROMPT_BATCHES", cache)
    calls, real = [], models._processed
    monkeypatch.setattr(models, "_processed", lambda p, c, train: calls.append(len(c)) or real(p, c, train))
    first = models.batch(processor, prompts, train=False)
    again = models.batch(processor, [request_conversation(d["prompt"], doc_to_image(d)) for d in docs], train=False)
    expected = real(processor, prompts, train=False)
    assert calls == [6] and again.keys() == expected.keys()
    assert all(torch.equal(again[k], v) and again[k] is first[k] for k, v in expected.items())
    first["input_ids"][0, 0] = -1  # a caller's change is not handed out again
    changed = models.batch(processor, prompts, train=False)
    assert calls == [6, 6] and all(torch.equal(changed[k], v) for k, v in expected.items())
    models.batch(other, prompts, train=False)  # another processor object with the same files: the same batch
    assert calls == [6, 6]
    flipped = request_conversation(docs[0]["prompt"], [doc_to_image(docs[0])[0].transpose(0)])
    reworded = request_conversation(docs[0]["prompt"] + " ", doc_to_image(docs[0]))
    for changed in (flipped, reworded):
        models.batch(processor, [changed, *prompts[1:]], train=False)
    monkeypatch.setattr(processor.tokenizer, "padding_side", "right")
    models.batch(processor, prompts, train=False)
    assert calls == [6, 6, 6, 6, 6] and len(cache.entries) == 4
    cache.max_bytes = cache.size - 1
    monkeypatch.setattr(processor.tokenizer, "padding_side", "left")
    models.batch(processor, prompts[:3], train=False)  # a new batch past the cap: the least recently used goes
    assert len(cache.entries) == 4 and cache.size <= cache.max_bytes
    models.batch(processor, prompts, train=False)
    assert calls == [6, 6, 6, 6, 6, 3, 6]


def test_image_files_are_decoded_once_and_read_again_when_they_change(tmp_path, monkeypatch):
    """The held-out images every evaluation reads: one decode and one digest a file, the same pixels as a fresh
    decode; a file rewritten is decoded anew, the least recently used image goes past the cap, and with the faster
    paths off every call decodes."""
    from forgetting import image_files

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(path)
    cache, decoded = image_files.ImageFiles(max_bytes=2 * 8 * 8 * 3), []
    real = image_files.decode_rgb
    monkeypatch.setattr(image_files, "decode_rgb", lambda p: decoded.append(p) or real(p))
    first = cache.rgb(paths[0])
    assert cache.rgb(str(paths[0])) is first and decoded == [paths[0]]
    assert first.tobytes() == real(paths[0]).tobytes() and first.mode == "RGB"
    hashed = []
    monkeypatch.setattr(image_files, "pixel_digest", lambda im: hashed.append(1) or f"d{len(hashed)}")
    assert cache.digest(first) == cache.digest(first) == "d1" and cache.digest(first.copy()) == "d2"
    Image.new("RGB", (9, 8), (7, 0, 0)).save(paths[0])  # rewritten: another size
    assert cache.rgb(paths[0]).size == (9, 8) and len(decoded) == 2
    cache.rgb(paths[1])
    cache.rgb(paths[2])  # past the cap: the rewritten first image (least recently used) goes
    assert len(cache.entries) == 2 and cache.size <= cache.max_bytes and len(cache.digests) == 2
    monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
    assert cache.rgb(paths[1]) is not cache.rgb(paths[1])


def test_samples_of_one_prompt_are_drawn_from_its_one_run(data, monkeypatch):
    """generate given one conversation object several times (the KL's and pass@k's samples) runs the prompt once
    and samples every copy from its cache: the same samples, seed for seed, as from the repeated prompts (the stock
    path, FORGETTING_FAST_PATHS=0), for think and text-only prompts."""
    import forgetting.inference as inference
    from forgetting.evaluation import held_out_prompts
    from forgetting.inference import sampling

    config, benchmark_data = data
    model, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    _, puzzles = held_out_prompts("jigsaw", dataclasses.replace(benchmark_data, prompt_style="think"), 4)
    docs = list(load_docs("arithmetic", benchmark_data.tiny_world_dir)["test"])[:3]
    sums = [request_conversation(d["prompt"]) for d in docs]
    runs, real = [], inference.prompt_cache
    monkeypatch.setattr(inference, "prompt_cache", lambda m, f, *a: runs.append(len(f["input_ids"])) or real(m, f, *a))
    for prompts in (puzzles, sums):
        repeated = [p for p in prompts for _ in range(3)]
        torch.manual_seed(7)
        fast = generate(model, processor, repeated, 12, 8, **sampling(1.0))
        monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
        torch.manual_seed(7)
        assert fast == generate(model, processor, repeated, 12, 8, **sampling(1.0))
        monkeypatch.delenv("FORGETTING_FAST_PATHS")
        assert len(set(fast)) > len(prompts)  # samples of one prompt differ
    # batches of 8 rows: 4 puzzles x 3 run as 3 + 2 prompts; 3 sums x 3 as 3, then one row alone (nothing to share)
    assert runs == [3, 2, 3]


def test_the_text_prompts_begin_with_moves_to_the_front_of_each_row():
    """prefix_length: the tokens every left-padded prompt begins with, up to its first image token and two tokens
    before its end; prefix_first: each row's prefix before its padding, the rest in place."""
    from forgetting.common_prefix import prefix_first, prefix_length

    ids = torch.tensor([[0, 0, 7, 8, 9, 6, 1, 2], [0, 7, 8, 9, 6, 3, 4, 5], [7, 8, 9, 6, 9, 1, 1, 1]])
    mask = (torch.arange(8)[None] >= torch.tensor([[2], [1], [0]])).long()
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.ones(3, 4)}
    assert prefix_length(inputs, 8) == 4
    moved = prefix_first(inputs, 4)
    assert moved["input_ids"].tolist() == [[7, 8, 9, 6, 0, 0, 1, 2], [7, 8, 9, 6, 0, 3, 4, 5], ids[2].tolist()]
    assert moved["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1, 1], [1] * 8]
    assert moved["pixel_values"] is inputs["pixel_values"]
    assert prefix_length(inputs, 7) == 3 - 3  # two tokens before the shortest prompt's end: 3, below MIN_PREFIX
    types = torch.zeros_like(ids)
    types[2, 3] = 1  # an image token in the fourth place of one row ends the prefix before it
    assert prefix_length({**inputs, "mm_token_type_ids": types}, 8) == 0
    assert prefix_length({"input_ids": ids[:1], "attention_mask": mask[:1]}, 8) == 0  # one row: nothing to share


def test_prompts_that_begin_alike_run_their_common_text_once(data, monkeypatch):
    """generate_and_score and token_logprobs with common_prefix: the text every prompt of a batch begins with (the
    benchmark's question, before each item's image) runs once, with the same completions and samples and the same
    log-probabilities to float rounding as each prompt run whole, for prompts with images, text-only ones and
    samples of repeated prompts."""
    import forgetting.inference as inference
    from forgetting.evaluation import held_out_prompts
    from forgetting.inference import generate_and_score, sampling, token_logprobs

    config, benchmark_data = data
    model, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    lengths, real = [], inference.prefix_length

    def spy(inputs: dict, width: int) -> int:
        lengths.append((len(inputs["input_ids"]), real(inputs, width)))
        return lengths[-1][1]

    monkeypatch.setattr(inference, "prefix_length", spy)
    _, puzzles = held_out_prompts("jigsaw", benchmark_data, 6)
    batches = {"jigsaw": (puzzles, ["1 2 3 4"] * 6)}
    for task in ("arithmetic", "quadrant_counts"):
        docs = list(load_docs(task, benchmark_data.tiny_world_dir)["test"])[:7]
        batches[task] = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs], [d["answer"] for d in docs]
    for task, (prompts, answers) in batches.items():
        wanted = [a if i % 2 else None for i, a in enumerate(answers)]
        runs = {}
        for common in (False, True):
            texts, scored = generate_and_score(model, processor, prompts, wanted, 8, 4, common, do_sample=False)
            alone = token_logprobs(model, processor, prompts, answers, 4, common)
            torch.manual_seed(3)
            samples = inference.generate(model, processor, [p for p in prompts for _ in range(3)], 8, 6, common,
                                         **sampling(1.0))  # fmt: skip
            runs[common] = texts, [s and s.total for s in scored], [s.total for s in alone], samples
        (texts, scored, alone, samples), fast = runs[False], runs[True]
        assert fast[0] == texts and fast[3] == samples, task
        assert fast[1] == pytest.approx(scored, abs=1e-4) and fast[2] == pytest.approx(alone, abs=1e-4), task
    shared = [n for rows, n in lengths if rows > 1]  # a batch of one prompt has nothing to share
    assert min(shared) >= 4 and max(shared) > 40  # every batch shared its question; the jigsaw's is long


def test_a_prompt_run_samples_and_scores_as_separate_calls_would(data, monkeypatch):
    """PromptRun (the KL's): the prompts run once (think prompts, one image each), then samples drawn from that run
    are generate's over the repeated prompts seed for seed, and answers scored on it (several to each prompt, one
    empty) have token_logprobs' log-probabilities over whole rows (the stock path, FORGETTING_FAST_PATHS=0), in
    order, however often the run is used; with the faster paths off it keeps nothing."""
    import forgetting.inference as inference
    from forgetting.evaluation import held_out_prompts
    from forgetting.inference import PromptRun, sampling, token_logprobs

    config, benchmark_data = data
    model, processor = load_model(config.model, str(SHIPPED["micro"]), trainable=False)
    _, prompts = held_out_prompts("jigsaw", dataclasses.replace(benchmark_data, prompt_style="think"), 5)
    answers = [["<think>1 red</think><answer>1 2 3 4</answer>", "", "4 3"], ["2"], ["1 1 1 1 1 1", "3 1"], [], ["x"]]
    runs = []
    real = inference.prompt_cache
    monkeypatch.setattr(inference, "prompt_cache", lambda *a, **k: runs.append(1) or real(*a, **k))
    run = PromptRun(model, processor, prompts)
    torch.manual_seed(3)
    drawn = run.sample(model, processor, 2, 12, **sampling(1.0))
    scored = run.score(model, processor, answers)
    again = run.score(model, processor, answers)
    assert runs == [1] and run.nbytes > 0 and "pixel_values" not in run.inputs
    torch.manual_seed(3)
    assert drawn == generate(model, processor, [p for p in prompts for _ in range(2)], 12, **sampling(1.0))
    monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
    flat = [a for given in answers for a in given]
    rows = [p for p, given in zip(prompts, answers, strict=True) for _ in given]
    stock = token_logprobs(model, processor, rows, flat)
    assert [s.total for s in scored] == pytest.approx([s.total for s in stock], abs=1e-4)
    assert [s.logprobs for s in again] == [s.logprobs for s in scored] and scored[1].total == 0.0
    assert [s.greedy for s in scored] == [s.greedy for s in stock]
    off = PromptRun(model, processor, prompts)
    assert off.nbytes == 0 and [s.total for s in off.score(model, processor, answers)] == [s.total for s in stock]


@pytest.mark.slow
def test_micro_evaluation_end_to_end(data):
    """The micro base model through lm-eval on every shipped benchmark, written once and then reused."""
    config, benchmark_data = data
    base = str(SHIPPED["micro"])
    target = EvalTarget("base", 0, base)
    out = evaluate_target(config, target, benchmark_data, base)
    record = json.loads((out / "evaluation.json").read_text())
    assert record["arm"] == "base" and record["puzzle_benchmark"] == "jigsaw"
    assert len(record["benchmarks"]) == 1 + len(world.PRIOR_TASKS)
    for row in record["benchmarks"]:
        assert 0.0 <= row["value"] <= 1.0 and row["n"] == config.evaluation.limit
        assert 0 <= row["format_failures"] <= row["n"]
    assert record["param_distance"] == {"l2": 0.0, "relative": 0.0}
    kl = record["policy_kl"]  # the base against itself: the same answers, the same log-probabilities
    assert kl["samples"] == 2 * config.evaluation.limit and kl["forward"] == pytest.approx(0.0, abs=1e-5)
    assert kl["reverse"] == pytest.approx(0.0, abs=1e-5)
    assert all(v < 0 for v in record["answer_logprob"].values())
    samples = (out / "samples.jsonl").read_text().splitlines()
    assert len(samples) == config.evaluation.limit * len(record["benchmarks"])
    stamp = (out / "evaluation.json").stat().st_mtime_ns
    assert evaluate_target(config, target, benchmark_data, base) == out
    assert (out / "evaluation.json").stat().st_mtime_ns == stamp


def test_a_group_lm_eval_scores_as_one_is_one_benchmark(data):
    """A requested group with an aggregate score (tiny_world_quadrants, as mmmu_val) is one benchmark of the prior
    mean, scored as lm-eval scores it; a group that only collects tasks (tiny_world) counts as its tasks."""
    _, benchmark_data = data
    lm = ScriptedLM(benchmark_data, lambda d: d["answer"] if len(d["prompt"]) % 2 else "banana")
    rows, samples = run_benchmarks(lm, ["tiny_world_quadrants", "tiny_world_colour"], benchmark_data, limit=5)
    assert [r["benchmark"] for r in rows] == ["tiny_world_colour", "tiny_world_quadrants"]
    quadrants = rows[1]
    mine = [s for s in samples if s["benchmark"] == "tiny_world_quadrants"]
    assert quadrants["n"] == len(mine) == 15
    assert {s["task"] for s in mine} == {f"tiny_world_quadrant_{t}" for t in ("colours", "shapes", "counts")}
    assert quadrants["value"] == pytest.approx(sum(s["score"] for s in mine) / 15)
    assert quadrants["format_failures"] == sum(s["format_ok"] == 0 for s in mine)


def _lm_eval_output(responses: dict[str, list[tuple[dict, str, float]]]) -> dict:
    """What simple_evaluate returns for mmmu_val (a group of groups that lm-eval scores as one) and chartqa (whose
    metrics are functions), reduced to the fields the study reads."""
    samples = {
        task: [
            {"doc_id": i, "doc": doc, "target": "", "filtered_resps": [text], metric: score}
            for i, (doc, text, score) in enumerate(rows)
        ]
        for task, rows in responses.items()
        for metric in ["exact_match" if task == "chartqa" else "acc"]
    }
    mean = lambda rows: sum(score for *_, score in rows) / len(rows)  # noqa: E731
    mmmu = [row for task, rows in responses.items() if task != "chartqa" for row in rows]
    results = {task: {"name": task, "acc,none": mean(rows)} for task, rows in responses.items() if task != "chartqa"}
    results["chartqa"] = {"name": "chartqa", "exact_match,none": mean(responses["chartqa"]), "relaxed_accuracy,none": 1}
    results["mmmu_val"] = results["mmmu_val_art"] = {"name": "mmmu_val", "acc,none": mean(mmmu), "acc_stderr,none": 0.1}
    return {
        "results": results,
        "groups": {"mmmu_val": {}, "mmmu_val_art": {}},
        "group_subtasks": {"mmmu_val": ["mmmu_val_art"], "mmmu_val_art": ["mmmu_val_art_design", "mmmu_val_music"]},
        "samples": samples,
        "n-samples": {task: {"effective": len(rows)} for task, rows in responses.items()},
    }


def test_real_benchmark_groups_weigh_as_one_and_their_answers_are_format_checked():
    """mmmu_val's subjects make one benchmark, beside chartqa; each answer's format is checked as the task's own
    scorer reads answers (an option named, a "Final Answer:" line), so format collapse is a number there too."""
    from forgetting.benchmarks import benchmark_rows

    choice = {"question_type": "multiple-choice", "options": "['cat', 'dog', 'a red bird']"}
    open_question = {"question_type": "open", "options": "[]"}
    out = _lm_eval_output(
        {
            "mmmu_val_art_design": [(choice, "(B)", 1.0), (choice, "I cannot tell", 0.0), (choice, "C.", 0.0)],
            "mmmu_val_music": [(open_question, "42", 1.0), (open_question, "  ", 0.0)],
            "chartqa": [({}, "It rises.\nFinal Answer: 12", 1.0), ({}, "12", 0.0)],
        }
    )
    rows, samples = benchmark_rows(out, ["mmmu_val", "chartqa"])
    assert [(r["benchmark"], r["metric"], r["n"], r["format_failures"]) for r in rows] == [
        ("chartqa", "exact_match", 2, 1),
        ("mmmu_val", "acc", 5, 2),
    ]
    assert rows[1]["value"] == pytest.approx(2 / 5) and rows[1]["stderr"] == 0.1
    assert [s["format_ok"] for s in samples if s["task"] == "mmmu_val_art_design"] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("response", "expected"),
    [("(A)", True), ("The answer is B", True), ("b", False), ("It is a dog, clearly, as the picture shows", True)],
)
def test_mmmu_format(response, expected):
    from forgetting.answer_formats import mmmu

    doc = {"question_type": "multiple-choice", "options": "['cat', 'dog']"}
    assert mmmu(doc, response) is expected


@pytest.mark.slow
def test_one_copy_of_the_base_serves_every_evaluation_and_the_data_nll(data, tmp_path, monkeypatch):
    """The base is loaded once a process, on the study's device in its dtype, and both the evaluations (its weights
    for the parameter distance: its own tensors, not a float32 copy) and the data NLL use that copy: a 7B base
    once, not three times."""
    from forgetting import evaluation

    config, benchmark_data = data
    one = config.model_copy(deep=True)
    one.model.dtype = "bfloat16"
    one.output.dir = str(tmp_path)
    base = str(SHIPPED["micro"])
    loads = []
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: loads.append(a[1]) or load_model(*a, **k))
    evaluate_target(one, EvalTarget("base", 0, base), benchmark_data, base)
    state, model, _ = evaluation.base_reference(one, base, benchmark_data)
    weights = dict(model.named_parameters())
    assert all(state[name].data_ptr() == p.data_ptr() and p.dtype == torch.bfloat16 for name, p in weights.items())
    dataset = generate_puzzles(one.puzzles, config.output.path)
    record = dataset.records("train")[0]
    (tmp_path / "training_data.jsonl").write_text(json.dumps({"puzzle_id": record["id"], "completion": "1 2 3 4"}))
    nll = evaluation.data_nll(one, base, "sft", tmp_path / "training_data.jsonl", dataset)
    assert nll["tokens"] > 0
    assert loads == [base, base]  # the base once, then the target (here the base again, as a model to evaluate)


def test_helper_processes_evaluate_from_the_other_end_and_score_as_the_stage(data, tmp_path, monkeypatch):
    """evaluation.processes 2 on two threads: a helper process scores the training data under the base and evaluates
    models from the end of the list while this process goes from its start, each on one thread; everything is made
    once, and a model the helper evaluated scores exactly as one this process evaluated (here every target is the
    base itself under another name)."""
    import time

    from forgetting import evaluation
    from forgetting.evaluation import data_nll, eval_dir
    from tasks.evaluation_processes import Helpers

    config, benchmark_data = data
    two = config.model_copy(deep=True)
    two.output.dir, two.evaluation.processes = str(tmp_path), 2
    base = str(SHIPPED["micro"])
    dataset = generate_puzzles(two.puzzles, config.output.path)
    training = tmp_path / "sft" / "training_data.jsonl"
    training.parent.mkdir()
    rows = [{"puzzle_id": r["id"], "completion": "1 2 3 4"} for r in dataset.records("train")[:4]]
    training.write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = [EvalTarget("sft", step, base) for step in range(1, 7)]
    here, evaluate_into = [], evaluation._evaluate_into
    last = eval_dir(two, targets[-1], benchmark_data, base) / "evaluation.json"

    def waiting(out, *args):  # after its first model, this process waits for the helper's first (the last model)
        here.append(out.name)
        evaluate_into(out, *args)
        deadline = time.monotonic() + 300
        while not last.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)

    monkeypatch.setattr(evaluation, "_evaluate_into", waiting)
    monkeypatch.setattr(evaluation, "nll_of_data", lambda *args: here.append("data nll"))  # the helper's, not here
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Helpers(two, benchmark_data, base, dataset) as helping:  # as the study: work given before the stage
            assert helping.give(targets[:3]) == 0 and torch.get_num_threads() == 2  # too little to start for
            assert helping.give(targets[3:4], {"sft": training}) == 1 and torch.get_num_threads() == 1
            assert helping.give(targets[4:], final=True) == 1  # the rest, read by the helper after its first
            folders = [evaluate_target(two, t, benchmark_data, base) for t in targets]
            nll = data_nll(two, base, "sft", training, dataset)
        assert torch.get_num_threads() == 2
        with Helpers(two, benchmark_data, base, dataset) as helping:
            started = helping.give(targets, final=True)
            assert started == 0 and torch.get_num_threads() == 1  # nothing left: no helper, the same share
    finally:
        torch.set_num_threads(threads)
    assert nll["tokens"] > 0 and "data nll" not in here
    assert folders == [eval_dir(two, t, benchmark_data, base) for t in targets]
    assert 1 <= len(here) < len(targets) and folders[0].name in here and folders[-1].name not in here
    records = [json.loads((f / "evaluation.json").read_text()) for f in folders]
    for record in records:
        for key in ("step", "seconds"):
            del record[key]
    assert all(r == records[0] for r in records[1:])
    assert [f.name for f in tmp_path.glob("evals/.*")] == []  # no folder left half-written


def test_a_helper_that_fails_leaves_its_share_to_the_stage(data, tmp_path, monkeypatch, capsys):
    import sys

    from tasks.evaluation_processes import Helpers

    config, benchmark_data = data
    two = config.model_copy(deep=True)
    two.output.dir, two.evaluation.processes = str(tmp_path), 2
    base = str(SHIPPED["micro"])
    dataset = generate_puzzles(two.puzzles, config.output.path)
    targets = [EvalTarget("sft", step, base) for step in range(1, 5)]
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the helper's interpreter: exits 1 at once
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with Helpers(two, benchmark_data, base, dataset) as helping:
            assert helping.give(targets, final=True) == 1
            folders = [evaluate_target(two, t, benchmark_data, base) for t in targets]
    finally:
        torch.set_num_threads(threads)
    assert all((f / "evaluation.json").is_file() for f in folders)
    assert "an evaluation helper exited with 1 (the stage did its share)" in capsys.readouterr().out

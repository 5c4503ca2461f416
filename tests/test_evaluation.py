"""Evaluation through lm-eval on the shipped task YAMLs, and the output-format check."""

import hashlib
import json

import pytest

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

    def complete(self, conversations, max_new_tokens, sampling):
        return [self.answers[_key(c)] for c in conversations]


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

"""Evaluation throughput: the project's lm-eval path against a plain batched `generate` loop.

    .venv/bin/python benchmarks/eval_throughput.py --profile tiny --limit 100

Both sides answer the same items (the puzzle test split and every tiny-world benchmark, --limit items
each) with the same model, batch size and generation length, greedy, with the text a benchmark's prompts begin
with run once (forgetting/common_prefix.py), in one process with fixed torch threads, alternating which goes
first over --repeats rounds. The lm-eval side also pays for building the tasks, the requests, scoring and the
format check. Target: time ratio <= 1.3.
"""

import argparse
import tempfile
import time

import torch

from forgetting.base_model import write_heldout_sets
from forgetting.benchmarks import (
    BenchmarkData,
    StudyLM,
    doc_to_image,
    grade_doc,
    load_docs,
    request_conversation,
    run_benchmarks,
)
from forgetting.inference import generate
from forgetting.models import load_model
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles
from forgetting.world import PRIOR_TASKS

MAX_NEW_TOKENS = {"jigsaw": 32}  # as in assets/lm_eval/*.yaml; 16 for the tiny-world tasks


def plain_loop(model, processor, data: BenchmarkData, limit: int, batch_size: int) -> int:
    """Load the same documents, generate, grade: the least an evaluation must do. Returns items answered."""
    items = correct = 0
    for benchmark in ["jigsaw", *PRIOR_TASKS]:
        docs = load_docs(benchmark, data.tiny_world_dir, data.puzzles_dir)["test"].select(range(limit))
        conversations = [request_conversation(d["prompt"], doc_to_image(d)) for d in docs]
        texts = generate(
            model, processor, conversations, MAX_NEW_TOKENS.get(benchmark, 16), batch_size,
            common_prefix=True, do_sample=False,
        )  # fmt: skip
        correct += sum(grade_doc(d, t)[0] for t, d in zip(texts, docs, strict=True))
        items += len(texts)
    return items


def lm_eval_path(model, processor, data: BenchmarkData, limit: int, batch_size: int) -> int:
    rows, _ = run_benchmarks(StudyLM(model, processor, batch_size), ["jigsaw", "tiny_world"], data, limit)
    return sum(r["n"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.profile, output_dir=tmp)
        data = BenchmarkData(
            str(write_heldout_sets(config)), str(generate_puzzles(config.puzzles, config.output.path).path)
        )
        model, processor = load_model(config.model, trainable=False)
        batch_size = config.evaluation.batch_size
        times = {"lm-eval": [], "plain": []}
        sides = {"lm-eval": lm_eval_path, "plain": plain_loop}
        lm_eval_path(model, processor, data, 2, batch_size)  # warm-up: imports, first kernels
        for round_ in range(args.repeats):
            for name in sorted(sides, reverse=bool(round_ % 2)):
                start = time.perf_counter()
                items = sides[name](model, processor, data, args.limit, batch_size)
                times[name].append(time.perf_counter() - start)
    print(f"\nprofile {args.profile}, {items} items per pass, batch {batch_size}, {args.threads} threads")
    print(f"{'path':<10}{'best s':>9}{'items/s':>10}")
    for name, values in times.items():
        print(f"{name:<10}{min(values):>9.2f}{items / min(values):>10.1f}")
    print(f"ratio lm-eval / plain: {min(times['lm-eval']) / min(times['plain']):.3f}")


if __name__ == "__main__":
    main()

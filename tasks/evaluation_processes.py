"""Evaluations side by side (evaluation.processes above 1, on CPU). While the evaluation stage evaluates its models
one after another in the study's process (tasks/evaluation.py) and then scores each arm's training data under the
base, helper processes do the same work from the other end: the training data first, then the models from the end
of the list. Each piece is done once: a helper takes only what nobody is making and is not made yet, and the stage,
coming to something a helper has taken, waits for it and finds it made (forgetting/storage.py:one_maker). So the
stage's Prefect tasks, its MLflow metrics and what it prints are as they are without helpers; a helper that fails
leaves its share to the stage, which then meets the error itself. The study's threads are shared out equally among
the processes while the stage runs, and the stage keeps its share when no helper starts (a rerun with little left to
do), so that every number is made on as many threads whoever makes it.

Why: the tiny model's evaluation is mostly one-thread Python and small kernels, so two processes of one thread
each evaluate 1.6-1.8 times as many models a minute as one process of two threads (docs/experiments.md). Against
one process of every thread, sums split over another number of threads can differ in the sixth to eighth digit
(log-probabilities, parameter distances); scores and sampled answers do not.

    python -m tasks.evaluation_processes <spec.json>    # one helper: what helpers() starts
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

MIN_EACH = 2  # no helper unless every process would have at least this many models to evaluate


@contextmanager
def helpers(config, targets: list, data, base: str, training: dict | None = None, dataset=None) -> Iterator[int]:
    """While inside: the evaluation stage's work on config.evaluation.processes processes of an equal share of this
    process's threads each: this one, and helpers that evaluate targets from the end of the list, after scoring the
    data of training (arm -> its training data, puzzles in dataset) under the base (forgetting/evaluation.py:
    data_nll), which the stage does last. No helper on a GPU, or with fewer than MIN_EACH models left to evaluate
    per process; this process keeps its share of the threads all the same, so that a model scores the same whether
    a helper ran beside or not. Yields how many helpers were started; on leaving, stops those still running (all
    they took is made by then) and gives this process its threads back."""
    import torch

    from forgetting.evaluation import eval_dir
    from forgetting.models import pick_device

    threads = torch.get_num_threads()
    count = min(config.evaluation.processes, threads)
    if count < 2 or pick_device(config.model).type != "cpu":
        yield 0
        return
    pending = [t for t in targets if not (eval_dir(config, t, data, base) / "evaluation.json").is_file()]
    share, started = threads // count, []
    helping = count if len(pending) >= MIN_EACH * count else 1
    folder = Path(tempfile.mkdtemp(prefix="forgetting-evaluation-"))
    try:
        torch.set_num_threads(share)
        for k in range(1, helping):
            order = pending[::-1]  # from the end, each helper from another point of it
            order = order[(k - 1) * len(order) // (helping - 1) :] + order[: (k - 1) * len(order) // (helping - 1)]
            spec = {
                "config": config.model_dump(mode="json"),
                "data": asdict(data),
                "base": base,
                "threads": share,
                "training": {arm: str(path) for arm, path in (training or {}).items()},
                "puzzles": str(dataset.path) if dataset is not None else None,
                "targets": [asdict(t) for t in order],
            }
            started.append(_start(spec, folder / f"helper-{k}"))
        if started:
            print(f"evaluating side by side: this process and {len(started)} helper(s), {share} thread(s) each")
        yield len(started)
    finally:
        torch.set_num_threads(threads)
        for process, log in started:
            if process.poll() is None:
                process.terminate()
            if process.wait() not in (0, -signal.SIGTERM):
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                print(f"an evaluation helper exited with {process.returncode} (the stage did its share):\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)


def _start(spec: dict, stem: Path) -> tuple[subprocess.Popen, Path]:
    stem.with_suffix(".json").write_text(json.dumps(spec) + "\n")
    log = stem.with_suffix(".log")
    env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tasks.evaluation_processes", str(stem.with_suffix(".json"))]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def main(spec_path: str) -> None:
    """One helper: score each arm's training data under the base, then evaluate each model of the spec's list, in
    the list's order, whatever nobody is making and is not made yet."""
    signal.signal(signal.SIGTERM, _stop)  # stopped by the stage: leave no half-written folder behind
    import torch

    from forgetting.benchmarks import BenchmarkData
    from forgetting.config import StudyConfig
    from forgetting.evaluation import EvalTarget, data_nll, eval_dir, evaluate_target
    from forgetting.puzzle_data import PuzzleDataset

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    config, data, base = StudyConfig.model_validate(spec["config"]), BenchmarkData(**spec["data"]), spec["base"]
    puzzles = Path(spec["puzzles"]) if spec["puzzles"] else None
    for arm, path in spec["training"].items():
        if data_nll(config, base, arm, Path(path), PuzzleDataset(puzzles, puzzles.name), wait=False) is not None:
            print(f"scored {arm}'s training data", flush=True)
    for fields in spec["targets"]:
        target = EvalTarget(**fields | {"styles": tuple(fields["styles"])})
        if (eval_dir(config, target, data, base) / "evaluation.json").is_file():
            continue
        if evaluate_target(config, target, data, base, wait=False) is not None:
            print(f"evaluated {target.arm} step {target.step}", flush=True)


def _stop(signum, frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main(sys.argv[1])

"""Evaluations side by side (evaluation.processes above 1, on CPU). While the evaluation stage evaluates its models
one after another in the study's process (tasks/evaluation.py), helper processes evaluate the same models from the
other end of the list. Each model is evaluated once: a helper takes only a model nobody is evaluating and whose
results are not there, and the stage, coming to a model a helper has taken, waits for it and finds its folder made
(forgetting/storage.py:one_maker). So the stage's Prefect tasks, its MLflow metrics and what it prints are as they
are without helpers; a helper that fails leaves its share to the stage, which then raises the error itself. The
study's threads are shared out equally among the stage and its helpers while they run.

Why: the tiny model's evaluation is mostly one-thread Python and small kernels, so two processes of one thread
each evaluate 1.6-1.8 times as many models a minute as one process of two threads (docs/experiments.md). Every
score equals what the stage makes on as many threads as each process has; sums split over another number of
threads than before can differ in the eighth digit.

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
def helpers(config, targets: list, data, base: str) -> Iterator[int]:
    """While inside: config.evaluation.processes - 1 helper processes evaluating targets from the end of the list,
    the threads of this process shared out among it and them (none on a GPU, with fewer than two threads, or with
    fewer than MIN_EACH models left to evaluate per process). Yields how many were started; on leaving, stops
    those still running (every model they took is made by then) and gives this process its threads back."""
    import torch

    from forgetting.evaluation import eval_dir
    from forgetting.models import pick_device

    pending = [t for t in targets if not (eval_dir(config, t, data, base) / "evaluation.json").is_file()]
    threads = torch.get_num_threads()
    count = min(config.evaluation.processes, threads, len(pending) // MIN_EACH)
    if count < 2 or pick_device(config.model).type != "cpu":
        yield 0
        return
    share = threads // count
    folder = Path(tempfile.mkdtemp(prefix="forgetting-evaluation-"))
    started = []
    try:
        torch.set_num_threads(share)
        for k in range(1, count):
            order = pending[::-1]  # from the end, each helper from another point of it
            order = order[(k - 1) * len(order) // (count - 1) :] + order[: (k - 1) * len(order) // (count - 1)]
            started.append(_start(config, order, data, base, share, folder / f"helper-{k}"))
        print(f"evaluating side by side: this process and {len(started)} helper(s), {share} thread(s) each")
        yield len(started)
    finally:
        torch.set_num_threads(threads)
        for process, log in started:
            if process.poll() is None:
                process.terminate()
            if process.wait() not in (0, -signal.SIGTERM):
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                print(f"an evaluation helper exited with {process.returncode} (the stage evaluated its share):\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)


def _start(config, order: list, data, base: str, threads: int, stem: Path) -> tuple[subprocess.Popen, Path]:
    spec = {
        "config": config.model_dump(mode="json"),
        "targets": [asdict(t) for t in order],
        "data": asdict(data),
        "base": base,
        "threads": threads,
    }
    stem.with_suffix(".json").write_text(json.dumps(spec) + "\n")
    log = stem.with_suffix(".log")
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tasks.evaluation_processes", str(stem.with_suffix(".json"))]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def main(spec_path: str) -> None:
    """One helper: evaluate each model of the spec's list that nobody is evaluating and whose results are not
    there, in the list's order."""
    signal.signal(signal.SIGTERM, _stop)  # stopped by the stage: leave no half-written folder behind
    import torch

    from forgetting.benchmarks import BenchmarkData
    from forgetting.config import StudyConfig
    from forgetting.evaluation import EvalTarget, eval_dir, evaluate_target

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    config, data = StudyConfig.model_validate(spec["config"]), BenchmarkData(**spec["data"])
    for fields in spec["targets"]:
        target = EvalTarget(**fields | {"styles": tuple(fields["styles"])})
        if (eval_dir(config, target, data, spec["base"]) / "evaluation.json").is_file():
            continue
        if evaluate_target(config, target, data, spec["base"], wait=False) is not None:
            print(f"evaluated {target.arm} step {target.step}", flush=True)


def _stop(signum, frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main(sys.argv[1])

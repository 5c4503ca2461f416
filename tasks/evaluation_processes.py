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

    python -m tasks.evaluation_processes <spec.json>    # one helper: what Helpers.give starts
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from forgetting.storage import write_text_once

MIN_EACH = 2  # no helper unless every process would have at least this many models to evaluate


class Helpers:
    """The evaluation helpers of one seed. give() hands them work (models to evaluate, arms' training data to score):
    the first time enough is waiting, it starts config.evaluation.processes - 1 of them and shares this process's
    threads out equally among it and them; later calls add to their list, which they read again after each piece
    of work. stop() (or leaving the `with` block) stops those still running and gives the threads back. Nothing is
    started on a GPU or with evaluation.processes 1."""

    def __init__(self, config, data, base: str, dataset):
        import torch

        from forgetting.models import pick_device

        self.config, self.data, self.base, self.dataset = config, data, base, dataset
        self.threads = torch.get_num_threads()
        on_cpu = pick_device(config.model).type == "cpu"
        self.count = min(config.evaluation.processes, self.threads) if on_cpu else 1
        self.share = self.threads // self.count  # each process's threads while helpers run
        self.targets: list = []
        self.training: dict[str, Path] = {}
        self.started: list[tuple[subprocess.Popen, Path]] = []
        self.folder: Path | None = None

    def __enter__(self) -> "Helpers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def give(self, targets: list, training: dict | None = None, final: bool = False) -> int:
        """Add targets (EvalTargets) and training (arm -> its training data) to the helpers' work; final: nothing
        more will come (the evaluation stage), and this process takes its share of the threads whether a helper
        runs or not, so that every number is made on as many threads whoever makes it. Returns how many helpers
        run."""
        import torch

        from forgetting.evaluation import eval_dir

        if self.count < 2:
            return 0
        self.targets += [t for t in targets if t not in self.targets]
        self.training |= training or {}
        pending = [
            t
            for t in self.targets
            if not (eval_dir(self.config, t, self.data, self.base) / "evaluation.json").is_file()
        ]
        starting = not self.started and len(pending) >= MIN_EACH * self.count
        if final or self.started or starting:
            torch.set_num_threads(self.share)
        if starting:
            self.folder = Path(tempfile.mkdtemp(prefix="forgetting-evaluation-"))
            self.started = [_start(self._spec(k, final), self.folder / f"helper-{k}") for k in range(1, self.count)]
            print(
                f"evaluating side by side: this process and {len(self.started)} helper(s), {self.share} thread(s) each"
            )
        elif self.started:
            for k in range(1, self.count):
                write_text_once(self.folder / f"helper-{k}.json", json.dumps(self._spec(k, final)) + "\n")
        return len(self.started)

    def _spec(self, k: int, final: bool) -> dict:
        """Helper k's work: from the end of the list, each helper from another point of it."""
        order, cut = self.targets[::-1], (k - 1) * len(self.targets) // (self.count - 1)
        return {
            "config": self.config.model_dump(mode="json"),
            "data": asdict(self.data),
            "base": self.base,
            "threads": self.share,
            "training": {arm: str(path) for arm, path in self.training.items()},
            "puzzles": str(self.dataset.path),
            "targets": [asdict(t) for t in order[cut:] + order[:cut]],
            "final": final,
        }

    def stop(self) -> None:
        import torch

        if self.count > 1:  # (else never changed: a seed process may have been told to take more meanwhile)
            torch.set_num_threads(self.threads)
        for process, log in self.started:
            if process.poll() is None:
                process.terminate()
            if process.wait() not in (0, -signal.SIGTERM):
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                print(f"an evaluation helper exited with {process.returncode} (the stage did its share):\n{tail}")
        self.started = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _start(spec: dict, stem: Path) -> tuple[subprocess.Popen, Path]:
    write_text_once(stem.with_suffix(".json"), json.dumps(spec) + "\n")
    log = stem.with_suffix(".log")
    env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tasks.evaluation_processes", str(stem.with_suffix(".json"))]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def main(spec_path: str, poll_s: float = 0.5) -> None:
    """One helper: score each arm's training data under the base, then evaluate the models of the spec's list in
    its order, whatever nobody is making and is not made yet; the spec is read again after each piece of work, and
    when nothing is left to take, until it says that nothing more will come."""
    signal.signal(signal.SIGTERM, _stop)  # stopped by the stage: leave no half-written folder behind
    import torch

    from forgetting.benchmarks import BenchmarkData
    from forgetting.config import StudyConfig
    from forgetting.evaluation import EvalTarget, data_nll, data_nll_path, eval_dir, evaluate_target
    from forgetting.puzzle_data import PuzzleDataset

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    config, data, base = StudyConfig.model_validate(spec["config"]), BenchmarkData(**spec["data"]), spec["base"]
    puzzles = Path(spec["puzzles"])
    dataset = PuzzleDataset(puzzles, puzzles.name)
    while True:
        spec, did = json.loads(Path(spec_path).read_text()), None
        for arm, path in spec["training"].items():
            if data_nll_path(base, Path(path)).is_file():
                continue
            if data_nll(config, base, arm, Path(path), dataset, wait=False) is not None:
                did = f"scored {arm}'s training data"
                break
        for fields in spec["targets"] if not did else []:
            target = EvalTarget(**fields | {"styles": tuple(fields["styles"])})
            if (eval_dir(config, target, data, base) / "evaluation.json").is_file():
                continue
            if evaluate_target(config, target, data, base, wait=False) is not None:
                did = f"evaluated {target.arm} step {target.step}"
                break
        if did:
            print(did, flush=True)
        elif spec["final"]:
            return
        else:
            time.sleep(poll_s)


def _stop(signum, frame) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main(sys.argv[1])

"""A several-seed study's seeds side by side, each in a process of its own (`seed_processes` above 1).

Each process runs flows/seed.py: one seed, as a Prefect flow run of its own against this process's Prefect API,
logging to MLflow as the seed's child run of the study's run. At most seed_processes run at a time, each with an
equal share of the CPU cores as its threads. What they print is echoed here, each line prefixed with its seed, and
kept in <output>/<the seed's study id>/seed-process.log.

Why: a small model's training and evaluation steps are mostly one-thread Python and small kernels, so two processes
of one thread each do more work than one process of two threads (docs/experiments.md). The seeds share the
puzzles, the held-out sets and the base's evaluation: the first process to need one makes it, the other waits
for it (forgetting/storage.py:one_maker). Every weight, rollout and score equals that of the seed run in the
study's own process, on however many threads (MKL's strict rounding: forgetting/__init__.py); the curves'
parameter distances and log-probability changes can differ in the eighth digit (torch's own sums split over another
number of threads).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from forgetting.config import StudyConfig
from forgetting.storage import write_text_once

SPEC, RESULT, LOG = "seed-process.json", "seed-process-result.json", "seed-process.log"
THREADS = "seed-process.threads"  # how many threads the process is to use: flows/seed.py


def run_seeds(config: StudyConfig, run_id: str, progress, poll_s: float = 1.0) -> dict[int, dict]:
    """Every seed of config in a process of its own, config.seed_processes at a time, logging under the study's
    MLflow run run_id; returns seed -> what flows/study.py:one_seed returned; progress(percent, what) as each
    seed ends. The cores are shared out again as seeds end: the last seed running takes them all. A seed that
    fails lets the others finish (what they make is kept for a rerun), then raises a RuntimeError naming every
    failed seed with the last lines it printed."""
    workers, cores = config.seed_processes, os.cpu_count() or 1
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}  # each line echoed as printed
    if api := prefect_api_url():
        env["PREFECT_API_URL"] = api  # the children's flow runs beside this one, no temporary server each
    pending, running, results, failed = list(config.per_seed()), {}, {}, {}
    try:
        while pending or running:
            threads = max(1, cores // min(workers, len(pending) + len(running)))
            for child in running.values():
                child.use_threads(threads)
            while pending and len(running) < workers:
                one = pending.pop(0)
                running[one.seed] = child = SeedProcess(config, one, run_id, env, threads)
                print(f"seed {one.seed}: process {child.process.pid}, {threads} threads: {child.log}")
            time.sleep(poll_s)
            for seed, child in list(running.items()):
                if child.process.poll() is None:
                    continue
                del running[seed]
                try:
                    results[seed] = child.result()
                    print(f"seed {seed}: done in {child.seconds():.0f} s")
                except RuntimeError as err:
                    failed[seed] = str(err)
                    print(f"seed {seed}: failed ({child.log})")
                progress(100 * (len(results) + len(failed)) / len(config.seeds), f"seed {seed} done")
    finally:
        for child in running.values():  # this process is stopping: so do its seeds
            child.process.terminate()
    if failed:
        raise RuntimeError("seeds did not complete:\n" + "\n".join(f"seed {s}: {why}" for s, why in failed.items()))
    return {seed: results[seed] for seed in config.seeds}


def prefect_api_url() -> str | None:
    """The Prefect API this process talks to: PREFECT_API_URL, or the temporary server Prefect started for it."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    server = SubprocessASGIServer()
    return server.api_url if server.running else None


class SeedProcess:
    """`python -m flows.seed` for one seed, started at once; a thread echoes and keeps what it prints."""

    def __init__(self, config: StudyConfig, one: StudyConfig, run_id: str, env: dict[str, str], threads: int) -> None:
        folder = one.report_dir.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.seed, self.log, self.result_path = one.seed, folder / LOG, folder / RESULT
        self.result_path.unlink(missing_ok=True)
        self.threads_file, self.threads = folder / THREADS, threads
        self.threads_file.write_text(f"{threads}\n")
        spec = {
            "config": config.model_dump(mode="json"),
            "seed": one.seed,
            "study_run_id": run_id,
            "result": str(self.result_path),
        }
        (folder / SPEC).write_text(json.dumps(spec, indent=1) + "\n")
        self.tail: deque[str] = deque(maxlen=40)
        self.started = time.perf_counter()
        command = [sys.executable, "-m", "flows.seed", str(folder / SPEC)]
        self.process = subprocess.Popen(
            command,
            env=env | {"OMP_NUM_THREADS": str(threads)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.echo = threading.Thread(target=self._echo, name=f"seed-{one.seed}-output", daemon=True)
        self.echo.start()

    def _echo(self) -> None:
        with open(self.log, "w") as log:
            for line in self.process.stdout:
                log.write(line)
                self.tail.append(line.rstrip())
                sys.__stdout__.write(f"seed {self.seed} | {line}")
                sys.__stdout__.flush()

    def use_threads(self, threads: int) -> None:
        """Tell the process to use this many threads from now on: flows/seed.py reads the file at its start and on
        SIGUSR1, whose handler it installs before its imports (a process younger than 5 s is told at a later poll)."""
        if threads != self.threads and self.process.poll() is None and self.seconds() > 5:
            self.threads = threads
            write_text_once(self.threads_file, f"{threads}\n")
            self.process.send_signal(signal.SIGUSR1)
            print(f"seed {self.seed}: {threads} threads from now on")

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def result(self) -> dict:
        """What the seed's one_seed returned, once the process has ended; RuntimeError when it failed."""
        self.echo.join()
        if self.process.returncode or not self.result_path.is_file():
            lines = "\n".join(self.tail)
            raise RuntimeError(f"process exited with {self.process.returncode}; its last lines:\n{lines}")
        return json.loads(self.result_path.read_text())

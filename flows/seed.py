"""One seed of a several-seed study in a process of its own: what the study flow starts for each seed when
`seed_processes` is above 1 (tasks/seed_processes.py). The seed runs as a Prefect flow run of its own, `study-seed`,
and logs to MLflow as the seed's child run of the study's run, exactly as it would in the study's process; what
flows/study.py:one_seed returns goes to the file the spec names. The study tells it how many threads to use in
the file seed-process.threads beside the spec, read at the start and again on SIGUSR1 (when seeds beside it end).

    python -m flows.seed <output>/<the seed's study id>/seed-process.json
"""

import signal
import sys
from pathlib import Path

_STARTED = False  # torch imported and its threads set: from then on SIGUSR1 sets them again


def _threads() -> int:
    return int(Path(sys.argv[1]).with_name("seed-process.threads").read_text())


def _take_threads(signum, frame) -> None:
    if _STARTED:  # earlier, main reads the file itself
        sys.modules["torch"].set_num_threads(_threads())


signal.signal(signal.SIGUSR1, _take_threads)  # before the imports below, which take seconds

import json

import torch
from prefect import flow

from flows.launch import end_quickly
from flows.study import Progress, one_seed
from forgetting.config import StudyConfig
from forgetting.storage import write_text_once
from tasks.tracking import configure, seed_run


@flow(name="study-seed", log_prints=True)
def seed_flow(config: StudyConfig, seed: int, study_run_id: str) -> dict:
    """One seed of the several-seed study config, logged under the study's MLflow run study_run_id."""
    one = next(c for c in config.per_seed() if c.seed == seed)
    with seed_run(study_run_id, config, seed) as run_id:
        result = one_seed(one, run_id, Progress())
    print(f"seed {seed} done, on {torch.get_num_threads()} threads at its end")
    return result


def main(spec_path: str) -> None:
    global _STARTED
    spec = json.loads(Path(spec_path).read_text())
    _STARTED = True  # then read: a SIGUSR1 before this line wrote the file before it, one after it is handled
    torch.set_num_threads(_threads())
    config = StudyConfig.model_validate(spec["config"])
    configure(config)  # the study's MLflow store (this process inherits its $MLFLOW_TRACKING_URI)
    named = seed_flow.with_options(flow_run_name=f"{config.study_id} seed {spec['seed']}")
    result = named(config, spec["seed"], spec["study_run_id"])
    write_text_once(Path(spec["result"]), json.dumps(result, indent=1) + "\n")
    end_quickly()


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    finally:  # ignored from here on: Python's exit would restore the default action, which ends the process
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

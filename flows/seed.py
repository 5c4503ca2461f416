"""One seed of a several-seed study in a process of its own: what the study flow starts for each seed when
`seed_processes` is above 1 (tasks/seed_processes.py). The seed runs as a Prefect flow run of its own, `study-seed`,
and logs to MLflow as the seed's child run of the study's run, exactly as it would in the study's process; what
flows/study.py:one_seed returns goes to the file the spec names.

    python -m flows.seed <output>/<the seed's study id>/seed-process.json
"""

import json
import os
import sys
from pathlib import Path

import torch
from prefect import flow

from flows.study import Progress, one_seed
from forgetting.config import StudyConfig
from forgetting.storage import write_text_once
from tasks.tracking import configure, seed_run


@flow(name="study-seed", log_prints=True)
def seed_flow(config: StudyConfig, seed: int, study_run_id: str) -> dict:
    """One seed of the several-seed study config, logged under the study's MLflow run study_run_id."""
    one = next(c for c in config.per_seed() if c.seed == seed)
    with seed_run(study_run_id, config, seed) as run_id:
        return one_seed(one, run_id, Progress())


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    config = StudyConfig.model_validate(spec["config"])
    configure(config)  # the study's MLflow store (this process inherits its $MLFLOW_TRACKING_URI)
    named = seed_flow.with_options(flow_run_name=f"{config.study_id} seed {spec['seed']}")
    result = named(config, spec["seed"], spec["study_run_id"])
    write_text_once(Path(spec["result"]), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])

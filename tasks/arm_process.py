"""One process of an arm on several (arms.num_processes > 1): what tasks/training.py:launch_arm starts under
`accelerate launch`, one per GPU. Each trains the arm (forgetting/arms.py:run_arm) on its share of every step: DDP,
or DeepSpeed with arms.deepspeed; the first process alone writes rollouts and the final model and logs to the
arm's MLflow run (the callbacks and forgetting/trainer.py check the rank).

    python -m tasks.arm_process <arm folder>/launch.json
"""

import json
import os
import sys
from pathlib import Path

import mlflow
import torch

from forgetting.arms import run_arm
from forgetting.config import StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from forgetting.trainer import ArmResult
from tasks.training import MlflowMetrics, StepLog


def main(spec_path: str) -> None:
    """One process of a launched arm."""
    spec = json.loads(Path(spec_path).read_text())
    mlflow.set_tracking_uri(spec["tracking_uri"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    config = StudyConfig.model_validate(spec["config"])
    puzzles = Path(spec["puzzles"])
    rft = ArmResult.of("rft", Path(spec["rft"])) if spec["rft"] else None
    callbacks = [MlflowMetrics(spec["run_id"]), StepLog(spec["arm"])]  # both act on the first process only
    run_arm(config, spec["arm"], spec["base"], PuzzleDataset(puzzles, puzzles.name), rft, callbacks)


if __name__ == "__main__":
    main(sys.argv[1])

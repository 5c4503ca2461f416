"""The training stage as Prefect tasks: one per arm, materializing the arm's folder as an asset, retried once
when a retry can help (it resumes from the arm's last checkpoint), and logging to an MLflow child run of its
own: the Trainer's curves, where the arm lies, its final weights and rollouts.
"""

import mlflow
from prefect.assets import materialize

from assets import arm_checkpoints
from forgetting.arms import arm_dir, run_arm
from forgetting.config import ConfigError, StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rollout_sft import NoCorrectRollouts
from forgetting.trainer import ArmResult
from tasks.tracking import child_run


def arm_task(config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, upstream: ArmResult | None = None):
    """The Prefect task training `arm`, materializing its folder as an asset; call .submit(...) on it."""
    out = arm_dir(config, arm, base, dataset, upstream=str(upstream.path) if upstream else "")
    # One retry for transient failures: it resumes from the arm's last checkpoint, so it costs little.
    return materialize(
        arm_checkpoints(out, arm),
        name=f"train-{arm}",
        retries=1,
        retry_delay_seconds=5,
        retry_condition_fn=_worth_retrying,
    )(_tracked_arm)


def _worth_retrying(task, task_run, state) -> bool:
    """Not when the arm failed for a reason a retry cannot change: bad input, or no rollouts to learn from."""
    try:
        state.result()
    except (NoCorrectRollouts, ConfigError):
        return False
    except Exception:
        return True
    return True


def _tracked_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, parent_run_id: str, rft: ArmResult | None = None
) -> ArmResult:
    with child_run(parent_run_id, arm, tags={"arm": arm, "stage": "train"}):
        result = run_arm(config, arm, base, dataset, rft, report_to=["mlflow"])
        mlflow.log_params({"arm_dir": str(result.path), "base_model": base, "checkpoints": len(result.checkpoints)})
        if result.rollouts is not None and result.rollouts.exists():
            mlflow.log_artifact(str(result.rollouts), "rollouts")
        mlflow.log_artifacts(str(result.final), "final")
    return result

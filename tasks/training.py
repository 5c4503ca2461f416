"""The training stage as Prefect tasks: one per arm, materializing the arm's folder as an asset, retried once
when a retry can help (it resumes from the arm's last checkpoint), and logging to an MLflow child run of its
own: the arm's own settings as parameters, the Trainer's curves, its full arguments as one file, where the arm
lies, its final weights and rollouts.
"""

import json
import time

import mlflow
from prefect.assets import materialize
from transformers import TrainerCallback

from assets import arm_checkpoints
from forgetting.arms import arm_dir, arm_spec, run_arm
from forgetting.config import ConfigError, StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rollout_sft import NoCorrectRollouts
from forgetting.trainer import ArmResult
from tasks.tracking import child_run, flat_params


class MlflowMetrics(TrainerCallback):
    """The Trainer's logs as metrics of one MLflow run at their global step, and its full arguments as that
    run's trainer_args.json. In place of transformers' MLflowCallback, which logs every argument (some 200) as a
    parameter and buries the arm's own settings under them."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mlflow.log_dict(json.loads(args.to_json_string()), "trainer_args.json", run_id=self.run_id)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            mlflow.log_metrics(numbers, step=state.global_step, run_id=self.run_id)


class StepLog(TrainerCallback):
    """A line in the flow run's log every tenth of an arm's steps (Prefect keeps printed lines, not the
    Trainer's progress bar): step, loss or reward, seconds so far."""

    def __init__(self, arm: str):
        self.arm, self.started = arm, time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        every = max(1, state.max_steps // 10)
        if state.is_world_process_zero and logs and (state.global_step % every == 0 or "train_runtime" in logs):
            shown = {k: logs[k] for k in ("loss", "reward", "train_loss") if isinstance(logs.get(k), int | float)}
            values = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
            seconds = time.perf_counter() - self.started
            print(f"{self.arm}: step {state.global_step}/{state.max_steps}, {values} ({seconds:.0f} s)")


def arm_params(config: StudyConfig, arm: str) -> dict[str, str]:
    """What determines the arm (forgetting/arms.py:arm_spec) as flat parameters, the arm's own settings under
    the same names in every arm (learning_rate, steps, ...) so the MLflow UI lines arms up."""
    spec = arm_spec(config, arm)
    return flat_params({k: v for k, v in spec.items() if k != "settings"}) | flat_params(spec["settings"])


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
    with child_run(parent_run_id, arm, tags={"arm": arm, "stage": "train"}) as run_id:
        mlflow.log_params(arm_params(config, arm))
        result = run_arm(config, arm, base, dataset, rft, callbacks=[MlflowMetrics(run_id), StepLog(arm)])
        mlflow.log_params({"arm_dir": str(result.path), "base_model": base, "checkpoints": len(result.checkpoints)})
        if result.rollouts is not None and result.rollouts.exists():
            mlflow.log_artifact(str(result.rollouts), "rollouts")
        mlflow.log_artifacts(str(result.final), "final")
    return result

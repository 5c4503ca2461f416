"""The training stage as Prefect tasks: one per arm, materializing the arm's folder as an asset, retried once
when a retry can help (it resumes from the arm's last checkpoint), and logging to an MLflow child run of its
own: the arm's own settings as parameters, the Trainer's curves, its full arguments as one file, where the arm
lies, its final weights and rollouts.

An arm on several processes (arms.num_processes > 1): its task writes the arm's data, runs `accelerate launch` of
tasks/arm_process.py (one process per GPU) and waits for it; the flow sees one arm folder, as with one process.
Without a GPU the processes talk over gloo (the tests do this on 2 CPU processes).
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect.assets import materialize

from assets import arm_checkpoints
from forgetting.arms import arm_dir, arm_spec, prepare_arm, run_arm
from forgetting.config import StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rollout_sft import SOURCE, NoCorrectRollouts
from forgetting.trainer import ArmResult, Callback
from tasks import BAD_INPUT, retried_unless
from tasks.tracking import child_run, flat_params, tracking_uri


class MlflowMetrics(Callback):
    """The Trainer's logs as metrics of one MLflow run at their global step, and its full arguments as that
    run's trainer_args.json. In place of transformers' MLflowCallback, which logs every argument (some 200) as a
    parameter and buries the arm's own settings under them.

    The metrics go out in one batch at most every `every` seconds, at each checkpoint and at the end of training
    (each with the time it was logged): one call to a SQLite store takes some 10 ms, 5% of a tiny SFT step when
    made every step. The MLflow UI's curves lag the run by at most `every` seconds."""

    def __init__(self, run_id: str, every: float = 5.0):
        self.run_id, self.every = run_id, every
        self.pending: list = []
        self.sent = time.monotonic()
        self.client = MlflowClient()  # the tracking URI set when it is made

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mlflow.log_dict(json.loads(args.to_json_string()), "trainer_args.json", run_id=self.run_id)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            now = int(time.time() * 1000)
            self.pending += [
                Metric(key, float(value), now, state.global_step)
                for key, value in logs.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            ]
            if time.monotonic() - self.sent >= self.every:
                self.send()

    def on_save(self, args, state, control, **kwargs):
        self.send()

    def on_train_end(self, args, state, control, **kwargs):
        self.send()

    def send(self) -> None:
        """Log what is pending now."""
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
        self.pending, self.sent = [], time.monotonic()


class StepLog(Callback):
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
        retry_condition_fn=retried_unless(*BAD_INPUT, NoCorrectRollouts),  # no rollouts to learn from: no retry
    )(_tracked_arm)


def _tracked_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, parent_run_id: str, rft: ArmResult | None = None
) -> ArmResult:
    with child_run(parent_run_id, arm, tags={"arm": arm, "stage": "train"}) as run_id:
        mlflow.log_params(arm_params(config, arm))
        if config.arms.num_processes > 1:  # trained by processes of their own; run_arm then finds it
            launch_arm(config, arm, base, dataset, rft, run_id)
        result = run_arm(config, arm, base, dataset, rft, callbacks=[MlflowMetrics(run_id), StepLog(arm)])
        mlflow.log_params({"arm_dir": str(result.path), "base_model": base, "checkpoints": len(result.checkpoints)})
        if result.rollouts is not None and result.rollouts.exists():
            mlflow.log_artifact(str(result.rollouts), "rollouts")
        if (source := result.path / SOURCE).is_file():  # rollout-SFT's, iterative-SFT's rounds
            mlflow.log_artifact(str(source))
        mlflow.log_artifacts(str(result.final), "final")
    return result


LAUNCH = "launch.json"


def launch_command(config: StudyConfig, spec: Path, port: int) -> list[str]:
    """accelerate launch of tasks/arm_process.py on arms.num_processes processes of this machine (its GPUs, or
    CPU processes over gloo)."""
    n = config.arms.num_processes
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_machines", "1", "--num_processes", str(n), "--main_process_port", str(port),
        "--mixed_precision", "no",  # the trainers' own bf16 setting decides (forgetting/trainer.py:device_args)
        "--dynamo_backend", "no",
        "-m", "tasks.arm_process", str(spec),
    ]  # fmt: skip


def launch_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, rft: ArmResult | None, run_id: str
) -> None:
    """Train arm on config.arms.num_processes processes and wait for them; their output goes to this process's
    (the flow run's log). A process that fails fails the arm, with the last lines of what they printed."""
    out, _ = prepare_arm(config, arm, base, dataset, rft)  # the data, once, before the processes start
    spec = {
        "config": config.model_dump(mode="json"),
        "arm": arm,
        "base": base,
        "puzzles": str(dataset.path),
        "rft": str(rft.path) if rft else None,
        "run_id": run_id,
        "tracking_uri": tracking_uri(config),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / LAUNCH).write_text(json.dumps(spec, indent=1) + "\n")
    threads = max(1, (os.cpu_count() or 1) // config.arms.num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    command = launch_command(config, out / LAUNCH, _free_port())
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            tail.append(line.rstrip())
            print(line, end="")
    if process.returncode:
        lines = "\n".join(tail)
        raise RuntimeError(f"{arm} on {config.arms.num_processes} processes exited with {process.returncode}:\n{lines}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

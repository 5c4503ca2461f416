"""Training-step overhead of the project's arms against the same TRL trainer called directly.

    .venv/bin/python benchmarks/train_overhead.py --profile tiny --steps 30

Both sides train the same model on the same puzzles with the same TRL config for --steps steps, one
after the other in one process (fixed torch threads), over --repeats rounds that alternate which side goes
first; each reading is the best of its rounds (one round's moves by 20% and more on a busy 2-core machine). The
arm side also pays for what the study adds (MLflow logging, checkpoints, rollout recording, the final save). Two
readings per arm:
- step time: median time from one step's start to the next's (everything the training loop does per
  step, logging and checkpointing included), the first 3 steps left out as warm-up. Target: ratio <= 1.10.
- total: wall time of the whole call, set-up (model load, trainer construction, MLflow run) included.
"""

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from forgetting.arms import ground_truth
from forgetting.models import load_model, resolve_model_path
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles
from forgetting.puzzles import score_answer
from forgetting.rft import grpo_args, rft_examples, train_rft
from forgetting.sft import sft_args, sft_examples, train_sft
from forgetting.trainer import image_dataset, preload
from tasks.training import MlflowMetrics


def direct_sft(config, base, examples, out: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    model, processor = load_model(config.model, base)
    args = SFTConfig(**{**sft_args(config, config.arms.sft, out), "report_to": []})
    SFTTrainer(model=model, args=args, train_dataset=image_dataset(examples), processing_class=processor).train()


def direct_rft(config, base, dataset, out: Path) -> None:
    """The same GRPO run with a bare reward function: no rollout recording, no MLflow."""
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts, completions, answer, **_):
        return [score_answer(c[0]["content"], a, style).total for c, a in zip(completions, answer, strict=True)]

    model, processor = load_model(config.model, base)
    style = config.arms.rft.prompt_style
    examples = rft_examples(dataset, style)
    GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=GRPOConfig(**{**grpo_args(config, out), "report_to": []}),
        train_dataset=image_dataset(examples),
        processing_class=processor,
    ).train()


STEP_STARTS: list[float] = []


def _record_step_start(original):
    def on_step_begin(self, args, state, control):
        STEP_STARTS.append(time.perf_counter())
        return original(self, args, state, control)

    return on_step_begin


def timed(fn) -> tuple[float, float]:
    """(total seconds, median seconds per step after 3 warm-up steps) of one training call."""
    STEP_STARTS.clear()
    start = time.perf_counter()
    fn()
    end = time.perf_counter()
    steps = [b - a for a, b in zip(STEP_STARTS, STEP_STARTS[1:] + [end], strict=True)][3:]
    return end - start, statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating which side goes first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preload()
    from transformers.trainer_callback import CallbackHandler

    CallbackHandler.on_step_begin = _record_step_start(CallbackHandler.on_step_begin)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        overrides = [f"arms.{a}.steps={args.steps}" for a in ("sft", "rft")] + [f"arms.checkpoint_every={args.steps}"]
        config = load_config(args.profile, overrides, output_dir=str(tmp))
        base = resolve_model_path(config.model.name_or_path)
        dataset = generate_puzzles(config.puzzles, tmp)
        examples = sft_examples(dataset, config.arms.sft.prompt_style, dict(ground_truth(config, "sft", dataset)))
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        with mlflow.start_run() as run:
            logged = [MlflowMetrics(run.info.run_id)]  # the arms as the flows run them, logging to MLflow
            sides = {
                ("sft", "project"): lambda out: train_sft(config, "sft", config.arms.sft, base, examples, out, logged),
                ("sft", "direct"): lambda out: direct_sft(config, base, examples, out),
                ("rft", "project"): lambda out: train_rft(config, base, dataset, out, logged),
                ("rft", "direct"): lambda out: direct_rft(config, base, dataset, out),
            }
            readings = {key: [] for key in sides}
            for round_ in range(args.repeats):  # which side goes first alternates: the machine's drift hits both
                order = ("project", "direct") if round_ % 2 == 0 else ("direct", "project")
                for arm in ("sft", "rft"):
                    for side in order:
                        readings[arm, side].append(timed(partial(sides[arm, side], tmp / f"{side}-{arm}-{round_}")))
        best = {key: (min(t for t, _ in values), min(s for _, s in values)) for key, values in readings.items()}
        rows = [(arm, best[arm, "project"], best[arm, "direct"]) for arm in ("sft", "rft")]
    print(f"\nprofile {args.profile}, {args.steps} steps, {args.threads} threads, best of {args.repeats} rounds")
    print(
        f"{'arm':<6}{'step s: project':>16}{'direct':>8}{'ratio':>7}{'total s: project':>18}{'direct':>8}{'ratio':>7}"
    )
    for arm, (ours, our_step), (theirs, their_step) in rows:
        print(
            f"{arm:<6}{our_step:>16.3f}{their_step:>8.3f}{our_step / their_step:>7.3f}"
            f"{ours:>18.2f}{theirs:>8.2f}{ours / theirs:>7.3f}"
        )


if __name__ == "__main__":
    main()

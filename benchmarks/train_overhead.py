"""Training-step overhead of the project's arms against the same TRL trainer called directly.

    .venv/bin/python benchmarks/train_overhead.py --profile tiny --steps 30

Both sides train the same model on the same puzzles with the same TRL config for --steps steps, one
after the other in one process (fixed torch threads); the arm side also pays for what the study adds
(MLflow logging, checkpoints, rollout recording). Target: ratio <= 1.10.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tasks.config import load_config
from tasks.models import load_model, resolve_model_path
from tasks.puzzles import generate_puzzles, score_answer
from tasks.training import grpo_args, preload, rft_examples, sft_args, sft_examples, train_rft, train_sft


def direct_sft(config, base, examples, out: Path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, processor = load_model(config.model, base)
    args = SFTConfig(**{**sft_args(config, config.arms.sft, out), "report_to": []})
    SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=processor).train()


def direct_rft(config, base, dataset, out: Path) -> None:
    """The same GRPO run with a bare reward function: no rollout recording, no MLflow."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts, completions, answer, **_):
        return [score_answer(c[0]["content"], a).total for c, a in zip(completions, answer, strict=True)]

    model, processor = load_model(config.model, base)
    examples = rft_examples(dataset, config.arms.sft.prompt_style)
    GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=GRPOConfig(**{**grpo_args(config, out), "report_to": []}),
        train_dataset=Dataset.from_list(examples),
        processing_class=processor,
    ).train()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preload()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        overrides = [f"arms.{a}.steps={args.steps}" for a in ("sft", "rft")] + [f"arms.checkpoint_every={args.steps}"]
        config = load_config(args.profile, overrides, output_dir=str(tmp))
        base = resolve_model_path(config.model.name_or_path)
        dataset = generate_puzzles(config.puzzles, tmp)
        examples = sft_examples(dataset, config.arms.sft.prompt_style)
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        rows = []
        with mlflow.start_run():
            arm_sft = timed(lambda: train_sft(config, "sft", config.arms.sft, base, examples, tmp / "arm-sft"))
            plain_sft = timed(lambda: direct_sft(config, base, examples, tmp / "direct-sft"))
            arm_rft = timed(lambda: train_rft(config, base, dataset, tmp / "arm-rft"))
            plain_rft = timed(lambda: direct_rft(config, base, dataset, tmp / "direct-rft"))
        rows = [("sft", arm_sft, plain_sft), ("rft", arm_rft, plain_rft)]
    print(f"\nprofile {args.profile}, {args.steps} steps, {args.threads} threads")
    print(f"{'arm':<6}{'project s':>12}{'direct TRL s':>14}{'ratio':>8}")
    for arm, ours, theirs in rows:
        print(f"{arm:<6}{ours:>12.2f}{theirs:>14.2f}{ours / theirs:>8.3f}")


if __name__ == "__main__":
    main()

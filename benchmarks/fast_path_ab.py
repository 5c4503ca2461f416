"""Each of the project's faster paths against the code it replaces, interleaved step by step in one run.

    .venv/bin/python benchmarks/fast_path_ab.py --profile tiny --steps 60 --evals 3

A shared 2-core machine's speed drifts by a quarter within minutes, so runs one after the other compare the
machine as much as the code. Here one SFT and one GRPO training run switch the named shortcuts
(forgetting/fast_paths.py:shortcuts(); all by default) off on even steps and on on odd ones, and evaluations of
the base model (every benchmark of the profile, --limit items each) alternate off and on: each side's median
time and their ratio come from the same minutes. The shortcuts that compute the same numbers bit for bit leave
the training run's path unchanged by the switching; the others move it by float rounding. GRPO's shared prompts
(forgetting/shared_prompts.py) stay on throughout: benchmarks/step_flops.py --compare measures them.

Prints one JSON line last: {"<arm>_off_s", "<arm>_on_s", "<arm>_ratio", "eval_off_s", "eval_on_s", "eval_ratio"}
(ratio = on / off, median over steps or evaluations; the first 3 steps are warm-up, as is one evaluation).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from forgetting import fast_paths
from forgetting.base_model import write_heldout_sets
from forgetting.benchmarks import BenchmarkData
from forgetting.evaluation import evaluate_model
from forgetting.models import load_model
from forgetting.rft import train_rft
from forgetting.sft import train_sft
from forgetting.trainer import preload

from short_arms import short_arms

WARMUP = 3


def switch(count: int, names: tuple[str, ...] | None) -> str:
    """The shortcuts `names` off for an even count, on for an odd one; which side that is."""
    side = "on" if count % 2 else "off"
    (fast_paths.install if side == "on" else fast_paths.uninstall)(names)
    return side


def medians(prefix: str, seconds: dict[str, list[float]], digits: int) -> dict:
    """Each side's median time and their ratio (on / off), keyed <prefix>_off_s, <prefix>_on_s, <prefix>_ratio."""
    off, on = (statistics.median(seconds[side]) for side in ("off", "on"))
    return {
        f"{prefix}_off_s": round(off, digits),
        f"{prefix}_on_s": round(on, digits),
        f"{prefix}_ratio": round(on / off, 3),
    }


class Alternate(TrainerCallback):
    """Shortcuts `names` off on even steps, on on odd ones; each step's time on its side."""

    def __init__(self, names: tuple[str, ...] | None):
        self.names = names
        self.seconds: dict[str, list[float]] = {"off": [], "on": []}
        self.side, self.started = "on", 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.side = switch(state.global_step, self.names)
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > WARMUP:
            self.seconds[self.side].append(time.perf_counter() - self.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=60, help="steps of each arm, half with the shortcuts off")
    parser.add_argument("--evals", type=int, default=3, help="evaluations on each side")
    parser.add_argument("--limit", type=int, default=None, help="items per benchmark (default: the profile's)")
    parser.add_argument("--shortcuts", default="", help="comma-separated names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = tuple(args.shortcuts.split(",")) if args.shortcuts else None
    preload()
    out: dict = {"profile": args.profile, "threads": args.threads, "shortcuts": args.shortcuts or "all"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config, base, dataset, examples = short_arms(args.profile, args.steps, tmp)
        for arm in ("sft", "rft"):
            meter = Alternate(names)
            if arm == "sft":
                train_sft(config, "sft", config.arms.sft, base, examples, tmp / arm, [meter])
            else:
                train_rft(config, base, dataset, tmp / arm, [meter])
            fast_paths.install()
            out |= medians(arm, meter.seconds, 4)

        data = BenchmarkData(str(write_heldout_sets(config)), str(dataset.path))
        model, processor = load_model(config.model, base, trainable=False)
        limit = args.limit or config.evaluation.limit
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        for round_ in range(2 * args.evals + 1):
            side = switch(round_, names)
            started = time.perf_counter()
            evaluate_model(model, processor, config.evaluation.benchmarks, data, limit, config.evaluation.batch_size)
            if round_:  # the first evaluation also processes every prompt batch once
                seconds[side].append(time.perf_counter() - started)
        fast_paths.install()
        out |= medians("eval", seconds, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

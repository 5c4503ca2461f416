"""How close the arms' training steps come to the machine's matrix-multiply speed.

    .venv/bin/python benchmarks/step_flops.py --profile tiny --steps 16

One process, fixed torch threads. Measures, in this order:
- the machine: the best of several 2048 x 2048 fp32 matrix products (GFLOP/s), right before and right after each
  arm's steps (each arm's ratio is over the mean of those two: a shared 2-core machine's speed drifts by a quarter
  within minutes; gemm_gflops is the mean over all arms, <arm>_gemm_gflops the one around that arm), and once the
  same at the model's own shapes (its MLP: tokens x hidden by hidden x intermediate), since a small model cannot
  use a big product's blocking;
- one SFT step and one GRPO step of the profile, as the arms run them (forgetting/sft.py, forgetting/rft.py):
  every other step runs under torch's FLOP counter (forward, backward and, for GRPO, the rollouts' generation
  and the reference model's forward; vision tower included), the steps between are timed without it. A
  step's FLOPs are the mean over counted steps, its time the median over timed ones (the first two steps are
  warm-up and neither counted nor timed).
The counter counts matrix products and convolutions (attention's products included when they run as matmuls);
elementwise work is not counted, so the ratio says how much of the step's time is spent at matmul speed.
On CPU, attention runs as one fused kernel the counter has no formula for: its products are counted apart
(torch's own attention formulas, step_products.py) and never enter `*_flops_ratio`.

Where the rest of the step goes: the counted steps also log every matrix product and attention call with a copy of
its inputs (step_products.py:ProductLog); after the arm's steps each is run again alone, at its shapes, as often as
a step ran it. `*_products_alone_s` is a step's products with nothing else around them, `*_ceiling_ratio` the
ratio the step would reach if it ran nothing but them (`*_with_attention`: attention's calls and FLOPs added).
The gap between the step's time and those is the step's other work: elementwise kernels, Python and the
libraries' bookkeeping, sampling, the processor. `--kernels` also logs every operator of each arm's last step (then
neither counted nor timed) and runs each alone, called from Python as eager mode calls it:
`*_other_kernels_alone_s` is what the step's operators besides products and attention take by themselves, and what
is left of the step's time is the code around the operators. `--phases` splits the GRPO step into generation,
log_probabilities (the reference model's and the policy's forwards), backward and the rest, each with its own
`*_alone_s` keys.

With --compare, the same steps run first with the project's faster paths off (FORGETTING_FAST_PATHS=0:
transformers' vision path and TRL's GRPO log-probabilities; forgetting/fast_paths.py, forgetting/shared_prompts.py),
then on, and the line carries both (stock_* keys) and the speed-up. The faster paths compute the same numbers
with fewer FLOPs (GRPO runs each distinct prompt once), so their FLOP ratio can fall while the step gets faster:
compare step times, and read the ratio as how busy the remaining work keeps the machine.

Prints one JSON line last:
    {"sft_step_s", "rft_step_s", "sft_flops_ratio", "rft_flops_ratio", "gemm_gflops", ...,
     "<arm>_attention_gflop", "<arm>_flops_ratio_with_attention", "<arm>_products_alone_s",
     "<arm>_attention_alone_s", "<arm>_ceiling_ratio", "<arm>_ceiling_ratio_with_attention",
     "<arm>_calls_not_replayed"; --kernels: "<arm>_other_kernels_alone_s", "<arm>_operator_calls";
     --phases: "rft_phase_<part>_s", "rft_phase_<part>_<kind>_alone_s", "rft_phase_other_s"}
ratio = achieved FLOP/s over the 2048 x 2048 product's FLOP/s measured around the arm's steps; `*_ratio_shapes`
divides by the model-shape product's (measured once, at the start) instead.
"""

import argparse
import contextlib
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

from forgetting.rft import train_rft
from forgetting.sft import train_sft
from forgetting.trainer import preload

from short_arms import short_arms
from step_products import ProductLog

WARMUP = 2


def gemm_gflops(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """The best GFLOP/s of an (m x k) @ (k x n) fp32 product over about `seconds` of repeats."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


class StepMeter(TrainerCallback):
    """Every other step (after WARMUP) under FlopCounterMode and a ProductLog, the ones between timed; with
    every_kernel, the last step logs every operator instead (step_products.py) and is neither counted nor timed.
    Parts of a step (phase()) are timed and logged the same way."""

    def __init__(self, every_kernel: bool = False):
        self.every_kernel = every_kernel
        self.flops: list[int] = []
        self.seconds: list[float] = []
        self.counter: FlopCounterMode | None = None
        self.logs: dict[str, ProductLog] = {}  # the whole step ("step") and each part: products, counted steps
        self.kernel_logs: dict[str, ProductLog] = {}  # ... every operator, the last step (every_kernel)
        self.active: dict[str, ProductLog] | None = None  # the logs the step under way writes to, if any
        self.timing = False
        self.started = 0.0
        self.phase_seconds: dict[str, float] = {}  # each part's time over the timed steps
        self.inside: str | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step  # steps done so far
        self.active = None
        if self.every_kernel and step == state.max_steps - 1:
            self.active = self.kernel_logs
        elif step >= WARMUP and step % 2 == 0:
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()
            self.active = self.logs
        if self.active is not None:
            self.active.setdefault("step", ProductLog(self.active is self.kernel_logs)).__enter__()
        self.timing = step >= WARMUP and self.active is None
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self.started
        if self.active is not None:
            self.active["step"].__exit__(None, None, None)
            self.active = None
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.flops.append(self.counter.get_total_flops())
            self.counter = None
        elif self.timing:
            self.seconds.append(elapsed)

    @contextlib.contextmanager
    def phase(self, name: str):
        """A part of the step (the outermost, when parts nest): its time on timed steps, its calls on logged ones."""
        if self.inside is not None or not (self.timing or self.active is not None):
            yield
            return
        self.inside = name
        try:
            if self.active is not None:
                with self.active.setdefault(name, ProductLog(self.active is self.kernel_logs)):
                    yield
            else:
                start = time.perf_counter()
                yield
                self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - start
        finally:
            self.inside = None

    def alone(self, name: str = "step") -> dict[str, float]:
        """The step's (or a part's) logged calls run alone (step_products.py), a step: seconds of its products and
        attention (and, with every_kernel, of its other operators, `kernels`, and how many operator calls it made,
        `calls`), attention's FLOPs, and calls that would not run again alone (`failed`)."""
        with torch.no_grad():
            counted = self.logs[name].alone()
            out = {kind: counted[kind] / len(self.flops) for kind in ("products", "attention", "failed")}
            if name in self.kernel_logs:
                others = self.kernel_logs[name].alone(("kernels",))  # its products and attention: replayed above
                out |= {"kernels": others["kernels"], "failed": out["failed"] + others["failed"]}
                out["calls"] = sum(self.kernel_logs[name].calls.values())
        return out | {"attention_flops": self.logs[name].attention_flops / len(self.flops)}

    def phases(self) -> dict[str, float]:
        """Each part's seconds a step, those of its calls run alone (`<part>_<kind>_alone_s`), and the step's time
        outside the parts (`other_s`: the median step less the parts' means)."""
        out = {"other_s": self.result()[1] - sum(self.phase_seconds.values()) / len(self.seconds)}
        for name in self.logs.keys() - {"step"}:
            out[f"{name}_s"] = self.phase_seconds.get(name, 0.0) / len(self.seconds)
            alone = self.alone(name)
            for kind in ("products", "attention", "kernels"):
                if kind in alone:
                    out[f"{name}_{kind}_alone_s"] = alone[kind]
        return out

    def result(self) -> tuple[float, float]:
        """(FLOPs a step, seconds a step)."""
        return statistics.mean(self.flops), statistics.median(self.seconds)


@contextlib.contextmanager
def grpo_phases(meter: StepMeter):
    """While inside, a GRPO step's parts go through meter.phase: generation (the rollouts: transformers' generate over
    the batch), log_probabilities (the reference model's and the policy's forwards) and backward."""
    from accelerate import Accelerator
    from trl import GRPOTrainer

    from forgetting import fast_paths
    from forgetting.shared_prompts import grpo_trainer

    trainer = grpo_trainer() if fast_paths.enabled() else GRPOTrainer
    parts = {
        "generation": (trainer, "_generate_single_turn"),
        "log_probabilities": (trainer, "_get_per_token_logps_and_entropies"),
        "backward": (Accelerator, "backward"),
    }
    own = {name: owner.__dict__.get(method) for name, (owner, method) in parts.items()}
    for name, (owner, method) in parts.items():
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed(*args, _original=original, _name=name, **kwargs):
            with meter.phase(_name):
                return _original(*args, **kwargs)

        setattr(owner, method, timed)
    try:
        yield
    finally:
        for name, (owner, method) in parts.items():
            if own[name] is None:
                delattr(owner, method)  # the class's own again, from its bases
            else:
                setattr(owner, method, own[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=16, help="steps of each arm (the first 2 are warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run with the faster paths off first (FORGETTING_FAST_PATHS=0: stock_* keys, *_speedup)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also split GRPO's step into its parts (rft_phase_* keys: generation, log_probabilities, backward, other)",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="also log every operator of each arm's last step and run it alone (*_other_kernels_alone_s; slow, GBs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preload()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config, base, dataset, examples = short_arms(args.profile, args.steps, tmp)
        model_config = json.loads((Path(base) / "config.json").read_text())
        text = model_config.get("text_config", model_config)
        hidden, inner = text["hidden_size"], text["intermediate_size"]
        tokens = config.arms.sft.batch_size * 80  # about a batch of the tiny puzzles' sequences
        gemm_shapes = gemm_gflops(tokens, hidden, inner)

        arms = {
            "sft": lambda out, meter: train_sft(config, "sft", config.arms.sft, base, examples, out, [meter]),
            "rft": lambda out, meter: train_rft(config, base, dataset, out, [meter]),
        }
        meters: dict[str, StepMeter] = {}
        gemms: dict[str, float] = {}  # the machine's product around each arm's steps
        alone: dict[str, dict[str, float]] = {}  # each arm's products and attention run alone
        for side in ("stock", "fast") if args.compare else ("fast",):
            os.environ["FORGETTING_FAST_PATHS"] = "1" if side == "fast" else "0"
            for arm, train in arms.items():
                meter = meters[f"{side}-{arm}"] = StepMeter(args.kernels)
                before = gemm_gflops(2048, 2048, 2048)
                with grpo_phases(meter) if args.phases and arm == "rft" else contextlib.nullcontext():
                    train(tmp / f"{side}-{arm}", meter)
                gemms[f"{side}-{arm}"] = (before + gemm_gflops(2048, 2048, 2048)) / 2
                alone[f"{side}-{arm}"] = meter.alone()
    out = {"profile": args.profile, "threads": args.threads, "gemm_gflops": round(statistics.mean(gemms.values()), 1)}
    out["gemm_gflops_model_shapes"] = round(gemm_shapes, 1)
    for key, meter in meters.items():
        side, arm = key.split("-")
        name = arm if side == "fast" else f"stock_{arm}"
        flops, seconds = meter.result()
        achieved = flops / seconds / 1e9
        out |= {f"{name}_step_s": round(seconds, 4), f"{name}_step_gflop": round(flops / 1e9, 2)}
        out |= {f"{name}_gflops": round(achieved, 1), f"{name}_gemm_gflops": round(gemms[key], 1)}
        out[f"{name}_flops_ratio"] = round(achieved / gemms[key], 3)
        out[f"{name}_flops_ratio_shapes"] = round(achieved / gemm_shapes, 3)
        by_itself = alone[key]
        gemm = gemms[key] * 1e9
        with_attention = flops + by_itself["attention_flops"]
        out[f"{name}_attention_gflop"] = round(by_itself["attention_flops"] / 1e9, 3)
        out[f"{name}_flops_ratio_with_attention"] = round(with_attention / seconds / gemm, 3)
        out[f"{name}_products_alone_s"] = round(by_itself["products"], 4)
        out[f"{name}_attention_alone_s"] = round(by_itself["attention"], 4)
        if "kernels" in by_itself:
            out[f"{name}_other_kernels_alone_s"] = round(by_itself["kernels"], 4)
            out[f"{name}_operator_calls"] = by_itself["calls"]
        out[f"{name}_calls_not_replayed"] = round(by_itself["failed"], 1)
        out[f"{name}_ceiling_ratio"] = round(flops / by_itself["products"] / gemm, 3)
        out[f"{name}_ceiling_ratio_with_attention"] = round(
            with_attention / (by_itself["products"] + by_itself["attention"]) / gemm, 3
        )
        if len(meter.logs) > 1:  # --phases
            out |= {f"{name}_phase_{k}": round(v, 4) for k, v in meter.phases().items()}
    if args.compare:
        for arm in ("sft", "rft"):
            out[f"{arm}_speedup"] = round(out[f"stock_{arm}_step_s"] / out[f"{arm}_step_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

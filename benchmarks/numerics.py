"""Whether an arm's weights depend on how many threads train it, under the CPU's native and reproducible rounding.

    .venv/bin/python benchmarks/numerics.py --profile tiny-think --steps 30 --repeats 2

For each repeat, each mode (FORGETTING_NUMERICS=native, then reproducible: forgetting/__init__.py) and each
thread count (1, then 2), one child process trains the profile's SFT and RFT arms for --steps steps on a fresh
puzzle set and reports a hash of each arm's final weights and its median step time (the first 3 steps left out as
warm-up). The runs of one repeat alternate, so each mode's times come from the same minutes of a shared machine; each
reading is the best of its repeats (one child's step time can jump several-fold on a busy 2-core machine).

Prints one line per child, then one JSON line last:
    {"native_sft_same_threads", "native_rft_same_threads", "reproducible_sft_same_threads",
     "reproducible_rft_same_threads",   # the same weights on 1 and 2 threads, in every repeat
     "native_repeatable", "reproducible_repeatable",   # the same weights in every repeat at each thread count
     "<mode>_<arm>_<threads>t_step_s",  # the best over repeats of each child's median step time
     "<arm>_<threads>t_ratio",          # reproducible / native step time
     "reproducible_sft_weights", "reproducible_rft_weights", "cpu", ...}
The reproducible hashes are what a rerun elsewhere compares with: with the same profile, steps, libraries and code,
a machine with the same CPU model should give them on any number of threads. Other CPUs may take other code paths
in MKL and torch (MKL_CBWR=AVX2,STRICT and ATEN_CPU_CAPABILITY=avx2, set by hand, ask for one path on every x86-64
CPU with AVX2; forgetting/__init__.py).
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 3
ARMS = ("sft", "rft")
MODES = ("native", "reproducible")


def child(profile: str, steps: int, threads: int) -> dict:
    """Train both arms in this process; each arm's weights hash and median step time."""
    import torch
    from transformers import TrainerCallback

    from forgetting.rft import train_rft
    from forgetting.sft import train_sft
    from forgetting.trainer import preload

    from short_arms import short_arms

    class Steps(TrainerCallback):
        def __init__(self):
            self.seconds, self.started = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > WARMUP:
                self.seconds.append(time.perf_counter() - self.started)

    torch.set_num_threads(threads)
    preload()
    out = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config, base, dataset, examples = short_arms(profile, steps, tmp)
        for arm in ARMS:
            meter = Steps()
            if arm == "sft":
                result = train_sft(config, "sft", config.arms.sft, base, examples, tmp / arm, [meter])
            else:
                result = train_rft(config, base, dataset, tmp / arm, [meter])
            weights = sorted(result.final.glob("*.safetensors"))
            digest = hashlib.sha256(b"".join(f.read_bytes() for f in weights)).hexdigest()[:16]
            out |= {f"{arm}_weights": digest, f"{arm}_step_s": statistics.median(meter.seconds)}
    return out


def run_child(args, mode: str, threads: int) -> dict:
    from forgetting import NUMERICS_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in NUMERICS_VARIABLES}
    env |= {"FORGETTING_NUMERICS": mode, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", "--profile", args.profile, "--steps", str(args.steps)]
    done = subprocess.run([*command, "--threads", str(threads)], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{mode}, {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny-think")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.profile, args.steps, args.threads)))
        return

    from forgetting.environment import cpu_model

    runs: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(args.repeats):
        for mode in MODES:
            for threads in (1, 2):
                found = run_child(args, mode, threads)
                runs.setdefault((mode, threads), []).append(found)
                print(json.dumps({"repeat": repeat, "mode": mode} | found), flush=True)

    out = {"profile": args.profile, "steps": args.steps, "repeats": args.repeats, "cpu": cpu_model()}
    for mode in MODES:
        for arm in ARMS:
            hashes = {threads: {r[f"{arm}_weights"] for r in runs[mode, threads]} for threads in (1, 2)}
            out[f"{mode}_{arm}_same_threads"] = len(hashes[1] | hashes[2]) == 1
        out[f"{mode}_repeatable"] = all(
            len({r[f"{arm}_weights"] for r in runs[mode, threads]}) == 1 for arm in ARMS for threads in (1, 2)
        )
        for arm in ARMS:
            for threads in (1, 2):
                out[f"{mode}_{arm}_{threads}t_step_s"] = round(min(r[f"{arm}_step_s"] for r in runs[mode, threads]), 4)
    for arm in ARMS:
        for threads in (1, 2):
            ratio = out[f"reproducible_{arm}_{threads}t_step_s"] / out[f"native_{arm}_{threads}t_step_s"]
            out[f"{arm}_{threads}t_ratio"] = round(ratio, 3)
        out[f"reproducible_{arm}_weights"] = sorted({r[f"{arm}_weights"] for r in runs["reproducible", 2]})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Pretraining variants side by side, one process each: on a GPU machine (they share the GPU) or a many-core
CPU one. Each variant is a name and `--set`-style overrides of the profile:

    python benchmarks/pretrain_sweep.py OUT_DIR --profile tiny --limit 540 --threads 2 \\
        shipped: lr1e-3:pretrain.learning_rate=1e-3,pretrain.vision_lr_multiplier=1.0

Each variant pretrains through tasks.base_model.pretrain_base_model (model.device auto: the GPU when there
is one, in float32) and prints its held-out curve as it goes; a variant still running after --limit seconds
is stopped, and its curve so far is kept. Written: OUT_DIR/sweep.json (per variant: overrides, held-out
accuracy at each evaluation, the jigsaw probe and wall time when it finished) and OUT_DIR/sweep.log (every
variant's output). The weights stay in OUT_DIR/work/ (not needed to compare).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run_one(name: str, out: Path, profile: str, overrides: list[str], threads: int) -> None:
    """One variant, in this process: its curve lines go to stdout as JSON, its card to out/work/<name>/."""
    import torch

    from forgetting.base_model import pretrain_base_model
    from forgetting.profiles import load_config

    torch.set_num_threads(threads)
    config = load_config(profile, overrides)

    def log(metrics: dict, step: int) -> None:
        if "heldout.mean" in metrics or "jigsaw.exact" in metrics:
            print(json.dumps({"step": step, **{k: round(v, 4) for k, v in metrics.items()}}), flush=True)

    card = pretrain_base_model(config, out / "work" / name, log, command=f"pretrain_sweep {name}")
    print(json.dumps({"card": {k: card[k] for k in ("heldout_accuracy", "jigsaw", "wall_time_s", "device")}}))


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SystemExit(f"variant {text!r}: the name must be letters, digits, '-', '_' or '.'")
    return name, [s for s in sets.split(",") if s]


def collect(lines: list[str]) -> dict:
    curve, card = {}, None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "card" in row:
            card = row["card"]
        elif isinstance(row, dict) and "step" in row:
            curve.setdefault(str(row.pop("step")), {}).update(row)
    return {"curve": curve, "finished": card}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("variants", nargs="+", help="NAME or NAME:key=value,key=value")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--limit", type=float, default=540, help="seconds before a variant is stopped")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variants)
    if args.one:
        ((name, overrides),) = variants.items()
        run_one(name, args.out, args.profile, overrides, args.threads)
        return
    from forgetting.config import ConfigError
    from forgetting.profiles import load_config

    for name, overrides in variants.items():  # a bad key or value stops the sweep before anything starts
        try:
            load_config(args.profile, overrides)
        except ConfigError as err:
            raise SystemExit(f"variant {name}: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = {}
    for name, overrides in variants.items():
        command = [sys.executable, __file__, str(args.out), f"{name}:{','.join(overrides)}", "--one"]
        command += ["--profile", args.profile, "--threads", str(args.threads)]
        log = open(args.out / f"{name}.part.log", "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
    while any(p.poll() is None for p, _ in procs.values()) and time.monotonic() - started < args.limit:
        time.sleep(5)
    results = {}
    with open(args.out / "sweep.log", "w") as combined:
        for name, (proc, log) in procs.items():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()
            text = (args.out / f"{name}.part.log").read_text()
            combined.write(f"===== {name} (rc {proc.returncode})\n{text}\n")
            (args.out / f"{name}.part.log").unlink()
            results[name] = {"overrides": variants[name], "rc": proc.returncode, **collect(text.splitlines())}
    (args.out / "sweep.json").write_text(json.dumps(results, indent=1) + "\n")
    for name, r in results.items():
        last = r["curve"][max(r["curve"], key=int)] if r["curve"] else {}
        print(f"{name}: rc {r['rc']}, last step {max(r['curve'], key=int, default='-')}, "
              f"held-out mean {last.get('heldout.mean', '-')}, finished {r['finished'] is not None}")  # fmt: skip
    print(f"{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()

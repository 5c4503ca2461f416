"""An unchanged rerun timed: the study's command run again on an output folder that already holds the whole study, so
every stage is found on disk. Each run is split into the start (Python's imports, the config's checks and Prefect's
temporary server, up to the flow run's first line), the flow, and the end (from the flow's last line to the process's
exit). Run it with no Prefect server configured (no PREFECT_API_URL): the temporary server is part of a rerun then.

    python -m flows.study --profile tiny --output-dir /tmp/study            # once, to have the study on disk
    python benchmarks/rerun.py --output-dir /tmp/study --repeat 3
    python benchmarks/rerun.py --output-dir /tmp/study --repeat 3 --against /tmp/old-checkout   # side by side

--against: another checkout of the project (e.g. `git worktree add /tmp/old <commit>`), run alternately with this
one on the same folder and the same Python. Target: a rerun of the tiny study in at most 15 s on two cores. Prints a
JSON line last: {"rerun_s": median, "start_s": ..., "flow_s": ..., "end_s": ..., "target_s": 15, "against": {...},
"ratio": this over against}.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TARGET_S = 15.0
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| ")


def logged_at(line: str) -> float | None:
    """The epoch time of a Prefect log line (its clock time is local, today's)."""
    found = STAMP.match(line)
    if not found:
        return None
    clock = datetime.strptime(found[1], "%H:%M:%S.%f").time()
    return datetime.combine(datetime.now().date(), clock).timestamp()


def rerun(checkout: Path, profile: str, output_dir: Path) -> dict:
    """One rerun from checkout: wall time and its three parts, seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    command = [sys.executable, "-m", "flows.study", "--profile", profile, "--output-dir", str(output_dir)]
    started = time.time()
    result = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0:
        raise SystemExit(f"{checkout}: the rerun failed (rc {result.returncode}):\n{result.stderr[-3000:]}")
    lines = result.stderr.splitlines()
    first = next(logged_at(line) for line in lines if "Beginning flow run" in line)
    last = next(logged_at(line) for line in reversed(lines) if re.search(r"Flow run .* - Finished in state", line))
    return {"rerun_s": ended - started, "start_s": first - started, "flow_s": last - first, "end_s": ended - last}


def medians(runs: list[dict]) -> dict:
    return {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, type=Path, help="a folder holding the whole study already")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, default=None, help="another checkout, run alternately")
    args = parser.parse_args()
    checkouts = {"this": HERE} | ({"against": args.against.resolve()} if args.against else {})
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    rerun(HERE, args.profile, args.output_dir)  # warms the file cache; a report made by other code is made again
    for round_ in range(args.repeat):
        for name, checkout in checkouts.items():
            runs[name].append(rerun(checkout, args.profile, args.output_dir))
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[name][-1].items()))
    out = medians(runs["this"]) | {"target_s": TARGET_S}
    if args.against:
        out["against"] = medians(runs["against"])
        out["ratio"] = round(out["rerun_s"] / out["against"]["rerun_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

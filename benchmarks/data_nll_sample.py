"""How well the study's sample of an arm's training data estimates the base's NLL of the data the arm had seen by
each checkpoint (forgetting/predictors.py: data_sample, data_nll_at), against a sample many times as large, and
against the sample the study took before (512 examples evenly spaced over the file's first 512 x (rows // 512) rows,
unweighted). Reads a sweep's report folder (its config.yaml and frontier.csv) and scores the data of every RFT and
iterative self-SFT arm of its own points that the output folder holds; writes nothing into either.

    python benchmarks/data_nll_sample.py --report docs/results-think-rft-kl --output-dir /tmp/slow --dense 8192

Prints, per range of checkpoint steps, the median and largest distance of each small sample's value from the large
one's (and how far the former sample is from the report's values: it is the sample the report used); then, at the
checkpoints that make up the frontiers, in how many seeds and levels the difference between a family and RFT in data
NLL has the sign of their difference in forgetting under each sample (as the sweep report's `agree` counts it), and
the pooled Spearman rho and quadratic R² of forgetting on data NLL over the sweep's checkpoints. The last line is
JSON.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from forgetting.arms import arm_dir, training_data
from forgetting.base_model import resolve_base
from forgetting.evaluation import DATA_NLL_ITEMS, nll_of_data
from forgetting.predictors import data_nll_at, data_sample, quadratic_r2, spearman
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles
from forgetting.sweep import arm_key, at_frontier_against, differences_from_rft, frontier_levels, points
from forgetting.trainer import ArmResult

FAMILIES = ("rft", "iterative_sft")  # the arms whose data carry the step that drew them
STEP_RANGES = ((1, 50), (51, 200), (201, 10**9))


def former_sample(steps: list[int], n: int) -> list[tuple[int, float]]:
    """The sample data_nll took before data_sample: every (rows // n)-th row of the first n of those, unweighted."""
    stride = max(1, len(steps) // n)
    return [(i, 1.0) for i in range(0, len(steps), stride)][:n]


def dense_sample(steps: list[int], n: int) -> list[tuple[int, float]]:
    """n rows evenly spaced over all of them, unweighted."""
    return [(i * len(steps) // n, 1.0) for i in range(min(n, len(steps)))]


def arm_folders(config, seed: int, base: str, dataset) -> dict[tuple[str, str], Path]:
    """(family, arm_key) -> the arm's folder, for the sweep's own points in this seed."""
    found = {}
    for _, _, point in points(config):
        one = point.model_copy(update={"seed": seed, "seeds": []})
        for arm in FAMILIES:
            if getattr(one.arms, arm).enabled:
                found[(arm, arm_key(one, arm))] = arm_dir(one, arm, base, dataset)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a sweep's report folder (config.yaml, frontier.csv)")
    parser.add_argument("--output-dir", required=True, help="the output folder that holds the sweep's arms")
    parser.add_argument("--dense", type=int, default=8192, help="examples in the large sample")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the sweep's)")
    args = parser.parse_args()
    report = Path(args.report)
    frame = pd.read_csv(report / "frontier.csv")
    frame = frame[frame.arm.isin(FAMILIES) & ~frame.point.astype(str).str.contains(":") & (frame.step > 0)]
    config = load_config(str(report / "config.yaml"), output_dir=args.output_dir)
    samples = {
        "study": (DATA_NLL_ITEMS, data_sample),
        "former": (DATA_NLL_ITEMS, former_sample),
        "dense": (args.dense, dense_sample),
    }
    values = {name: [] for name in samples}
    for one in [one for one in config.per_seed() if args.seeds is None or one.seed in args.seeds]:
        base, dataset = resolve_base(one), generate_puzzles(one.puzzles, one.output.path)
        folders = arm_folders(config, one.seed, base, dataset)
        for (arm, key), rows_here in frame[frame.seed == one.seed].groupby(["arm", "arm_key"]):
            folder = folders.get((arm, key))
            if folder is None or not (folder / "final").is_dir():
                print(f"seed {one.seed}: {arm} {key} not on disk, left out")
                continue
            data = training_data(ArmResult.of(arm, folder))
            for name, (items, sample) in samples.items():
                entry = nll_of_data(one, base, arm, data, dataset, items, sample)
                values[name] += [(i, data_nll_at(entry, int(s))) for i, s in rows_here.step.items()]
            print(f"seed {one.seed}: {arm} {key} scored ({entry['data_examples']:,} examples)", flush=True)
    for name, pairs in values.items():
        frame[name] = pd.Series(dict(pairs))
    frame = frame.dropna(subset=["dense"])
    result = {
        "checkpoints": len(frame),
        "former_vs_report_max": round((frame.former - frame.data_nll).abs().max(), 6),  # the report's own sample
        "distance_from_dense": {},
        "pooled": {},
    }
    for low, high in STEP_RANGES:
        part = frame[frame.step.between(low, high)]
        for name in ("study", "former"):
            gap = (part[name] - part.dense).abs()
            result["distance_from_dense"][f"{name} steps {low}-{min(high, int(frame.step.max()))}"] = {
                "median": round(gap.median(), 4), "max": round(gap.max(), 4), "checkpoints": len(part)
            }  # fmt: skip
    result["orders_as_forgetting"] = orders(frame, list(samples))
    for name in samples:
        x, y = frame[name].to_numpy(), frame.forgetting.to_numpy()
        result["pooled"][name] = {"spearman": round(spearman(x, y), 3), "r2": round(quadratic_r2(x, y), 3)}
    print(json.dumps(result))


def orders(frame: pd.DataFrame, names: list[str]) -> dict:
    """At each seed and level where a family and RFT both have a frontier checkpoint: in how many the family minus
    RFT in data NLL, under each sample, has the sign of their difference in forgetting (the sweep report's
    at_frontier_against_rft, its `agree` summed over families and levels)."""
    counts = {}
    for name in names:
        paired = at_frontier_against(differences_from_rft(frontier_levels(frame.assign(data_nll=frame[name]))))
        paired = paired[paired.predictor == "data_nll"]
        counts["compared"], counts[name] = int(paired.n_paired.sum()), int(paired.agree.sum())
    return counts


if __name__ == "__main__":
    main()

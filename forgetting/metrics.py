"""The study's numbers from its evaluations: forgetting deltas, learning curves, matched-accuracy comparisons,
learning dynamics, and means with confidence intervals over seeds. Plain functions over evaluation records
(forgetting/evaluation.py writes them); no model here. The report folder (tables, plots, markdown) is
forgetting/report.py.

Sign conventions, used everywhere:
- forgetting.csv `delta` = arm score - base score (negative: the arm got worse);
- summary `mean_forgetting` = mean over prior benchmarks of (base - arm), positive meaning forgotten.
"""

import math
from pathlib import Path

import pandas as pd

from forgetting.storage import read_json, read_json_lines

ARM_ORDER = ("base", "sft", "teacher_sft", "rft", "rollout_sft", "iterative_sft")


def arm_order(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)


def is_puzzle(record: dict, benchmark: str) -> bool:
    """Whether a benchmark of an evaluation record is a puzzle benchmark: the model's own prompt style's, or
    (the base's) another arm's."""
    return benchmark in record.get("puzzle_benchmarks", [record["puzzle_benchmark"]])


# ---------------------------------------------------------------------------------------------------------
# Tables from evaluation records. A record: {arm, step, benchmarks: [{benchmark, metric, value, stderr, n,
# format_failures}], puzzle_benchmark, answer_logprob: {benchmark: mean}, param_distance: {l2, relative}}.


def read_evaluation(folder: Path) -> tuple[dict, list[dict]]:
    """An evaluation folder (forgetting.evaluation.evaluate_target): its record and per-item samples."""
    return read_json(folder / "evaluation.json"), read_json_lines(folder / "samples.jsonl")


def benchmark_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (arm, step, benchmark) with value, stderr, n, format_failures, answer_logprob, kind."""
    rows = []
    for rec in records:
        for b in rec["benchmarks"]:
            rows.append(
                {
                    "arm": rec["arm"],
                    "step": rec["step"],
                    **b,
                    "answer_logprob": rec.get("answer_logprob", {}).get(b["benchmark"], math.nan),
                    "kind": "puzzle" if is_puzzle(rec, b["benchmark"]) else "prior",
                }
            )
    return pd.DataFrame(rows)


def format_collapse(prior: pd.DataFrame) -> float:
    """Share of answers outside their benchmark's format, over the prior benchmarks that check formats."""
    failures = prior.format_failures.dropna()
    return float(failures.sum() / prior.n[failures.index].sum()) if len(failures) else math.nan


def curves(records: list[dict]) -> pd.DataFrame:
    """Per (arm, step): puzzle_exact, prior_mean, forgetting (base prior_mean - prior_mean), format_collapse
    (share of prior answers outside their format), parameter distance, the mean change of held-out answer
    log-probability against the base, and the KL divergences between base and model on held-out puzzle
    prompts (forward: E[KL(base || model)], reverse: E[KL(model || base)]). The base appears as step 0 of every
    arm."""
    frame = benchmark_frame(records)
    base = frame[frame.arm == "base"]
    if base.empty:
        raise ValueError("curves need the base model's evaluation")
    base_prior = base[base.kind == "prior"]
    base_logprob = base_prior.set_index("benchmark")["answer_logprob"]
    distance = {(r["arm"], r["step"]): r.get("param_distance") or {} for r in records}
    kl = {(r["arm"], r["step"]): r.get("policy_kl") or {} for r in records}
    puzzle_of = {r["arm"]: r["puzzle_benchmark"] for r in records}  # each arm's puzzle, in its prompt style
    out = []
    for (arm, step), group in frame.groupby(["arm", "step"]):
        prior = group[group.kind == "prior"]
        puzzle = group[group.benchmark == puzzle_of[arm]]
        change = (prior.set_index("benchmark")["answer_logprob"] - base_logprob).dropna()
        out.append(
            {
                "arm": arm,
                "step": int(step),
                "puzzle_exact": float(puzzle.value.iloc[0]) if len(puzzle) else math.nan,
                "prior_mean": float(prior.value.mean()),
                "forgetting": float(base_prior.value.mean() - prior.value.mean()),
                "format_collapse": format_collapse(prior),
                "param_l2": distance[(arm, step)].get("l2", math.nan),
                "param_relative": distance[(arm, step)].get("relative", math.nan),
                "logprob_change": float(change.mean()) if len(change) else math.nan,
                "forward_kl": kl[(arm, step)].get("forward", math.nan),
                "reverse_kl": kl[(arm, step)].get("reverse", math.nan),
            }
        )
    table = pd.DataFrame(out)
    base_rows, trained = table[table.arm == "base"], table[table.arm != "base"]
    if not trained.empty:  # the base is where every arm starts, on the puzzle in the arm's prompt style
        base_puzzle = base.set_index("benchmark")["value"]
        starts = [
            base_rows.assign(arm=a, puzzle_exact=float(base_puzzle.get(puzzle_of[a], math.nan)))
            for a in trained.arm.unique()
        ]
        table = pd.concat([trained, *starts], ignore_index=True)
    return _sorted(table)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    order = table.arm.map(arm_order)
    return table.assign(_o=order).sort_values(["_o", "arm", "step"]).drop(columns="_o").reset_index(drop=True)


def paired_stderr(base_scores: list[float], arm_scores: list[float]) -> float:
    """Standard error of the mean per-item difference (arm - base) on the same items."""
    diffs = [a - b for a, b in zip(arm_scores, base_scores, strict=True)]
    n = len(diffs)
    if n < 2:
        return math.nan
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def forgetting_table(base: dict, finals: list[dict], samples: dict[tuple[str, int], list[dict]]) -> pd.DataFrame:
    """Per (arm, benchmark) of each arm's final model: base, score, delta = score - base, the paired standard
    error of delta over the shared items (unpaired sqrt(se_a^2 + se_b^2) when per-item scores are missing),
    and the arm's format failures."""
    base_rows = {b["benchmark"]: b for b in base["benchmarks"]}
    base_items = _item_scores(samples.get((base["arm"], base["step"]), []))
    rows = []
    for rec in sorted(finals, key=lambda r: arm_order(r["arm"])):
        items = _item_scores(samples.get((rec["arm"], rec["step"]), []))
        for b in rec["benchmarks"]:
            name, ref = b["benchmark"], base_rows.get(b["benchmark"])
            if ref is None:
                continue
            shared = sorted(set(items.get(name, {})) & set(base_items.get(name, {})))
            if len(shared) >= 2:
                stderr = paired_stderr([base_items[name][i] for i in shared], [items[name][i] for i in shared])
            else:
                stderr = math.sqrt(b["stderr"] ** 2 + ref["stderr"] ** 2)
            rows.append(
                {
                    "arm": rec["arm"],
                    "benchmark": name,
                    "kind": "puzzle" if is_puzzle(rec, name) else "prior",
                    "base": ref["value"],
                    "score": b["value"],
                    "delta": b["value"] - ref["value"],
                    "stderr": stderr,
                    "format_failures": b["format_failures"],
                    "n": b["n"],
                }
            )
    columns = ["arm", "benchmark", "kind", "base", "score", "delta", "stderr", "format_failures", "n"]
    return pd.DataFrame(rows, columns=columns)


def _item_scores(samples: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for s in samples:
        out.setdefault(s["benchmark"], {})[s["doc_id"]] = s["score"]
    return out


def at_level(curve: pd.DataFrame, level: float, columns: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per trained arm, each column where its puzzle accuracy first reaches level, interpolated linearly between
    the evaluated checkpoints on either side of the crossing (a checkpoint that overshoots the level would
    otherwise charge the arm for skill it has beyond it, and count the steps to get there). NaN where the arm
    never reaches level."""
    out = {}
    for arm, rows in curve[curve.arm != "base"].groupby("arm", sort=False):
        rows = rows.sort_values("step").reset_index(drop=True)
        reached = [] if math.isnan(level) else rows.index[rows.puzzle_exact >= level]
        if not len(reached):
            out[arm] = dict.fromkeys(columns, math.nan)
            continue
        i = reached[0]
        before, after = rows.iloc[max(i - 1, 0)], rows.iloc[i]
        gap = after.puzzle_exact - before.puzzle_exact
        share = (level - before.puzzle_exact) / gap if i > 0 and gap else 1.0
        out[arm] = {c: float(before[c] + share * (after[c] - before[c])) for c in columns}
    return out


def at_accuracy(curve: pd.DataFrame, level: float) -> dict[str, dict]:
    """Per trained arm, where its puzzle exact accuracy first reaches level (interpolated between evaluated
    checkpoints, see at_level): the step (`steps_to_matched`; how fast the arm learns the task), the
    forgetting and the format collapse there (`forgetting_at_matched`, `format_collapse_at_matched`): arms
    compared at matched task skill rather than at their last step. NaN where an arm never reaches level."""
    names = {"step": "steps_to_matched", "forgetting": "forgetting_at_matched"}
    names["format_collapse"] = "format_collapse_at_matched"
    found = at_level(curve, level, tuple(names))
    return {arm: {names[c]: v for c, v in values.items()} for arm, values in found.items()}


def common_accuracy(curve: pd.DataFrame) -> float:
    """The highest puzzle exact accuracy every trained arm reaches at one of its evaluated checkpoints; NaN
    when that is no more than the base's (some arm never learned anything)."""
    trained = curve[curve.arm != "base"]
    if trained.empty:
        return math.nan
    level = float(trained.groupby("arm").puzzle_exact.max().min())
    base = trained[trained.step == 0].puzzle_exact
    return level if len(base) and level > float(base.max()) else math.nan


def forgetting_at_level(curve: pd.DataFrame, level: float) -> dict[str, float]:
    """Per trained arm, the forgetting where its puzzle accuracy first reaches level (see at_level)."""
    return {arm: values["forgetting"] for arm, values in at_level(curve, level, ("forgetting",)).items()}


def summary(
    study_id: str, base: dict, finals: list[dict], curve: pd.DataFrame | None = None, level: float = 0.6
) -> dict:
    """For base and each arm's final model: puzzle_exact, prior_mean, mean_forgetting (mean over prior
    benchmarks of base - score; positive = forgotten), format_collapse (share of prior answers out of format);
    with the curves, each arm's at_accuracy(curve, level) too, and `forgetting_at_common`: its forgetting at
    `common_accuracy`, the highest puzzle accuracy every arm reaches (arms matched on skill even when some
    never reach level)."""
    frame = benchmark_frame([base, *finals])
    base_prior = frame[(frame.arm == "base") & (frame.kind == "prior")].set_index("benchmark").value
    arms = {}
    for rec in sorted([base, *finals], key=lambda r: arm_order(r["arm"])):
        rows = frame[(frame.arm == rec["arm"]) & (frame.step == rec["step"])]
        prior = rows[rows.kind == "prior"].set_index("benchmark")
        puzzle = rows[rows.kind == "puzzle"]
        arms[rec["arm"]] = {
            "step": int(rec["step"]),
            "puzzle_exact": float(puzzle.value.iloc[0]) if len(puzzle) else math.nan,
            "prior_mean": float(prior.value.mean()),
            "mean_forgetting": float((base_prior - prior.value).dropna().mean()),
            "format_collapse": format_collapse(prior),
        }
    out = {"study_id": study_id, "arms": arms, "matched_accuracy": level}
    if curve is not None:
        for arm, values in at_accuracy(curve, level).items():
            if arm in arms:
                arms[arm].update(values)
        out["common_accuracy"] = common_accuracy(curve)
        for arm, value in forgetting_at_level(curve, out["common_accuracy"]).items():
            if arm in arms:
                arms[arm]["forgetting_at_common"] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# Several seeds: mean and 95% confidence interval of every number, from each seed's report


def mean_ci(values: list[float], bounds: tuple[float, float] | None = None) -> dict:
    """Mean, half-width of the 95% t-interval (nan for one value), the interval itself (`low`, `high`, cut to
    bounds: an accuracy's interval stays in [0, 1]), how many values it rests on (`n`, NaN left out: a seed
    that never reached a level) and the values themselves."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    out = {"mean": math.nan, "ci95": math.nan, "low": math.nan, "high": math.nan, "n": len(clean), "values": values}
    if not clean:
        return out
    out["mean"] = mean = sum(clean) / len(clean)
    if len(clean) >= 2:
        from scipy.stats import t

        sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1))
        out["ci95"] = float(t.ppf(0.975, len(clean) - 1)) * sd / math.sqrt(len(clean))
        low, high = bounds or (-math.inf, math.inf)
        out["low"], out["high"] = max(low, mean - out["ci95"]), min(high, mean + out["ci95"])
    return out


def over_seeds(
    frames: dict[int, pd.DataFrame], keys: list[str], columns: list[str], bounds: dict[str, tuple] | None = None
) -> pd.DataFrame:
    """Rows of every seed's table grouped by keys: per column its mean, the 95% CI half-width (`<col>_ci95`) and
    the interval cut to the column's bounds (`<col>_low`, `<col>_high`), and the seed count."""
    table = pd.concat([f.assign(seed=s) for s, f in frames.items()], ignore_index=True)
    rows = []
    for key, group in table.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for column in columns:
            stats = mean_ci(group[column].astype(float).tolist(), (bounds or {}).get(column))
            row[column], row[f"{column}_ci95"] = stats["mean"], stats["ci95"]
            row[f"{column}_low"], row[f"{column}_high"] = stats["low"], stats["high"]
        row["seeds"] = group.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


# What a number can be: accuracies and shares lie in [0, 1], forgetting (a difference of two) in [-1, 1].
SHARE, DIFFERENCE, COUNT = (0.0, 1.0), (-1.0, 1.0), (0.0, math.inf)
BOUNDS = {
    "puzzle_exact": SHARE,
    "prior_mean": SHARE,
    "base": SHARE,
    "score": SHARE,
    "format_collapse": SHARE,
    "format_collapse_at_matched": SHARE,
    "mean_forgetting": DIFFERENCE,
    "forgetting": DIFFERENCE,
    "delta": DIFFERENCE,
    "forgetting_at_matched": DIFFERENCE,
    "forgetting_at_common": DIFFERENCE,
    "steps_to_matched": COUNT,
    "data_nll": COUNT,
    "data_nll_reasoning": COUNT,
    "data_nll_answer": COUNT,
}

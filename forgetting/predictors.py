"""What tracks forgetting, checkpoint by checkpoint: the learning-dynamics table and how well each candidate
predictor explains forgetting across every evaluated checkpoint of every arm.

Predictors, one value per checkpoint (forgetting/evaluation.py measures them):
- forward_kl: E_x[KL(pi_base || pi_ckpt)] on held-out puzzle prompts, from answers sampled by the base (RL's
  Razor's predictor: Shenfeld, Pari, Agrawal 2025);
- reverse_kl: E_x[KL(pi_ckpt || pi_base)], from answers sampled by the checkpoint;
- data_nll: the base model's NLL per token of the data the arm had trained on by that checkpoint (the paper's
  "distance of the training data from the base");
- param_distance: relative L2 distance of the weights from the base's;
- prior_logprob_change: change of the log-probability of the held-out prior answers (the paper's probe).
For each, the R² of a quadratic fit of forgetting on it (RL's Razor's measure) and Spearman's rho with a 95%
interval; with fewer than MIN_DISTINCT distinct values on either side, "not enough points" instead.
"""

import math

import numpy as np
import pandas as pd

MIN_DISTINCT = 5  # a rank correlation or a quadratic fit needs this many distinct values on each side
PREDICTORS = {  # name -> column of the dynamics table
    "forward_kl": "forward_kl",
    "reverse_kl": "reverse_kl",
    "data_nll": "data_nll",
    "param_distance": "param_relative",
    "prior_logprob_change": "logprob_change",
}


def _pairs(x: list[float], y: list[float]) -> list[tuple[float, float]]:
    return [(a, b) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]


def _enough(pairs: list[tuple[float, float]]) -> bool:
    return min(len({a for a, _ in pairs}), len({b for _, b in pairs})) >= MIN_DISTINCT


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side holds fewer than MIN_DISTINCT
    distinct values: over 4 checkpoints, or over one number per arm copied to its checkpoints, a rank
    correlation says which points are which, not whether one quantity tracks the other."""
    pairs = _pairs(x, y)
    if not _enough(pairs):
        return math.nan
    xs, ys = pd.Series([p[0] for p in pairs]).rank(), pd.Series([p[1] for p in pairs]).rank()
    return float(xs.corr(ys))


def spearman_interval(rho: float, n: int) -> tuple[float, float]:
    """95% interval of a Spearman rho over n points: Fisher's z with the variance 1.06 / (n - 3) of Fieller,
    Hartley and Pearson (1957)."""
    if math.isnan(rho) or n < 4:
        return math.nan, math.nan
    z, half = math.atanh(max(-0.999999, min(0.999999, rho))), 1.96 * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def quadratic_r2(x: list[float], y: list[float]) -> float:
    """R² of the least-squares quadratic y ~ a + b x + c x² (nan with too few distinct points)."""
    pairs = _pairs(x, y)
    if not _enough(pairs):
        return math.nan
    xs, ys = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    fitted = np.polyval(np.polyfit(xs, ys, 2), xs)
    total = float(((ys - ys.mean()) ** 2).sum())
    return 1.0 - float(((ys - fitted) ** 2).sum()) / total if total else math.nan


def predictors(table: pd.DataFrame) -> dict[str, dict]:
    """Per predictor, over the checkpoints of table (a dynamics table, one seed's or pooled): points, r2,
    spearman and its interval; r2 and spearman are NaN when the points cannot support them."""
    out = {}
    for name, column in PREDICTORS.items():
        x = table[column].astype(float).tolist() if column in table else [math.nan] * len(table)
        y = table.forgetting.astype(float).tolist()
        points, rho = len(_pairs(x, y)), spearman(x, y)
        low, high = spearman_interval(rho, points)
        out[name] = {
            "points": points,
            "r2": quadratic_r2(x, y),
            "spearman": rho,
            "spearman_low": low,
            "spearman_high": high,
        }
    return out


def data_sample(steps: list[int], n: int) -> list[tuple[int, float]]:
    """Which of an arm's training examples the base scores (their training steps in file order, -1 for data
    drawn at every step), at most n, each with its weight: how many examples of its stratum it stands for. The
    strata double in length (steps 0, 1, 2-3, 4-7, ...; examples without a step are one stratum). Half of n at
    most buys every stratum the same few examples (all it has, if fewer), so that the data an early checkpoint had
    seen are not left to a handful; the rest goes to the strata by their size. Within a stratum the examples are
    evenly spaced over all of it (the middle of each of equal parts)."""
    strata: dict[int, list[int]] = {}
    for i, step in enumerate(steps):
        strata.setdefault(step.bit_length() if step >= 0 else -1, []).append(i)
    least = {k: min(len(members), n // (2 * len(strata))) for k, members in strata.items()}
    rest = n - sum(least.values())
    picked = []
    for k, members in strata.items():
        take = min(len(members), least[k] + rest * len(members) // len(steps))
        picked += [(members[(2 * i + 1) * len(members) // (2 * take)], len(members) / take) for i in range(take)]
    return sorted(picked)


def weighted_per_token(rows: list[tuple[float, list[float]]]) -> float:
    """NLL per token of examples given as (weight, their tokens' log-probabilities), each token counted weight
    times; NaN without tokens."""
    tokens = sum(w * len(logprobs) for w, logprobs in rows)
    return -sum(w * sum(logprobs) for w, logprobs in rows) / tokens if tokens else math.nan


def weighted_mean(weights: list[float], values: list[float]) -> float:
    """The values' mean, each counted its weight."""
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def data_nll_at(entry: dict, step: int) -> float:
    """The base's NLL per token of the data an arm had trained on by `step`: its scored examples recorded before
    step (RFT's rollouts carry the step that sampled them; SFT data, drawn uniformly every step, have none and
    always count), each counted its weight (data_sample; 1 in records from before weights). Falls back to the
    arm's one overall number when per-example values are missing."""
    rows = [r for r in entry.get("per_example", []) if r.get("step", -1) < step]
    tokens = sum(r.get("weight", 1.0) * r["tokens"] for r in rows)
    if not tokens:
        return float(entry.get("nll_per_token", math.nan)) if not entry.get("per_example") else math.nan
    return sum(r.get("weight", 1.0) * r["nll"] for r in rows) / tokens


def dynamics(curve: pd.DataFrame, data_nll: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """Per (arm, step) after step 0: forgetting beside every predictor (and the data's perplexity); and how well
    each predictor explains forgetting across the checkpoints (`predictors`), with the two the report has
    always named (data NLL, parameter distance) as Spearman rhos and a sentence."""
    columns = ["arm", "step", "forgetting", "param_l2", "param_relative", "logprob_change", "forward_kl", "reverse_kl"]
    table = curve[curve.step > 0][[c for c in columns if c in curve]].copy()
    table["data_nll"] = [data_nll_at(data_nll.get(a, {}), s) for a, s in zip(table.arm, table.step, strict=True)]
    table["data_ppl"] = table.data_nll.map(lambda v: math.exp(v) if not math.isnan(v) else math.nan)
    table = table.reset_index(drop=True)
    found = predictors(table)
    rho_data, rho_params = found["data_nll"]["spearman"], found["param_distance"]["spearman"]
    findings = {
        "points": len(table),
        "spearman_forgetting_vs_data_nll": rho_data,
        "spearman_forgetting_vs_param_distance": rho_params,
        "data_nll": {a: v.get("nll_per_token") for a, v in data_nll.items()},
        "statement": explain(rho_data, rho_params, len(table)),
    }
    return table, findings


def explain(rho_data: float, rho_params: float, points: int) -> str:
    """The dynamics result in one plain sentence, whatever it is."""

    def fmt(r: float) -> str:
        return "not enough distinct points to rank" if math.isnan(r) else f"{r:+.2f}"

    if math.isnan(rho_data) and math.isnan(rho_params):
        return (
            f"Not enough points to rank forgetting against either measure ({points} arm checkpoints; a rank "
            f"correlation needs {MIN_DISTINCT} distinct values on each side)."
        )
    better = "neither"
    if not math.isnan(rho_data) and (math.isnan(rho_params) or abs(rho_data) > abs(rho_params)):
        better = "the base model's NLL of the training data"
    elif not math.isnan(rho_params) and (math.isnan(rho_data) or abs(rho_params) > abs(rho_data)):
        better = "the parameter distance from the base"
    return (
        f"Across {points} arm checkpoints, forgetting has Spearman rho {fmt(rho_data)} with the base model's NLL of "
        f"the arm's training data and {fmt(rho_params)} with the relative parameter distance from the base; "
        f"{better} ranks forgetting better here."
    )


def predictor_rows(found: dict[str, dict]) -> pd.DataFrame:
    """The predictors as a table for the report: R², rho and its interval, or 'not enough points'."""
    rows = []
    for name, v in found.items():
        enough = not math.isnan(v["spearman"])
        rows.append(
            {
                "predictor": name,
                "checkpoints": v["points"],
                "r2 (quadratic)": f"{v['r2']:.3f}" if enough else "not enough points",
                "spearman": f"{v['spearman']:+.3f}" if enough else "not enough points",
                "95% interval": f"[{v['spearman_low']:+.2f}, {v['spearman_high']:+.2f}]" if enough else "",
            }
        )
    return pd.DataFrame(rows)

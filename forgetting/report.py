"""The report folder of a study, <output>/<study-id>/report/: summary.json, forgetting.csv, curves.csv,
dynamics.csv, report.md and three plots, for one seed (write_report) or over seeds (aggregate_reports). The
numbers come from forgetting/metrics.py.
"""

import itertools
import json
import math
from pathlib import Path

import pandas as pd

from forgetting.data_report import (
    DATA_METRICS,
    sources_by_seed,
    stopped_arms,
    training_data_markdown,
    training_data_summary,
)
from forgetting.metrics import (
    BOUNDS,
    arm_order,
    curves,
    forgetting_at_level,
    forgetting_table,
    mean_ci,
    over_seeds,
    read_evaluation,
    summary,
)
from forgetting.predictors import PREDICTORS, dynamics, predictor_rows, predictors
from forgetting.tables import markdown_table  # noqa: F401 - the reports' one table format


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _errors(rows: pd.DataFrame, column: str) -> list[list[float]]:
    """Asymmetric error bars from a several-seed table's `<column>_low` / `_high` (intervals cut to the
    column's bounds, so an accuracy's bar never runs past 0 or 1)."""
    below = (rows[column] - rows[f"{column}_low"]).fillna(0.0)
    above = (rows[f"{column}_high"] - rows[column]).fillna(0.0)
    return [below.tolist(), above.tolist()]


def plot_tradeoff(curve: pd.DataFrame, path: Path, spread: bool = False) -> Path:
    """Puzzle accuracy against prior-knowledge accuracy along training, a line per arm; spread: error bars
    from the 95% intervals of a several-seed curve."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for arm, group in curve.groupby("arm", sort=False):
        group = group.sort_values("step")
        if spread:
            ax.errorbar(
                group.puzzle_exact, group.prior_mean, xerr=_errors(group, "puzzle_exact"),
                yerr=_errors(group, "prior_mean"), marker="o", capsize=2, label=arm,
            )  # fmt: skip
        else:
            ax.plot(group.puzzle_exact, group.prior_mean, marker="o", label=arm)
        last = group.iloc[-1]
        ax.annotate(f"{int(last.step)}", (last.puzzle_exact, last.prior_mean), fontsize=7)
    first = curve.sort_values("step").iloc[0]
    ax.scatter([first.puzzle_exact], [first.prior_mean], color="black", zorder=3, label="base")
    ax.set_xlabel("puzzle exact accuracy (test split)")
    ax.set_ylabel("prior-knowledge accuracy (mean of held-out benchmarks)")
    ax.set_title("Learning vs forgetting along training")
    legend(ax)
    return save_figure(fig, path)


def plot_forgetting(table: pd.DataFrame, path: Path, spread: str = "+-1 s.e.") -> Path:
    plt = pyplot()
    prior = table[table.kind == "prior"]
    benchmarks = list(dict.fromkeys(prior.benchmark))
    arms = list(dict.fromkeys(prior.arm))
    fig, ax = plt.subplots(figsize=(max(6, len(benchmarks) * 0.9), 4))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        rows = prior[prior.arm == arm].set_index("benchmark").reindex(benchmarks)
        xs = [j + i * width for j in range(len(benchmarks))]
        errors = _errors(rows, "delta") if "delta_low" in rows else rows.stderr
        ax.bar(xs, rows.delta, width, yerr=errors, label=arm, capsize=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(benchmarks))])
    ax.set_xticklabels([b.removeprefix("tiny_world_") for b in benchmarks], rotation=30, ha="right")
    ax.set_ylabel("score - base (below 0: forgotten)")
    ax.set_title(f"Forgetting per benchmark (final models, {spread})")
    legend(ax)
    return save_figure(fig, path)


def plot_dynamics(table: pd.DataFrame, path: Path) -> Path:
    """Forgetting against each predictor, every checkpoint a point, coloured by arm."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PREDICTORS), figsize=(3.2 * len(PREDICTORS), 3.6), sharey=True)
    for arm, group in table.groupby("arm", sort=False):
        for ax, column in zip(axes, PREDICTORS.values(), strict=True):
            if column in group:
                ax.scatter(group[column], group.forgetting, label=arm, s=14)
    for ax, name in zip(axes, PREDICTORS, strict=True):
        ax.set_xlabel(name)
        ax.axhline(0, color="black", linewidth=0.6)
    axes[0].set_ylabel("forgetting (base - prior mean)")
    legend(axes[-1])
    fig.suptitle("What tracks forgetting (every checkpoint)")
    return save_figure(fig, path)


def legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing to label when only the base was evaluated
        ax.legend()


def summary_frame(summary_: dict) -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, **values} for arm, values in summary_["arms"].items()])


def forgetting_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """arm x benchmark deltas (the table the CLI prints)."""
    pivot = table.pivot(index="benchmark", columns="arm", values="delta")
    pivot = pivot[[a for a in sorted(pivot.columns, key=arm_order)]]
    pivot.index = [b.removeprefix("tiny_world_") for b in pivot.index]
    return pivot.reset_index(names="benchmark")


def write_report(
    out: Path,
    study_id: str,
    records: list[dict],
    samples: dict[tuple[str, int], list[dict]],
    data_nll: dict[str, dict],
    final_steps: dict[str, int],
    matched_accuracy: float = 0.6,
    skipped: dict[str, str] | None = None,
) -> dict:
    """Fill out (the study's report/ folder): summary.json, forgetting.csv, curves.csv, dynamics.csv,
    report.md and the three plots; skipped: the arms asked for and not trained, with the reason (summary.json
    `skipped`, named at the top of report.md). Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    by_key = {(r["arm"], r["step"]): r for r in records}
    base = by_key[("base", 0)]
    finals = [by_key[(arm, step)] for arm, step in final_steps.items() if arm != "base" and (arm, step) in by_key]
    curve = curves(records)
    summary_ = summary(study_id, base, finals, curve, matched_accuracy)
    table = forgetting_table(base, finals, samples)
    dyn, findings = dynamics(curve, data_nll)
    summary_["dynamics"] = findings
    summary_["predictors"] = predictors(dyn)
    summary_["skipped"] = dict(skipped or {})
    summary_["training_data"] = training_data_summary(data_nll)
    summary_["stopped"] = stopped_arms(summary_["training_data"])
    for arm, values in summary_["training_data"].items():
        if arm in summary_["arms"]:
            summary_["arms"][arm].update({m: values[m] for m in DATA_METRICS})
    (out / "summary.json").write_text(json.dumps(without_nan(summary_), indent=1) + "\n")
    table.to_csv(out / "forgetting.csv", index=False)
    curve.to_csv(out / "curves.csv", index=False)
    dyn.to_csv(out / "dynamics.csv", index=False)
    plot_tradeoff(curve, out / "tradeoff.png")
    plot_forgetting(table, out / "forgetting.png")
    plot_dynamics(dyn, out / "dynamics.png")
    (out / "report.md").write_text(report_markdown(summary_, table, findings))
    return summary_


def report_from_evaluations(
    out: Path,
    study_id: str,
    evaluations: list[Path],
    data_nll: dict,
    final_steps: dict,
    matched_accuracy: float,
    skipped: dict[str, str] | None = None,
) -> dict:
    """write_report from evaluation folders (forgetting/evaluation.py:evaluate_target writes them)."""
    records, samples = [], {}
    for folder in evaluations:
        record, items = read_evaluation(folder)
        samples[(record["arm"], record["step"])] = items
        records.append(record)
    return write_report(out, study_id, records, samples, data_nll, final_steps, matched_accuracy, skipped)


def report_markdown(summary_: dict, table: pd.DataFrame, findings: dict) -> str:
    return (
        f"## Study {summary_['study_id']}\n\n"
        + arms_note("skipped", summary_.get("skipped"))
        + arms_note("stopped", summary_.get("stopped"))
        + "Final models. `mean_forgetting` = mean over prior benchmarks of (base - score): positive means forgotten. "
        + _matched_note(summary_["matched_accuracy"], _number(summary_.get("common_accuracy", math.nan)))
        + markdown_table(summary_frame(summary_))
        + "\n### Forgetting per benchmark (score - base)\n\n"
        + markdown_table(forgetting_pivot(table))
        + training_data_markdown(summary_["training_data"])
        + f"\n### Learning dynamics\n\n{findings['statement']}\n\n"
        + PREDICTORS_NOTE
        + markdown_table(predictor_rows(summary_["predictors"]))
        + "\n![trade-off](tradeoff.png) ![forgetting](forgetting.png) ![dynamics](dynamics.png)\n"
    )


PREDICTORS_NOTE = (
    "What predicts forgetting, over every evaluated checkpoint: R² of a quadratic fit of forgetting on the "
    "predictor, and Spearman's rho with its 95% interval. forward_kl / reverse_kl: KL between base and checkpoint "
    "on held-out puzzle prompts; data_nll: the base's NLL per token of the data trained on by then; "
    "param_distance: relative distance of the weights; prior_logprob_change: change of the log-probability of the "
    "held-out prior answers.\n\n"
)


def skipped_reasons(skipped: dict | None) -> dict[str, str]:
    """Skipped or stopped arms (arm -> reason, or -> {seed: reason}) as arm -> one line of reasons."""
    return {
        arm: "; ".join(f"seed {s}: {r}" for s, r in why.items()) if isinstance(why, dict) else why
        for arm, why in (skipped or {}).items()
    }


NOTES = {
    "skipped": "**Skipped arms** (asked for, not in this report)",
    "stopped": "**Stopped arms** (a round kept no answer to train on: the arm ended there, and its final model, "
    "shown at the arm's last step, is the model it stopped at)",
}


def arms_note(kind: str, arms: dict | None) -> str:
    """The report's line on the arms skipped (asked for and missing) or stopped (ended before their last step):
    arm -> reason, or -> {seed: reason}."""
    if not arms:
        return ""
    reasons = "; ".join(f"`{arm}`: {why}" for arm, why in skipped_reasons(arms).items())
    return f"{NOTES[kind]}: {reasons}.\n\n"


def _matched_note(level: float, common: str) -> str:
    return (
        f"`steps_to_matched`: the step where puzzle exact accuracy first reaches {level:g}; "
        "`forgetting_at_matched`, `format_collapse_at_matched`: there (empty: never reached). "
        f"`forgetting_at_common`: forgetting where the arm's curve first reaches {common}, the highest puzzle "
        "accuracy every arm reaches. All interpolated linearly between the evaluated checkpoints around the "
        "crossing (the base is every arm's step 0).\n\n"
    )


NO_COMMON_LEVEL = "no level above the base's"


def _number(value: float | None, digits: int = 3) -> str:
    return NO_COMMON_LEVEL if value is None or math.isnan(value) else f"{value:.{digits}f}"


def without_nan(obj):
    """obj with every NaN float as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [without_nan(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


LEVEL_METRICS = ("steps_to_matched", "forgetting_at_matched", "format_collapse_at_matched", "forgetting_at_common")
SEED_METRICS = ("puzzle_exact", "prior_mean", "mean_forgetting", "format_collapse", *LEVEL_METRICS, *DATA_METRICS)
RHO = ("spearman_forgetting_vs_data_nll", "spearman_forgetting_vs_param_distance")


def aggregate_reports(out: Path, study_id: str, reports: dict[int, Path]) -> dict:
    """The report of a several-seed study from each seed's report folder: summary.json (per arm and metric:
    mean, 95% interval cut to the metric's bounds, how many seeds it rests on, values by seed), forgetting.csv,
    curves.csv and dynamics.csv with mean and interval columns, report.md and plots showing the spread.

    Arms are compared at one common puzzle accuracy for every seed: the lowest of the seeds' own common levels
    (the highest accuracy every arm reaches in that seed), each seed's forgetting read off its curves there."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = {s: json.loads((Path(r) / "summary.json").read_text()) for s, r in reports.items()}
    read = {
        name: {s: pd.read_csv(Path(r) / f"{name}.csv") for s, r in reports.items()}
        for name in ("forgetting", "curves", "dynamics")
    }
    seeds = list(summaries)
    by_seed = [_nan(summaries[s].get("common_accuracy")) for s in seeds]
    level = math.nan if any(math.isnan(v) for v in by_seed) else min(by_seed)
    at_common = {s: forgetting_at_level(read["curves"][s], level) for s in seeds}
    arms = list(dict.fromkeys(arm for s in summaries.values() for arm in s["arms"]))

    def values(arm: str, metric: str) -> list[float]:
        if metric == "forgetting_at_common":
            return [at_common[s].get(arm, math.nan) for s in seeds]
        return [_nan(summaries[s]["arms"].get(arm, {}).get(metric)) for s in seeds]

    summary_ = {
        "study_id": study_id,
        "seeds": seeds,
        "seed_studies": {s: summaries[s]["study_id"] for s in seeds},
        "matched_accuracy": summaries[seeds[0]].get("matched_accuracy", math.nan),
        "common_accuracy": level,
        "common_accuracy_by_seed": by_seed,
        "arms": {arm: {m: mean_ci(values(arm, m), BOUNDS[m]) for m in SEED_METRICS} for arm in arms},
        "dynamics": {k: mean_ci([_nan(summaries[s]["dynamics"][k]) for s in seeds], (-1.0, 1.0)) for k in RHO},
        "skipped": {},
        "stopped": {},
        "training_data": {s: summaries[s].get("training_data", {}) for s in seeds},
    }
    for s, kind in itertools.product(seeds, ("skipped", "stopped")):  # arm -> {seed: reason}
        for arm, reason in summaries[s].get(kind, {}).items():
            summary_[kind].setdefault(arm, {})[s] = reason
    table = over_seeds(read["forgetting"], ["arm", "benchmark", "kind"], ["base", "score", "delta"], BOUNDS)
    columns = ["puzzle_exact", "prior_mean", "forgetting", "format_collapse"]
    curve = over_seeds(read["curves"], ["arm", "step"], columns, BOUNDS)
    dyn = pd.concat([f.assign(seed=s) for s, f in read["dynamics"].items()], ignore_index=True)
    summary_["predictors"] = predictors(dyn)  # pooled over every checkpoint of every seed
    (out / "summary.json").write_text(json.dumps(without_nan(summary_), indent=1) + "\n")
    table.to_csv(out / "forgetting.csv", index=False)
    curve.to_csv(out / "curves.csv", index=False)
    dyn.to_csv(out / "dynamics.csv", index=False)
    plot_tradeoff(curve, out / "tradeoff.png", spread=True)
    plot_forgetting(table, out / "forgetting.png", spread="95% CI over seeds")
    plot_dynamics(dyn, out / "dynamics.png")
    (out / "report.md").write_text(aggregate_markdown(summary_, table))
    return summary_


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def interval(stats: dict, digits: int = 3, of: int | None = None) -> str:
    """`mean [low, high]` (the 95% interval cut to the metric's bounds), `(n/N)` after it when only n of N seeds
    count (the others never reached the level); empty when no seed has a value."""
    if math.isnan(_nan(stats["mean"])):
        return f"(0/{of})" if of else ""
    text = f"{stats['mean']:.{digits}f}"
    if not math.isnan(_nan(stats["low"])):
        text += f" [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"
    return text + (f" ({stats['n']}/{of})" if of and stats["n"] < of else "")


def aggregate_markdown(summary_: dict, table: pd.DataFrame) -> str:
    seeds = len(summary_["seeds"])
    rows = [
        {
            "arm": arm,
            **{
                m: interval(
                    v, 0 if m.startswith("steps") else 3, seeds if m in LEVEL_METRICS and arm != "base" else None
                )
                for m, v in values.items()
            },
        }
        for arm, values in summary_["arms"].items()
    ]
    cells = [
        interval({"mean": d, "low": lo, "high": hi, "n": n}) for d, lo, hi, n in zip(
            table.delta, table.delta_low, table.delta_high, table.seeds, strict=True
        )
    ]  # fmt: skip
    pivot = table.assign(value=cells).pivot(index="benchmark", columns="arm", values="value")
    pivot = pivot[sorted(pivot.columns, key=arm_order)].reset_index()
    rho = summary_["dynamics"]
    return (
        f"## Study {summary_['study_id']} over seeds {summary_['seeds']}\n\n"
        + arms_note("skipped", summary_["skipped"])
        + arms_note("stopped", summary_["stopped"])
        + "Mean [95% interval] over seeds, final models; intervals are cut to what a number can be (accuracies in "
        "[0, 1]). `mean_forgetting` positive means forgotten. "
        + _matched_note(
            summary_["matched_accuracy"], f"{_number(summary_['common_accuracy'])} (one level for every seed)"
        )
        + f"(n/{seeds}) after a number: only n of the {seeds} seeds reached the level; the number is over those.\n\n"
        + markdown_table(pd.DataFrame(rows))
        + "\n### Forgetting per benchmark (score - base)\n\n"
        + markdown_table(pivot)
        + sources_by_seed(summary_["training_data"])
        + "\n### Learning dynamics\n\nSpearman rank correlation, across each seed's arm checkpoints, of forgetting "
        + f"with the base model's NLL of the arm's training data: {_rho(rho[RHO[0]], seeds)}; with the relative "
        + f"parameter distance from the base: {_rho(rho[RHO[1]], seeds)} (mean [95% interval] over seeds; a seed "
        + "whose checkpoints hold too few distinct values to rank does not count).\n\n"
        + PREDICTORS_NOTE.replace("over every evaluated checkpoint", "pooled over every checkpoint of every seed")
        + markdown_table(predictor_rows(summary_["predictors"]))
        + "\n![trade-off](tradeoff.png) ![forgetting](forgetting.png) ![dynamics](dynamics.png)\n"
    )


def _rho(stats: dict, seeds: int) -> str:
    return interval(stats, of=seeds) if stats["n"] else "not enough distinct points to rank in any seed"

"""The study's answer from its evaluations: forgetting deltas, learning curves, learning dynamics, plots,
and the report folder. Plain functions over evaluation records (tasks/evaluation.py writes them); no
model here, and Prefect only in the wrapper at the bottom.

Sign conventions, used everywhere:
- forgetting.csv `delta` = arm score - base score (negative: the arm got worse);
- summary `mean_forgetting` = mean over prior benchmarks of (base - arm), positive meaning forgotten.
"""

import json
import math
from pathlib import Path

import pandas as pd

ARM_ORDER = ("base", "sft", "rft", "rollout_sft")


def _order(arm: str) -> int:
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)


# ---------------------------------------------------------------------------------------------------------
# Tables from evaluation records. A record: {arm, step, benchmarks: [{benchmark, metric, value, stderr, n,
# format_failures}], puzzle_benchmark, answer_logprob: {benchmark: mean}, param_distance: {l2, relative}}.


def read_evaluation(folder: Path) -> tuple[dict, list[dict]]:
    """An evaluation folder (tasks.evaluation.evaluate_target): its record and per-item samples."""
    record = json.loads((folder / "evaluation.json").read_text())
    with open(folder / "samples.jsonl") as f:
        return record, [json.loads(line) for line in f]


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
                    "kind": "puzzle" if b["benchmark"] == rec["puzzle_benchmark"] else "prior",
                }
            )
    return pd.DataFrame(rows)


def format_collapse(prior: pd.DataFrame) -> float:
    """Share of answers outside their benchmark's format, over the prior benchmarks that check formats."""
    failures = prior.format_failures.dropna()
    return float(failures.sum() / prior.n[failures.index].sum()) if len(failures) else math.nan


def curves(records: list[dict]) -> pd.DataFrame:
    """Per (arm, step): puzzle_exact, prior_mean, forgetting (base prior_mean - prior_mean), format_collapse
    (share of prior answers outside their format), parameter distance, and the mean change of held-out
    answer log-probability against the base. The base appears as step 0 of every arm."""
    frame = benchmark_frame(records)
    base = frame[frame.arm == "base"]
    if base.empty:
        raise ValueError("curves need the base model's evaluation")
    base_prior = base[base.kind == "prior"]
    base_logprob = base_prior.set_index("benchmark")["answer_logprob"]
    distance = {(r["arm"], r["step"]): r.get("param_distance") or {} for r in records}
    out = []
    for (arm, step), group in frame.groupby(["arm", "step"]):
        prior = group[group.kind == "prior"]
        puzzle = group[group.kind == "puzzle"]
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
            }
        )
    table = pd.DataFrame(out)
    base_rows, trained = table[table.arm == "base"], table[table.arm != "base"]
    if not trained.empty:  # the base is where every arm starts
        table = pd.concat([trained] + [base_rows.assign(arm=a) for a in trained.arm.unique()], ignore_index=True)
    return _sorted(table)


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    order = table.arm.map(_order)
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
    for rec in sorted(finals, key=lambda r: _order(r["arm"])):
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
                    "kind": "puzzle" if name == rec["puzzle_benchmark"] else "prior",
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


def at_accuracy(curve: pd.DataFrame, level: float) -> dict[str, dict]:
    """Per trained arm, from its evaluated checkpoints: the first step whose puzzle exact accuracy reaches
    level (`steps_to_matched`; how fast the arm learns the task) and the forgetting and format collapse at
    that checkpoint (`forgetting_at_matched`, `format_collapse_at_matched`): arms compared at matched task
    skill rather than at their last step. NaN where an arm never reaches level."""
    out = {}
    for arm, rows in curve[curve.arm != "base"].groupby("arm", sort=False):
        reached = rows[rows.puzzle_exact >= level].sort_values("step")
        first = reached.iloc[0] if len(reached) else None
        out[arm] = {
            "steps_to_matched": math.nan if first is None else int(first.step),
            "forgetting_at_matched": math.nan if first is None else float(first.forgetting),
            "format_collapse_at_matched": math.nan if first is None else float(first.format_collapse),
        }
    return out


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
    """Per trained arm, the forgetting where its puzzle accuracy first reaches level, interpolated linearly
    between the evaluated checkpoints on either side of the crossing (a step that overshoots the level
    would otherwise charge the arm for skill it has beyond it). NaN where the arm never reaches level."""
    out = {}
    for arm, rows in curve[curve.arm != "base"].groupby("arm", sort=False):
        rows = rows.sort_values("step").reset_index(drop=True)
        reached = rows.index[rows.puzzle_exact >= level]
        if math.isnan(level) or not len(reached):
            out[arm] = math.nan
            continue
        i = reached[0]
        if i == 0:
            out[arm] = float(rows.forgetting[0])
            continue
        before, after = rows.iloc[i - 1], rows.iloc[i]
        share = (level - before.puzzle_exact) / (after.puzzle_exact - before.puzzle_exact)
        out[arm] = float(before.forgetting + share * (after.forgetting - before.forgetting))
    return out


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
    for rec in sorted([base, *finals], key=lambda r: _order(r["arm"])):
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
# Learning dynamics


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan with fewer than 3 points or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan
    xs, ys = pd.Series([p[0] for p in pairs]).rank(), pd.Series([p[1] for p in pairs]).rank()
    if xs.std() == 0 or ys.std() == 0:
        return math.nan
    return float(xs.corr(ys))


def dynamics(curve: pd.DataFrame, data_nll: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """Per (arm, step) after step 0: forgetting beside the base model's per-token NLL (and perplexity) of the
    arm's training data, the parameter distance and the answer log-probability change; and how well each
    of data NLL and parameter distance ranks forgetting across arms and checkpoints (Spearman)."""
    table = curve[curve.step > 0][["arm", "step", "forgetting", "param_l2", "param_relative", "logprob_change"]].copy()
    table["data_nll"] = table.arm.map(lambda a: data_nll.get(a, {}).get("nll_per_token", math.nan))
    table["data_ppl"] = table.data_nll.map(lambda v: math.exp(v) if not math.isnan(v) else math.nan)
    points = len(table)
    rho_data = spearman(table.data_nll.tolist(), table.forgetting.tolist())
    rho_params = spearman(table.param_relative.tolist(), table.forgetting.tolist())
    findings = {
        "points": points,
        "spearman_forgetting_vs_data_nll": rho_data,
        "spearman_forgetting_vs_param_distance": rho_params,
        "data_nll": {a: v.get("nll_per_token") for a, v in data_nll.items()},
        "statement": explain(rho_data, rho_params, points),
    }
    return table.reset_index(drop=True), findings


def explain(rho_data: float, rho_params: float, points: int) -> str:
    """The dynamics result in one plain sentence, whatever it is."""

    def fmt(r: float) -> str:
        return "undefined" if math.isnan(r) else f"{r:+.2f}"

    if math.isnan(rho_data) and math.isnan(rho_params):
        return f"Too few points ({points}) with variation to rank forgetting against either measure."
    better = "neither"
    if not math.isnan(rho_data) and (math.isnan(rho_params) or abs(rho_data) > abs(rho_params)):
        better = "the base model's NLL of the training data"
    elif not math.isnan(rho_params) and (math.isnan(rho_data) or abs(rho_params) > abs(rho_data)):
        better = "the parameter distance from the base"
    return (
        f"Across {points} arm checkpoints, forgetting has Spearman rho {fmt(rho_data)} with the base model's NLL of "
        f"each arm's training data and {fmt(rho_params)} with the relative parameter distance from the base; "
        f"{better} ranks forgetting better here."
    )


# ---------------------------------------------------------------------------------------------------------
# Plots and the report folder


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_tradeoff(curve: pd.DataFrame, path: Path, spread: bool = False) -> Path:
    """Puzzle accuracy against prior-knowledge accuracy along training, a line per arm; spread: error bars
    from the `*_ci95` columns of a several-seed curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for arm, group in curve.groupby("arm", sort=False):
        group = group.sort_values("step")
        if spread:
            ax.errorbar(
                group.puzzle_exact, group.prior_mean, xerr=group.puzzle_exact_ci95, yerr=group.prior_mean_ci95,
                marker="o", capsize=2, label=arm,
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
    _legend(ax)
    return _save(fig, path)


def plot_forgetting(table: pd.DataFrame, path: Path, spread: str = "+-1 s.e.") -> Path:
    plt = _pyplot()
    prior = table[table.kind == "prior"]
    benchmarks = list(dict.fromkeys(prior.benchmark))
    arms = list(dict.fromkeys(prior.arm))
    fig, ax = plt.subplots(figsize=(max(6, len(benchmarks) * 0.9), 4))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        rows = prior[prior.arm == arm].set_index("benchmark").reindex(benchmarks)
        xs = [j + i * width for j in range(len(benchmarks))]
        ax.bar(xs, rows.delta, width, yerr=rows.stderr, label=arm, capsize=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(benchmarks))])
    ax.set_xticklabels([b.removeprefix("tiny_world_") for b in benchmarks], rotation=30, ha="right")
    ax.set_ylabel("score - base (below 0: forgotten)")
    ax.set_title(f"Forgetting per benchmark (final models, {spread})")
    _legend(ax)
    return _save(fig, path)


def plot_dynamics(table: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for arm, group in table.groupby("arm", sort=False):
        axes[0].scatter(group.data_nll, group.forgetting, label=arm)
        axes[1].scatter(group.param_relative, group.forgetting, label=arm)
    axes[0].set_xlabel("base-model NLL per token of the arm's training data")
    axes[1].set_xlabel("relative parameter distance from base")
    axes[0].set_ylabel("forgetting (base - prior mean)")
    for ax in axes:
        ax.axhline(0, color="black", linewidth=0.6)
    _legend(axes[1])
    fig.suptitle("What tracks forgetting (every checkpoint)")
    return _save(fig, path)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing to label when only the base was evaluated
        ax.legend()


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v, column: str) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return ""
            return f"{v:.0f}" if column.startswith("step") else f"{v:.{digits}f}"  # steps: NaN made them floats
        return "" if v is None else str(v)

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join(
        "| " + " | ".join(cell(v, c) for v, c in zip(row, frame.columns, strict=True)) + " |\n"
        for row in frame.itertuples(index=False)
    )


def summary_frame(summary_: dict) -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, **values} for arm, values in summary_["arms"].items()])


def forgetting_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """arm x benchmark deltas (the table the CLI prints)."""
    pivot = table.pivot(index="benchmark", columns="arm", values="delta")
    pivot = pivot[[a for a in sorted(pivot.columns, key=_order)]]
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
) -> dict:
    """Fill out (the study's report/ folder): summary.json, forgetting.csv, curves.csv, dynamics.csv,
    report.md and the three plots. Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    by_key = {(r["arm"], r["step"]): r for r in records}
    base = by_key[("base", 0)]
    finals = [by_key[(arm, step)] for arm, step in final_steps.items() if arm != "base" and (arm, step) in by_key]
    curve = curves(records)
    summary_ = summary(study_id, base, finals, curve, matched_accuracy)
    table = forgetting_table(base, finals, samples)
    dyn, findings = dynamics(curve, data_nll)
    summary_["dynamics"] = findings
    (out / "summary.json").write_text(json.dumps(without_nan(summary_), indent=1) + "\n")
    table.to_csv(out / "forgetting.csv", index=False)
    curve.to_csv(out / "curves.csv", index=False)
    dyn.to_csv(out / "dynamics.csv", index=False)
    plot_tradeoff(curve, out / "tradeoff.png")
    plot_forgetting(table, out / "forgetting.png")
    plot_dynamics(dyn, out / "dynamics.png")
    (out / "report.md").write_text(report_markdown(summary_, table, findings))
    return summary_


def report_markdown(summary_: dict, table: pd.DataFrame, findings: dict) -> str:
    return (
        f"## Study {summary_['study_id']}\n\n"
        "Final models. `mean_forgetting` = mean over prior benchmarks of (base - score): positive means forgotten. "
        + _matched_note(summary_["matched_accuracy"], _number(summary_.get("common_accuracy", math.nan)))
        + markdown_table(summary_frame(summary_))
        + "\n### Forgetting per benchmark (score - base)\n\n"
        + markdown_table(forgetting_pivot(table))
        + f"\n### Learning dynamics\n\n{findings['statement']}\n\n"
        "![trade-off](tradeoff.png) ![forgetting](forgetting.png) ![dynamics](dynamics.png)\n"
    )


def _matched_note(level: float, common: str) -> str:
    return (
        f"`steps_to_matched`: first evaluated step with puzzle exact accuracy >= {level:g}; "
        "`forgetting_at_matched`, `format_collapse_at_matched`: at that checkpoint (empty: never reached). "
        f"`forgetting_at_common`: forgetting where the arm's curve first reaches {common}, the highest puzzle "
        "accuracy every arm reaches, interpolated linearly between the evaluated checkpoints around it.\n\n"
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


# ---------------------------------------------------------------------------------------------------------
# Prefect wrapper


def report_task(
    out: Path, study_id: str, evaluations: list[Path], data_nll: dict, final_steps: dict, matched_accuracy: float
) -> dict:
    """write_report from evaluation folders, as a Prefect task materializing the report folder with the
    evaluations as its upstream assets."""
    from prefect.assets import materialize

    from assets import report

    def build(
        out: Path, study_id: str, evaluations: list[Path], data_nll: dict, final_steps: dict, matched_accuracy: float
    ) -> dict:
        records, samples = [], {}
        for folder in evaluations:
            record, items = read_evaluation(folder)
            samples[(record["arm"], record["step"])] = items
            records.append(record)
        return write_report(out, study_id, records, samples, data_nll, final_steps, matched_accuracy)

    task = materialize(
        report(out), name="report", asset_deps=[Path(p).resolve().as_uri() for p in evaluations], retries=1
    )
    return task(build)(out, study_id, evaluations, data_nll, final_steps, matched_accuracy)


# ---------------------------------------------------------------------------------------------------------
# Several seeds: mean and 95% confidence interval of every number, from each seed's report


def mean_ci(values: list[float]) -> dict:
    """Mean, half-width of the 95% t-interval (nan for one value) and the values themselves."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"mean": math.nan, "ci95": math.nan, "values": values}
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return {"mean": mean, "ci95": math.nan, "values": values}
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1))
    return {"mean": mean, "ci95": float(t.ppf(0.975, len(clean) - 1)) * sd / math.sqrt(len(clean)), "values": values}


def _over_seeds(frames: dict[int, pd.DataFrame], keys: list[str], columns: list[str]) -> pd.DataFrame:
    """Rows of every seed's table grouped by keys: mean, 95% CI half-width (`<col>_ci95`) and seed count."""
    table = pd.concat([f.assign(seed=s) for s, f in frames.items()], ignore_index=True)
    rows = []
    for key, group in table.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for column in columns:
            stats = mean_ci(group[column].astype(float).tolist())
            row[column], row[f"{column}_ci95"] = stats["mean"], stats["ci95"]
        row["seeds"] = group.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate_reports(out: Path, study_id: str, reports: dict[int, Path]) -> dict:
    """The report of a several-seed study from each seed's report folder: summary.json (per arm and metric:
    mean, ci95, values by seed), forgetting.csv, curves.csv and dynamics.csv with mean and CI columns,
    report.md and plots showing the spread."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = {s: json.loads((Path(r) / "summary.json").read_text()) for s, r in reports.items()}
    seeds = list(summaries)
    metrics = (
        "puzzle_exact",
        "prior_mean",
        "mean_forgetting",
        "format_collapse",
        "steps_to_matched",
        "forgetting_at_matched",
        "format_collapse_at_matched",
        "forgetting_at_common",
    )
    arms = list(dict.fromkeys(arm for s in summaries.values() for arm in s["arms"]))
    summary_ = {
        "study_id": study_id,
        "seeds": seeds,
        "seed_studies": {s: summaries[s]["study_id"] for s in seeds},
        "matched_accuracy": summaries[seeds[0]].get("matched_accuracy", math.nan),
        "common_accuracy": mean_ci([summaries[s].get("common_accuracy", math.nan) for s in seeds]),
        "arms": {
            arm: {m: mean_ci([summaries[s]["arms"].get(arm, {}).get(m, math.nan) for s in seeds]) for m in metrics}
            for arm in arms
        },
    }
    rho = ("spearman_forgetting_vs_data_nll", "spearman_forgetting_vs_param_distance")
    summary_["dynamics"] = {
        k: mean_ci([math.nan if summaries[s]["dynamics"][k] is None else summaries[s]["dynamics"][k] for s in seeds])
        for k in rho
    }
    read = {
        name: {s: pd.read_csv(Path(r) / f"{name}.csv") for s, r in reports.items()}
        for name in ("forgetting", "curves", "dynamics")
    }
    table = _over_seeds(read["forgetting"], ["arm", "benchmark", "kind"], ["base", "score", "delta"])
    curve = _over_seeds(
        read["curves"], ["arm", "step"], ["puzzle_exact", "prior_mean", "forgetting", "format_collapse"]
    )
    dyn = pd.concat([f.assign(seed=s) for s, f in read["dynamics"].items()], ignore_index=True)
    (out / "summary.json").write_text(json.dumps(without_nan(summary_), indent=1) + "\n")
    table.to_csv(out / "forgetting.csv", index=False)
    curve.to_csv(out / "curves.csv", index=False)
    dyn.to_csv(out / "dynamics.csv", index=False)
    plot_tradeoff(curve, out / "tradeoff.png", spread=True)
    plot_forgetting(table.assign(stderr=table.delta_ci95), out / "forgetting.png", spread="95% CI over seeds")
    plot_dynamics(dyn, out / "dynamics.png")
    (out / "report.md").write_text(aggregate_markdown(summary_, table))
    return summary_


def aggregate_markdown(summary_: dict, table: pd.DataFrame) -> str:
    def cell(stats: dict, digits: int = 3) -> str:
        if stats["mean"] is None or math.isnan(stats["mean"]):
            return ""
        ci = stats["ci95"]
        return f"{stats['mean']:.{digits}f}" + ("" if ci is None or math.isnan(ci) else f" ± {ci:.{digits}f}")

    rows = [
        {"arm": arm, **{m: cell(v, 0 if m.startswith("steps") else 3) for m, v in values.items()}}
        for arm, values in summary_["arms"].items()
    ]
    pivot = table.assign(
        value=[
            f"{d:.3f} ± {c:.3f}" if not math.isnan(c) else f"{d:.3f}"
            for d, c in zip(table.delta, table.delta_ci95, strict=True)
        ]
    ).pivot(index="benchmark", columns="arm", values="value")
    pivot = pivot[sorted(pivot.columns, key=_order)].reset_index()
    rho = summary_["dynamics"]
    return (
        f"## Study {summary_['study_id']} over seeds {summary_['seeds']}\n\n"
        "Mean ± 95% CI half-width over seeds, final models; `mean_forgetting` positive means forgotten. "
        + _matched_note(
            summary_["matched_accuracy"], f"{cell(summary_['common_accuracy']) or NO_COMMON_LEVEL} (each seed its own)"
        )
        + "A seed that never reached the level is left out of that column's mean (see summary.json).\n\n"
        + markdown_table(pd.DataFrame(rows))
        + "\n### Forgetting per benchmark (score - base)\n\n"
        + markdown_table(pivot)
        + "\n### Learning dynamics\n\nSpearman rank correlation, across each seed's arm checkpoints, of forgetting "
        + f"with the base model's NLL of the arm's training data: {cell(rho['spearman_forgetting_vs_data_nll'])}; "
        + f"with the relative parameter distance from the base: {cell(rho['spearman_forgetting_vs_param_distance'])} "
        + "(mean ± 95% CI over seeds).\n\n"
        + "![trade-off](tradeoff.png) ![forgetting](forgetting.png) ![dynamics](dynamics.png)\n"
    )


def aggregate_task(out: Path, study_id: str, reports: dict[int, Path]) -> dict:
    """aggregate_reports as a Prefect task materializing the several-seed report, lineage from each seed's."""
    from prefect.assets import materialize

    from assets import report

    deps = [Path(p).resolve().as_uri() for p in reports.values()]
    return materialize(report(out), name="aggregate-seeds", asset_deps=deps)(aggregate_reports)(out, study_id, reports)

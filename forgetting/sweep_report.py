"""A sweep's report folder and page: the frontier statistics of forgetting/sweep.py written as CSV files,
summary.json, plots and report.md."""

import json
from pathlib import Path

import pandas as pd

from forgetting.borrowed import compared_frames, is_borrowed
from forgetting.config import ConfigError, StudyConfig
from forgetting.predictors import PREDICTORS, predictor_rows, predictors
from forgetting.profiles import load_config, write_profile
from forgetting.report import (
    arms_note,
    interval,
    legend,
    markdown_table,
    plot_dynamics,
    pyplot,
    save_figure,
    without_nan,
)
from forgetting.sweep import (
    CAUSES,
    LEVELS,
    against,
    at_frontier,
    at_frontier_against,
    by_point_and_arm,
    differences_from_compared,
    differences_from_first_setting,
    differences_from_rft,
    frontier_levels,
    frontier_points,
    matched,
    setting_frame,
    sweep_id,
    sweep_spec,
    with_borrowed,
)

DIGITS = {"forward_kl": 2, "reverse_kl": 2, "data_nll": 3, "param_distance": 4}  # a cause's digits on the page
SWEEP_TABLES = (  # sweep_tables' names, in their order
    "matched",
    "against_rft",
    "at_frontier",
    "at_frontier_against_rft",
    "against_compared",
    "at_frontier_against_compared",
)


def sweep_tables(per_seed: pd.DataFrame, from_rft: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The comparisons along the frontiers from frontier_levels' rows and differences_from_rft's (`from_rft`), by the
    name of their CSV file and summary.json key: matched (forgetting at matched puzzle accuracy), against_rft (each
    family's forgetting there minus RFT's), at_frontier (the predictors at those frontier checkpoints),
    at_frontier_against_rft (the causes there minus RFT's, seed by seed, and whether they order the two as
    forgetting does), and against_compared and at_frontier_against_compared: the same two for each family against
    those sweep.compare borrows."""
    from_compared = differences_from_compared(per_seed)
    tables = (
        matched(per_seed),
        against(from_rft),
        at_frontier(per_seed),
        at_frontier_against(from_rft),
        against(from_compared),
        at_frontier_against(from_compared),
    )
    return dict(zip(SWEEP_TABLES, tables, strict=True))


SETTING_TABLES = ("settings", "settings_against_first", "at_frontier_settings_against_first")
# every table write_sweep_report writes, each as <name>.csv and summary.json's key of that name, in that order
REPORT_TABLES = (*SWEEP_TABLES, "frontier_points", *SETTING_TABLES)


def setting_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each setting of a family trained at more than one point on a frontier of its own (setting_frame), by the name
    of its CSV file and summary.json key: settings (its forgetting at matched puzzle accuracy), settings_against_first
    (each setting's minus the family's first setting's, seed by seed) and at_frontier_settings_against_first (the
    causes there, as against RFT). Empty tables when every family has one point."""
    settings = setting_frame(frame)
    if settings.empty:
        return {name: pd.DataFrame() for name in SETTING_TABLES}
    per_setting = frontier_levels(settings)
    from_first = differences_from_first_setting(per_setting)
    tables = matched(per_setting), against(from_first), at_frontier_against(from_first)
    return dict(zip(SETTING_TABLES, tables, strict=True))


def write_sweep_report(
    out: Path,
    sweep: str,
    frame: pd.DataFrame,
    overrides: dict[str, dict],
    skipped: dict[str, dict] | None = None,
    stopped: dict[str, dict] | None = None,
    reference: dict | None = None,
    compared: list[dict] | None = None,
) -> dict:
    """<sweep>/report/: frontier.csv (every checkpoint, on_frontier), a CSV file per table of sweep_tables and of
    setting_tables (each setting's own frontier) and frontier_points.csv (which points make up the frontiers),
    summary.json, frontier.png (a panel per arm family), predictors.png (forgetting against each predictor, every
    trained checkpoint), causes.png (plot_causes; only with an RFT family to compare with) and report.md; skipped,
    stopped: noted_arms of the points; reference: where the frame's RFT checkpoints come from when another sweep
    trained them (reference_frame); compared: where its borrowed families come from (compared_frames)."""
    out.mkdir(parents=True, exist_ok=True)
    per_seed = frontier_levels(frame)
    from_rft = differences_from_rft(per_seed)  # the tables' and causes.png's
    tables = sweep_tables(per_seed, from_rft) | {"frontier_points": frontier_points(frame)} | setting_tables(frame)
    # pooled: every trained checkpoint but those of families sweep.compare borrows (each its own sweep's)
    pooled = frame[(frame.step > 0) & ~frame.arm.map(is_borrowed)]
    found = predictors(pooled)
    frame.to_csv(out / "frontier.csv", index=False)
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    summary = {
        "sweep_id": sweep,
        "points": overrides,
        "seeds": sorted(int(s) for s in frame.seed.unique()),
        "checkpoints": len(frame),
        **{name: without_nan(table.to_dict("records")) for name, table in tables.items()},
        "predictors": without_nan(found),
        "skipped": dict(skipped or {}),
        "stopped": dict(stopped or {}),
        **({"reference": reference} if reference else {}),
        **({"compared": compared} if compared else {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_frontiers(frame, out / "frontier.png")
    plot_dynamics(pooled, out / "predictors.png")
    (out / "causes.png").unlink(missing_ok=True)
    plot_causes(from_rft, out / "causes.png")
    (out / "report.md").write_text(sweep_markdown(summary, tables, found))
    return summary


def rewrite_sweep_report(folder: Path, compare: tuple[str, ...] = ()) -> dict:
    """A sweep's report folder (or its published copy) written again by write_sweep_report from its own
    frontier.csv (every checkpoint the sweep evaluated) and summary.json (the sweep id, points, skipped and
    stopped arms): what a change of the report adds, without the sweep running again. compare: more sweep reports
    to compare its families with, as sweep.compare names them (compared_anew): its config.yaml gains them, and the
    report the sweep id of that config. ConfigError, before anything is written, when it is no sweep's report or a
    report to compare with is refused."""
    if not (folder / "frontier.csv").is_file() or not (folder / "summary.json").is_file():
        raise ConfigError(f"{folder} is no sweep report: it needs frontier.csv and summary.json")
    summary = json.loads((folder / "summary.json").read_text())
    frame = pd.read_csv(folder / "frontier.csv", dtype={"arm_key": str, "point": str})  # keys that look like numbers
    sweep, compared, config = summary["sweep_id"], summary.get("compared"), None
    if compare:
        config, frame, compared = compared_anew(folder, frame, compare)
        sweep = sweep_id(config)
    notes = summary.get("skipped"), summary.get("stopped"), summary.get("reference"), compared
    written = write_sweep_report(folder, sweep, frame, summary["points"], *notes)
    if config is not None:  # the profile that reproduces this report, as flows.cli.record_run writes it
        write_profile(sweep_spec(config), folder / "config.yaml")
    return written


def compared_anew(
    folder: Path, frame: pd.DataFrame, compare: tuple[str, ...]
) -> tuple[StudyConfig, pd.DataFrame, list[dict]]:
    """A sweep report's checkpoints (its frontier.csv) compared with the families of more sweep reports afterwards:
    (its config.yaml with those added to sweep.compare, the frame with the families of every report that names
    borrowed anew by compared_frames, their notes). ConfigError when compared_frames refuses one."""
    config = load_config(str(folder / "config.yaml"))
    paths = list(dict.fromkeys([*config.sweep.compare, *compare]))
    config = load_config(str(folder / "config.yaml"), [f"sweep.compare={json.dumps(paths)}"])
    borrowed = compared_frames(config)
    frame = with_borrowed(frame[~frame.arm.map(is_borrowed)], borrowed)
    return config, frame, [other.note for other in borrowed]


def plot_frontiers(frame: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    families = list(dict.fromkeys(frame.arm))
    width = max(4 * len(families), 6.5)  # one family: wide enough for the title
    fig, axes = plt.subplots(1, len(families), figsize=(width, 4), sharex=True, sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], families, strict=True):
        group = frame[frame.arm == arm]
        ax.scatter(group.puzzle_exact, group.prior_mean, s=10, color="lightgray", label="checkpoints")
        for seed, rows in group[group.on_frontier].groupby("seed"):
            rows = rows.sort_values("puzzle_exact")
            ax.plot(rows.puzzle_exact, rows.prior_mean, marker="o", label=f"frontier, seed {seed}")
        ax.set_title(arm)
        ax.set_xlabel("puzzle exact accuracy")
        legend(ax)
    axes[0][0].set_ylabel("prior-knowledge accuracy")
    fig.suptitle("Pareto frontiers: learning the puzzle against keeping what the base knew")
    return save_figure(fig, path)


def plot_causes(differences: pd.DataFrame, path: Path) -> Path | None:
    """differences_from_rft as a panel per cause: each seed's forgetting difference from RFT at a level against
    the cause's difference there, coloured by family, a marker per level. A cause that explains the comparison
    puts the points in the lower left and upper right quarters. None (no file) without an RFT family."""
    if differences.empty:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {arm: cycle[i % len(cycle)] for i, arm in enumerate(dict.fromkeys(differences.arm))}
    markers = dict(zip(LEVELS, "osD^v", strict=True))
    fig, axes = plt.subplots(1, len(CAUSES), figsize=(4 * len(CAUSES), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], CAUSES, strict=True):
        column = PREDICTORS[name]
        for (arm, level), rows in differences.groupby(["arm", "puzzle_level"], sort=False):
            if column in rows:
                ax.scatter(rows[column], rows.forgetting, s=22, color=colours[arm], marker=markers.get(level, "o"))
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"{name}: family - RFT")
    axes[0][0].set_ylabel("forgetting: family - RFT")
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=arm) for arm, c in colours.items()] + [
        Line2D([], [], color="gray", marker=m, linestyle="", label=f"puzzle >= {level}") for level, m in markers.items()
    ]
    axes[0][-1].legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("At the frontier checkpoints, each seed: does a cause order a family and RFT as their forgetting?")
    return save_figure(fig, path)


def level_pivot(table: pd.DataFrame, value: str, count: str, digits: int = 3) -> pd.DataFrame:
    """A table of matched, against_rft or one predictor of at_frontier(_against_rft) as puzzle level by arm
    family, each cell `mean [low, high] (n/N)`, and `, k/n agree` where the table counts agreeing seeds."""
    cells = [
        interval(
            {"mean": row[value], "low": row[f"{value}_low"], "high": row[f"{value}_high"], "n": row[count]},
            digits=digits,
            of=row["seeds"],
        )
        + (f", {row['agree']}/{row[count]} agree" if "agree" in row and row[count] else "")
        for row in table.to_dict("records")
    ]
    return table.assign(cell=cells).pivot(index="puzzle_level", columns="arm", values="cell").reset_index()


def causes_table(table: pd.DataFrame, value: str, count: str) -> pd.DataFrame:
    """at_frontier's or at_frontier_against_rft's causes, each as puzzle level by arm family, one under another,
    the predictor named in the first column."""
    blocks = []
    for name in CAUSES:
        rows = table[table.predictor == name] if len(table) else table
        if len(rows):
            block = level_pivot(rows, value, count, DIGITS[name])
            block.insert(0, "predictor", name)
            blocks.append(block)
    return pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()


def points_section(chosen: pd.DataFrame) -> str:
    """Which points make up the frontiers (frontier_points), a column per family and a row per level: each point
    with the number of seeds whose frontier checkpoint is one of its; empty when every family has one point."""
    if not len(chosen):
        return ""
    cells = chosen.assign(cell=chosen.point + ": " + chosen.n_seeds.astype(str))
    joined = cells.groupby(["puzzle_level", "arm"], sort=False).cell.agg(", ".join).reset_index()
    return (
        "\nWhich settings make up those frontiers, for each family trained at more than one point: at each puzzle "
        "level, the points whose checkpoint is the family's frontier there, with the number of seeds (`base`: the "
        "base model).\n\n"
        + markdown_table(joined.pivot(index="puzzle_level", columns="arm", values="cell").reset_index())
    )


def settings_section(tables: dict[str, pd.DataFrame]) -> str:
    """report.md's frontier of each setting of a family trained at more than one point (setting_tables), and each
    setting against the family's first; empty without such a family."""
    own = tables.get("settings", pd.DataFrame())
    if not len(own):
        return ""
    difference, causes = paired_markdown(tables["settings_against_first"], tables["at_frontier_settings_against_first"])
    return (
        "\nEach setting on a frontier of its own, for each family trained at more than one point (`<family> "
        "<point>`): the least forgetting that point's checkpoints reach at the puzzle level or more, mean [95% "
        "interval] over seeds, (n/N) as above.\n\n"
        + markdown_table(level_pivot(own, "forgetting", "n_reached"))
        + "\nEach setting's forgetting minus the family's first setting's at the same level, seed by seed: positive, "
        "the setting forgets more there; mean [95% interval] over the seeds where both reach the level, (n/N) when "
        "only n of N do.\n\n"
        + difference
        + "\nThe causes at those frontier checkpoints, the setting's minus the first setting's, seed by seed, and "
        "whether each orders the two as their forgetting (k/n agree, as against RFT).\n\n" + causes
    )


def borrowed_note(reference: dict | None, compared: list[dict] | None) -> str:
    """The report's lines on checkpoints other sweeps trained (write_sweep_report's reference and compared); empty
    without."""
    others = ([reference | {"families": ["RFT"]}] if reference else []) + (compared or [])
    if not others:
        return ""
    return (
        "Checkpoints other sweeps trained, each sweep's study this one but for the arms (the same base, puzzles and "
        "evaluation items in each seed), their points named `<its sweep id>:<point>`:\n\n"
        + "".join(
            f"- {', '.join(f'`{f}`' for f in other['families'])}: {other['checkpoints']} checkpoints of sweep "
            f"`{other['sweep_id']}` (its report `{other['report']}`)\n"
            for other in others
        )
        + "\n"
    )


def versus(table: pd.DataFrame) -> pd.DataFrame:
    """A table of against_compared or at_frontier_against_compared with each pair of families as one arm column,
    `<family> - <the other>`, so level_pivot gives each pair a column of its own."""
    return table.assign(arm=table.arm + " - " + table.reference) if len(table) else table


def paired_markdown(contrast: pd.DataFrame, sits_paired: pd.DataFrame) -> tuple[str, str]:
    """One kind of pair's two tables on the page, each pair of families a column (versus): the forgetting
    differences (against's table) and the causes' (at_frontier_against's, with k/n agree)."""
    return (
        markdown_table(level_pivot(versus(contrast), "difference", "n_paired")),
        markdown_table(causes_table(versus(sits_paired), "difference", "n_paired")),
    )


def compared_section(tables: dict[str, pd.DataFrame]) -> str:
    """report.md's comparison of each family with those sweep.compare borrows (tables: sweep_tables); empty
    without."""
    if not len(tables["against_compared"]):
        return ""
    difference, causes = paired_markdown(tables["against_compared"], tables["at_frontier_against_compared"])
    return (
        "\nForgetting along each frontier minus that of the same family trained another way (borrowed from another "
        "sweep, `<family>@<its sweep's name>`) at the same level, seed by seed: positive, this sweep's family "
        "forgets more there; mean [95% interval] over the seeds where both frontiers reach the level, (n/N) when "
        "only n of N do.\n\n"
        + difference
        + "\nThe causes at those frontier checkpoints, seed by seed, the same family's difference, and whether each "
        "orders the two as their forgetting (k/n agree, as against RFT).\n\n" + causes
    )


def sweep_markdown(summary: dict, tables: dict[str, pd.DataFrame], predictors_found: dict) -> str:
    """report.md from summary.json's head, sweep_tables and frontier_points (tables["frontier_points"], where
    given); a comparison with RFT only where the sweep has one."""
    points = "".join(
        f"- `{p}`: {json.dumps(o) if o else 'the profile as it is'}\n" for p, o in summary["points"].items()
    )
    count = len(summary["points"])
    contrast, sits, sits_paired = tables["against_rft"], tables["at_frontier"], tables["at_frontier_against_rft"]
    return (
        f"## Sweep {summary['sweep_id']} over seeds {summary['seeds']}\n\n"
        + arms_note("skipped", by_point_and_arm(summary["skipped"]))
        + arms_note("stopped", by_point_and_arm(summary.get("stopped", {})))
        + f"{count} point{'s' * (count != 1)}, {summary['checkpoints']} distinct checkpoints:\n\n{points}\n"
        + borrowed_note(summary.get("reference"), summary.get("compared"))
        + "Forgetting (base prior mean - prior mean; positive: forgotten) along each arm family's Pareto frontier: the "
        "least forgetting any checkpoint of the family reaches at that puzzle exact accuracy or more, mean [95% "
        "interval] over seeds; (n/N): only n of the N seeds' frontiers reach that accuracy.\n\n"
        + markdown_table(level_pivot(tables["matched"], "forgetting", "n_reached"))
        + points_section(tables.get("frontier_points", pd.DataFrame()))
        + settings_section(tables)
        + (
            "\nForgetting along each frontier minus RFT's at the same level, seed by seed (each seed's arms share "
            "its puzzles and evaluation items): positive, the family forgets more than RFT there; mean [95% "
            "interval] over the seeds where both frontiers reach the level, (n/N) when only n of N do.\n\n"
            + markdown_table(level_pivot(contrast, "difference", "n_paired"))
            if len(contrast)
            else ""
        )
        + (
            "\nWhere the frontiers sit: each predictor at the checkpoint that makes up a family's frontier at a "
            "puzzle level (its least forgetting there), mean [95% interval] over the seeds that reach the level. "
            "A measure that explains why one family forgets more than another at matched accuracy should order "
            "them here as the first table orders their forgetting.\n\n"
            + markdown_table(causes_table(sits, "value", "n_reached"))
            if len(sits)
            else ""
        )
        + (
            "\nThe same, seed by seed: each predictor at a family's frontier checkpoint minus at RFT's, mean [95% "
            "interval] over the seeds where both have it, then k/n agree: in k of those n seeds the predictor's "
            "difference has the sign of the forgetting difference (the predictor puts the two in the order of "
            "their forgetting; a seed where they forget the same agrees only if the predictor ties too).\n\n"
            + markdown_table(causes_table(sits_paired, "difference", "n_paired"))
            + "\n![causes against RFT](causes.png)\n"
            if len(sits_paired)
            else ""
        )
        + compared_section(tables)
        + "\n### What predicts forgetting, over every distinct checkpoint of the sweep"
        + (" (not the families borrowed to compare with)" if "compared" in summary else "")
        + "\n\n"
        + markdown_table(predictor_rows(predictors_found))
        + "\n![frontiers](frontier.png)\n\n![predictors](predictors.png)\n"
    )

"""A sweep: the study over a grid of settings, and the comparison RL's Razor (Shenfeld, Pari, Agrawal 2025)
makes fair: for each arm family, the Pareto frontier of puzzle accuracy against prior-knowledge accuracy over
every checkpoint of every setting, and forgetting compared along the frontiers at matched puzzle accuracy.

    python -m flows.sweep --profile tiny-sweep

A point is the study with some dotted keys set (`sweep.grid`: every combination; `sweep.extra`: more points).
Points share every product they have in common (an arm depends on its own settings only), so a grid over
two arms' learning rates trains each arm's settings once. The report's files and page: forgetting/sweep_report.py.
"""

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from forgetting.arms import arm_spec
from forgetting.borrowed import Borrowed, check_same_base, is_borrowed, is_borrowed_point, own_family, rft_family
from forgetting.config import ConfigError, StudyConfig, not_results
from forgetting.metrics import BOUNDS, mean_ci
from forgetting.predictors import PREDICTORS
from forgetting.profiles import build_config, set_dotted
from forgetting.storage import stable_hash

LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)  # puzzle accuracies at which the frontiers are compared
# the predictors that are candidate causes of forgetting, compared at the frontiers (prior_logprob_change is the
# prior tasks' probe: at a frontier checkpoint another reading of its forgetting; at_frontier.csv keeps it)
CAUSES = ("forward_kl", "reverse_kl", "data_nll", "param_distance")


def sweep_spec(config: StudyConfig) -> dict:
    """What determines a sweep's results: the study's settings and the sweep's points (not where they run)."""
    return config.model_dump(mode="json", exclude=not_results(frozenset({"sweep"})) | {"sweep": {"deployment"}})


def sweep_id(config: StudyConfig) -> str:
    """<name>-<hash of sweep_spec> (name it as a sweep: tiny-sweep)."""
    return f"{config.name}-{stable_hash(sweep_spec(config))[:10]}"


def sweep_dir(config: StudyConfig) -> Path:
    return config.output.path / sweep_id(config)


def points(config: StudyConfig) -> list[tuple[str, dict, StudyConfig]]:
    """(point id, its overrides, its study config) for every point: the grid's combinations, then the extra
    points; a point's study has no sweep of its own. A key or value the config refuses is a ConfigError that
    names the point."""
    grid = config.sweep.grid
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else []
    overrides = combos + list(config.sweep.extra) or [{}]
    base = config.model_dump(mode="json", exclude={"sweep"})
    out = []
    for i, point in enumerate(overrides):
        data = json.loads(json.dumps(base))
        for key, value in point.items():
            set_dotted(data, f"{key}={json.dumps(value)}")
        try:
            study = build_config(data)
        except ConfigError as err:
            raise ConfigError(f"sweep point {i} {point}: {err}") from None
        out.append((f"p{i}", point, study))
    return out


def family(config: StudyConfig, arm: str) -> str:
    """An arm family, a frontier of its own: the arm; rollout_sft on other rollouts than fresh samples of the final
    RFT model with their source (-training: those RFT recorded while training; -early<step>, -early: samples of
    that RFT checkpoint, or of its first); -lora when it trains a LoRA adapter."""
    name = arm
    if arm == "rollout_sft" and (rollouts := config.arms.rollout_sft).rollout_source != "final":
        name += f"-{rollouts.rollout_source}{rollouts.early_step or ''}"
    return f"{name}-lora" if config.model.finetune == "lora" else name


def arm_key(config: StudyConfig, arm: str) -> str:
    """What determines an arm's checkpoints within a sweep (forgetting/arms.py:arm_spec, and for rollout_sft the
    RFT arm it learns from): two points with the same key trained the same arm, which counts once."""
    spec = arm_spec(config, arm) | ({"upstream": arm_key(config, "rft")} if arm == "rollout_sft" else {})
    return stable_hash(spec)[:10]


def frontier_frame(studies: list[tuple[str, StudyConfig]], borrowed: list[Borrowed] = ()) -> pd.DataFrame:
    """Every evaluated checkpoint of every arm of every point and seed (each seed's curves.csv, with the
    predictors of its dynamics.csv), an arm trained by several points counted once, and the checkpoints borrowed
    from other sweeps (forgetting/borrowed.py: sweep.reference's RFT, sweep.compare's families), with
    `on_frontier`: not dominated in (puzzle_exact, prior_mean) by another checkpoint of its family and seed."""
    predictor_columns = list(PREDICTORS.values())
    rows = []
    for point, config in studies:
        for one in config.per_seed():
            curve = pd.read_csv(one.report_dir / "curves.csv")
            dyn = pd.read_csv(one.report_dir / "dynamics.csv")[["arm", "step", *predictor_columns]]
            curve = curve.drop(columns=[c for c in predictor_columns if c in curve]).merge(dyn, "left", ["arm", "step"])
            for arm, group in curve[curve.arm != "base"].groupby("arm", sort=False):
                for r in group.to_dict("records"):
                    rows.append(
                        {
                            "arm": family(one, arm),
                            "point": point,
                            "seed": one.seed,
                            "step": int(r["step"]),
                            "puzzle_exact": r["puzzle_exact"],
                            "prior_mean": r["prior_mean"],
                            "forgetting": r["forgetting"],
                            "arm_key": arm_key(one, arm),
                            **{c: r[c] for c in predictor_columns},
                        }
                    )
    return with_borrowed(pd.DataFrame(rows).drop_duplicates(["arm", "seed", "arm_key", "step"]), borrowed)


def with_borrowed(frame: pd.DataFrame, borrowed: list[Borrowed]) -> pd.DataFrame:
    """The sweep's own checkpoints (frontier_frame's rows) and those borrowed from other sweeps, each checked to
    share this sweep's base (check_same_base), with `on_frontier` marked anew for every family and seed."""
    for other in borrowed:
        check_same_base(frame, other)
    frame = pd.concat([frame, *(other.frame for other in borrowed)], ignore_index=True)
    frame["on_frontier"] = False
    for _, group in frame.groupby(["arm", "seed"]):
        for i, row in group.iterrows():
            dominated = (
                (group.puzzle_exact >= row.puzzle_exact)
                & (group.prior_mean >= row.prior_mean)
                & ((group.puzzle_exact > row.puzzle_exact) | (group.prior_mean > row.prior_mean))
            )
            frame.loc[i, "on_frontier"] = not dominated.any()
    return frame


def noted_arms(studies: list[tuple[str, StudyConfig]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(skipped, stopped): point -> the arms its study skipped (asked for, not trained), and point -> those that
    stopped before their last step, with the reasons (its report's summary.json, read once)."""
    skipped, stopped = {}, {}
    for point, config in studies:
        summary = json.loads((config.report_dir / "summary.json").read_text())
        for found, kind in ((skipped, "skipped"), (stopped, "stopped")):
            if summary.get(kind):
                found[point] = summary[kind]
    return skipped, stopped


def by_point_and_arm(noted: dict[str, dict]) -> dict:
    """One of noted_arms' dicts keyed by '<point> <arm>'."""
    return {f"{point} {arm}": why for point, arms in noted.items() for arm, why in arms.items()}


def frontier_checkpoint(group: pd.DataFrame, seed: int, level: float) -> pd.Series | None:
    """The checkpoint that makes up one family's frontier in a seed at a puzzle level: of the family's rows, the one
    that forgets least at that puzzle exact accuracy or more (the first where several forget as little); None where
    none gets there."""
    there = group[(group.seed == seed) & (group.puzzle_exact >= level) & group.forgetting.notna()]
    return there.loc[there.forgetting.idxmin()] if len(there) else None


def frontier_levels(frame: pd.DataFrame, levels: tuple[float, ...] = LEVELS) -> pd.DataFrame:
    """Per arm family, puzzle level and seed: the least forgetting the family's checkpoints reach at that puzzle
    exact accuracy or more (its frontier there; NaN where no checkpoint gets there), and that checkpoint's
    predictors (PREDICTORS' columns the frame has; the first such checkpoint where several forget as little)."""
    rows, seeds = [], sorted(frame.seed.unique())
    columns = [column for column in PREDICTORS.values() if column in frame]
    for arm, group in frame.groupby("arm", sort=False):
        for level in levels:
            for seed in seeds:
                best = frontier_checkpoint(group, seed, level)
                rows.append(
                    {"arm": arm, "puzzle_level": level, "seed": seed}
                    | {c: math.nan if best is None else float(best[c]) for c in ["forgetting", *columns]}
                )
    return pd.DataFrame(rows)


def several_points(frame: pd.DataFrame) -> list[str]:
    """The arm families whose trained checkpoints (step > 0) come from more than one sweep point, in the frame's
    order."""
    return [arm for arm, group in frame.groupby("arm", sort=False) if group[group.step > 0].point.nunique() > 1]


def setting_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the families this sweep trained at more than one of its own points (several_points; those it
    reads from other sweeps have their settings compared in their own reports), each point's arm a family of its
    own, `<family> <point>`: frontier_levels over them gives each setting its own frontier. Empty when every family
    has one point."""
    own = frame[~frame.point.map(is_borrowed_point)]
    rows = own[own.arm.isin(several_points(own))]
    return rows.assign(arm=rows.arm + " " + rows.point)


def differences_from_first_setting(per_setting: pd.DataFrame) -> pd.DataFrame:
    """paired_differences of each setting of setting_frame's families (frontier_levels' rows) from the family's
    first setting, the first sweep point that trained it. Empty when no family has two."""
    first, pairs = {}, []
    for setting in dict.fromkeys(per_setting.arm):  # in the frame's order: the sweep's order of points
        arm = setting.partition(" ")[0]
        if arm in first:
            pairs.append((setting, first[arm]))
        else:
            first[arm] = setting
    return paired_differences(per_setting, pairs)


def frontier_points(frame: pd.DataFrame, levels: tuple[float, ...] = LEVELS) -> pd.DataFrame:
    """Which settings make up the frontiers: per arm family whose checkpoints come from more than one sweep point,
    puzzle level and point, in how many seeds the family's frontier checkpoint there (frontier_checkpoint) is one
    of that point's (`n_seeds`; the base model, step 0, counts as the point `base`). Empty when every family has one
    point."""
    rows, seeds = [], sorted(frame.seed.unique())
    for arm in several_points(frame):
        group = frame[frame.arm == arm]
        for level in levels:
            found = [frontier_checkpoint(group, seed, level) for seed in seeds]
            chosen = Counter("base" if c.step == 0 else c.point for c in found if c is not None)
            for point in ["base", *dict.fromkeys(group.point)]:  # the sweep's order of points
                if chosen[point]:
                    rows.append({"arm": arm, "puzzle_level": level, "point": point, "n_seeds": chosen[point]})
    return pd.DataFrame(rows, columns=["arm", "puzzle_level", "point", "n_seeds"])


def over_seeds(
    rows: pd.DataFrame, column: str, name: str, count: str, bounds: tuple[float, float] | None = None
) -> dict:
    """The column's mean and 95% interval over the rows' seeds (as `name`, `name_low`, `name_high`), how many
    seeds have a value (`count`) and of how many (`seeds`)."""
    stats = mean_ci(rows[column].tolist(), bounds)
    return {
        name: stats["mean"],
        f"{name}_low": stats["low"],
        f"{name}_high": stats["high"],
        count: stats["n"],
        "seeds": len(rows),
    }


def over_seeds_at_levels(
    per_seed: pd.DataFrame, column: str, name: str, bounds: tuple[float, float] | None = None
) -> pd.DataFrame:
    """Per arm family and puzzle level of frontier_levels' rows: over_seeds of the column, counting the seeds
    that reach the level (`n_reached`)."""
    return pd.DataFrame(
        [
            {"arm": arm, "puzzle_level": level} | over_seeds(group, column, name, "n_reached", bounds)
            for (arm, level), group in per_seed.groupby(["arm", "puzzle_level"], sort=False)
        ]
    )


def matched(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per arm family and puzzle level of frontier_levels' rows: the least forgetting, mean and 95% interval over
    seeds, and how many seeds got there (`n_reached`)."""
    return over_seeds_at_levels(per_seed, "forgetting", "forgetting", BOUNDS["forgetting"])


def at_frontier(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Where each family's frontier checkpoint sits: per arm family, puzzle level and predictor of frontier_levels'
    rows, the predictor's value at the checkpoint that forgets least at that puzzle accuracy or more, mean and 95%
    interval over the seeds that reach the level (`n_reached`: those whose checkpoint there has the predictor; the
    base, step 0, has none, and is a frontier checkpoint only at a level it already solves). The predictors pooled
    over all checkpoints say what tracks forgetting; this says whether the same measure orders the families where
    they are compared."""
    tables = [
        over_seeds_at_levels(per_seed, column, "value").assign(predictor=name)
        for name, column in PREDICTORS.items()
        if column in per_seed
    ]
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    return table[["predictor", *table.columns.drop("predictor")]]


def paired_differences(per_seed: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per pair of arm families (the family, the one it is compared with: `reference`), puzzle level and seed of
    frontier_levels' rows: the forgetting and predictors of the family minus the other's, each seed against the
    same seed (whose puzzles and evaluation items both share); NaN where either frontier misses the level. Empty
    without a pair."""
    levels = list(dict.fromkeys(per_seed.puzzle_level))
    # looked up by (arm, level) below: sorted, pandas need not scan it
    per_seed = per_seed.set_index(["arm", "puzzle_level", "seed"]).sort_index()
    parts = [
        (per_seed.loc[(arm, level)] - per_seed.loc[(other, level)])
        .reset_index()
        .assign(arm=arm, reference=other, puzzle_level=level)
        for arm, other in pairs
        for level in levels
    ]
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    return table[["arm", "reference", "puzzle_level", *table.columns.drop(["arm", "reference", "puzzle_level"])]]


def differences_from_rft(per_seed: pd.DataFrame) -> pd.DataFrame:
    """paired_differences of each of the sweep's own families (not those sweep.compare borrows) with an RFT family to
    compare with (rft_family; RFT's own left out) from that RFT family. Empty without one."""
    families = list(dict.fromkeys(per_seed.arm))  # in the frame's order
    own = [arm for arm in families if not is_borrowed(arm) and arm != rft_family(arm) and rft_family(arm) in families]
    return paired_differences(per_seed, [(arm, rft_family(arm)) for arm in own])


def differences_from_compared(per_seed: pd.DataFrame) -> pd.DataFrame:
    """paired_differences of each of the sweep's own families from every family of the same name that sweep.compare
    borrows (`<family>@<sweep name>`). Empty without one."""
    families = list(dict.fromkeys(per_seed.arm))
    pairs = [(arm, other) for other in families if is_borrowed(other) for arm in families if arm == own_family(other)]
    return paired_differences(per_seed, pairs)


def paired(rows: pd.DataFrame, column: str) -> dict:
    """One pair of families and level of paired_differences' rows: over_seeds of the column, counting the seeds
    that have it (`n_paired`)."""
    first = rows.iloc[0]
    return {"arm": first.arm, "reference": first.reference, "puzzle_level": first.puzzle_level} | over_seeds(
        rows, column, "difference", "n_paired"
    )


def by_pair_and_level(differences: pd.DataFrame):
    """differences' rows grouped by pair of families and puzzle level, in their order (none when empty)."""
    return differences.groupby(["arm", "reference", "puzzle_level"], sort=False) if len(differences) else []


def against(differences: pd.DataFrame) -> pd.DataFrame:
    """The paper's comparison along the frontiers: per pair of families and puzzle level of paired_differences' rows
    (differences_from_rft: each family and its RFT), the family's least forgetting minus the other's there
    (positive: it forgets more), mean and 95% interval over the seeds where both frontiers reach the level
    (`n_paired`). Empty without a pair."""
    return pd.DataFrame([paired(rows, "forgetting") for _, rows in by_pair_and_level(differences)])


def at_frontier_against(differences: pd.DataFrame) -> pd.DataFrame:
    """Whether a candidate cause orders two families, seed by seed, as their forgetting does: per pair of families,
    puzzle level and predictor of CAUSES in paired_differences' rows, the predictor at the family's frontier checkpoint
    minus at the other's (the checkpoints at_frontier reads), mean and 95% interval over the seeds where both have
    it (`n_paired`), and `agree`: in how many of those the predictor's difference has the sign of the forgetting
    difference (a tie in forgetting agrees only with a tie). Empty without a pair."""
    rows = []
    for _, group in by_pair_and_level(differences):
        for name in CAUSES:
            if (column := PREDICTORS[name]) in group:
                both = group[[column, "forgetting"]].dropna()
                agree = int((np.sign(both[column]) == np.sign(both.forgetting)).sum())
                rows.append({"predictor": name} | paired(group, column) | {"agree": agree})
    return pd.DataFrame(rows)


def causes_tally(contrast: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Where a family forgets clearly more or less than RFT (the levels of against's table, `contrast`, whose 95%
    interval is clear of zero), in how many seeds each cause of at_frontier_against's table (`paired`) orders the
    two as their forgetting: per predictor, `agree` of `compared` seed comparisons over those levels and families
    (zero of zero where none is clear)."""
    counts = dict.fromkeys(CAUSES, (0, 0))
    if len(contrast) and len(paired):  # a sweep without an RFT family writes both tables empty
        clear = contrast[(contrast.difference_low > 0) | (contrast.difference_high < 0)][["arm", "puzzle_level"]]
        for name, rows in paired.merge(clear, on=["arm", "puzzle_level"]).groupby("predictor"):
            counts[name] = (int(rows.agree.sum()), int(rows.n_paired.sum()))
    return pd.DataFrame([{"predictor": name, "agree": a, "compared": n} for name, (a, n) in counts.items()])

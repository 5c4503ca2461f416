"""Checkpoints another sweep trained, drawn into this sweep's frontiers from that sweep's report folder (its report/,
or a published block): the RFT arms of `sweep.reference`, for a sweep that trains none, and the arm families of
`sweep.compare`, to compare this sweep's arms with the same arms trained another way. Either must be this study but
for its arms (the same base, puzzles and evaluation items in each seed) and hold this sweep's seeds; both are checked
before any work (against the configs) and again after it (against the bases' prior accuracy).
"""

import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from forgetting.config import REPO_ROOT, ConfigError, StudyConfig, not_results
from forgetting.profiles import load_config


class Borrowed(NamedTuple):
    """Another sweep's checkpoints as frontier_frame's rows, and the report's note on them."""

    frame: pd.DataFrame
    note: dict


BORROWED = "@"  # a family sweep.compare borrows: <family>@<its sweep's name>
OTHER_POINT = ":"  # a point of the sweep a checkpoint is borrowed from: <its sweep id>:<point>


def own_family(arm: str) -> str:
    """The family an arm family is of: itself, or for one sweep.compare borrows the family it was there."""
    return arm.split(BORROWED)[0]


def is_borrowed(arm: str) -> bool:
    """Whether the arm family is one sweep.compare borrows from another sweep."""
    return BORROWED in arm


def is_borrowed_point(point: str) -> bool:
    """Whether a checkpoint's point is another sweep's (sweep.reference's RFT, sweep.compare's families)."""
    return OTHER_POINT in point


def rft_family(arm: str) -> str:
    """The RFT family an arm family is compared with: RFT trained the same way (full, or a LoRA adapter)."""
    return "rft-lora" if own_family(arm).endswith("-lora") else "rft"


def study_settings(config: StudyConfig) -> dict:
    """What a seed's base, puzzles and evaluation items follow from: the config but its name, seeds, arms and sweep
    (and what changes no result)."""
    return config.model_dump(
        mode="json", exclude=not_results() | dict.fromkeys(("name", "seed", "seeds", "arms"), True)
    )


def other_sweep(config: StudyConfig, key: str, path: str) -> tuple[pd.DataFrame, str, str]:
    """(its frontier.csv with each point named `<its sweep id>:<point>`, its sweep id, its sweep's name) of the sweep
    report at path (relative paths from the repository); ConfigError naming the setting `key` when the folder is no
    sweep report or its study differs from this one beyond the arms."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_absolute() else REPO_ROOT / folder
    if not all((folder / name).is_file() for name in ("frontier.csv", "summary.json", "config.yaml")):
        raise ConfigError(f"{key}: {folder} is no sweep report (frontier.csv, summary.json, config.yaml)")
    theirs = load_config(str(folder / "config.yaml"))
    ours, settings = study_settings(config), study_settings(theirs)
    if differ := sorted(s for s in ours.keys() | settings.keys() if ours.get(s) != settings.get(s)):
        raise ConfigError(
            f"{key}: {folder}'s study differs from this one in {differ}, not only in its arms: its seeds' puzzles "
            "and evaluation items are not this sweep's"
        )
    sweep = json.loads((folder / "summary.json").read_text())["sweep_id"]
    frame = pd.read_csv(folder / "frontier.csv", dtype={"arm_key": str, "point": str})
    return frame.assign(point=lambda f: f"{sweep}{OTHER_POINT}" + f.point), sweep, theirs.name


def of_seeds(config: StudyConfig, frame: pd.DataFrame, key: str, what: str) -> pd.DataFrame:
    """The frame's rows of this sweep's seeds; ConfigError naming the setting `key` when it lacks one."""
    seeds = config.all_seeds
    if missing := sorted(set(seeds) - set(frame.seed)):
        raise ConfigError(f"{key}: {what} has no checkpoint of seed(s) {missing}")
    return frame[frame.seed.isin(seeds)].reset_index(drop=True)


def reference_frame(config: StudyConfig, studies: list[tuple[str, dict, StudyConfig]]) -> Borrowed | None:
    """The RFT checkpoints of the sweep report sweep.reference names, for a sweep that trains no RFT of its own
    (studies: its points, as points gives them): its frontier.csv's rows of RFT's families and this sweep's seeds;
    None without a reference. ConfigError, before any work, when other_sweep refuses it, a point of this sweep
    trains RFT or it lacks a seed."""
    if config.sweep.reference is None:
        return None
    if trains := [point for point, _, one in studies if one.arms.rft.enabled]:
        raise ConfigError(f"sweep.reference: point(s) {trains} train RFT; a reference is for a sweep without it")
    frame, sweep, _ = other_sweep(config, "sweep.reference", config.sweep.reference)
    rft = frame[frame.arm.isin({rft_family(arm) for arm in frame.arm})]
    frame = of_seeds(config, rft, "sweep.reference", "its RFT")
    return Borrowed(frame, {"report": config.sweep.reference, "sweep_id": sweep, "checkpoints": len(frame)})


def compared_frames(config: StudyConfig) -> list[Borrowed]:
    """The checkpoints of each sweep report sweep.compare names: every family that sweep trained itself but RFT's,
    renamed `<family>@<its sweep's name>`, of this sweep's seeds. ConfigError, before any work, when other_sweep
    refuses one, two share a name, one has no such family or lacks a seed."""
    found, names = [], set()
    for path in config.sweep.compare:
        frame, sweep, name = other_sweep(config, "sweep.compare", path)
        if name in names:
            raise ConfigError(f"sweep.compare: two reports of sweeps named {name!r}; their families would share names")
        names.add(name)
        own = frame[(frame.arm != frame.arm.map(rft_family)) & ~frame.arm.map(is_borrowed)]
        if own.empty:
            raise ConfigError(f"sweep.compare: {path} has no arm family of its own besides RFT")
        own = of_seeds(config, own.assign(arm=own.arm + BORROWED + name), "sweep.compare", path)
        families = list(dict.fromkeys(own.arm))
        found.append(Borrowed(own, {"report": path, "sweep_id": sweep, "families": families, "checkpoints": len(own)}))
    return found


def check_same_base(frame: pd.DataFrame, borrowed: Borrowed) -> None:
    """ConfigError unless the other sweep's base (its step-0 rows) knew in each seed what this sweep's base knew (its
    prior mean): other_sweep checks the two configs before any work, this the base model and evaluation items they
    named (a base pretrained again under the same name, say)."""
    ours = frame[frame.step == 0].groupby("seed").prior_mean.first()
    theirs = borrowed.frame[borrowed.frame.step == 0].groupby("seed").prior_mean.first()
    both = ours.index.intersection(theirs.index)
    if differ := [int(seed) for seed in both if not math.isclose(ours[seed], theirs[seed], abs_tol=1e-9)]:
        raise ConfigError(
            f"sweep report {borrowed.note['report']}: its base's prior mean differs from this sweep's in seed(s) "
            f"{differ} (theirs {[round(float(theirs[s]), 4) for s in differ]}, ours "
            f"{[round(float(ours[s]), 4) for s in differ]}): not the same base model or evaluation items, so its "
            "checkpoints cannot be compared with these"
        )

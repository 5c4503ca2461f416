"""A sweep's comparison along the Pareto frontiers, on small hand-made checkpoint tables."""

import math
import warnings

import pandas as pd
import pytest

from forgetting.predictors import PREDICTORS
from forgetting.sweep import (
    CAUSES,
    against,
    at_frontier,
    at_frontier_against,
    differences_from_compared,
    differences_from_rft,
    frontier_levels,
    frontier_points,
    matched,
)
from forgetting.sweep_report import DIGITS, setting_tables, sweep_markdown, sweep_tables

# (family, seed, puzzle exact accuracy, forgetting) of every evaluated checkpoint
CHECKPOINTS = [
    ("rft", 0, 0.5, 0.01),
    ("rft", 0, 0.9, 0.05),
    ("rft", 1, 0.5, 0.02),
    ("rft", 2, 0.3, 0.00),
    ("sft", 0, 0.5, 0.03),
    ("sft", 0, 1.0, 0.04),
    ("sft", 1, 0.6, 0.05),
    ("sft", 1, 1.0, 0.06),
    ("sft", 2, 1.0, 0.02),
    ("sft-lora", 0, 1.0, 0.01),  # a LoRA family: compared with LoRA RFT, which this sweep has none of
]


def frame() -> pd.DataFrame:
    rows = [{"arm": a, "seed": s, "puzzle_exact": p, "forgetting": f} for a, s, p, f in CHECKPOINTS]
    return pd.DataFrame(rows).assign(
        prior_mean=lambda d: 0.9 - d.forgetting,
        forward_kl=lambda d: 100 * d.forgetting + d.seed,  # a checkpoint's own value, to find it by
    )


def differences(checkpoints: pd.DataFrame) -> pd.DataFrame:
    return differences_from_rft(frontier_levels(checkpoints))


def tables(checkpoints: pd.DataFrame) -> dict[str, pd.DataFrame]:
    per_seed = frontier_levels(checkpoints)
    return sweep_tables(per_seed, differences_from_rft(per_seed))


def test_frontiers_are_compared_at_each_level_over_the_seeds_that_reach_it():
    table = matched(frontier_levels(frame())).set_index(["arm", "puzzle_level"])
    assert table.loc[("sft", 0.4), "forgetting"] == pytest.approx((0.03 + 0.05 + 0.02) / 3)
    # seed 0's checkpoint at 0.5 is below 0.6: its 1.0 counts there
    assert table.loc[("sft", 0.6), "forgetting"] == pytest.approx((0.04 + 0.05 + 0.02) / 3)
    assert table.loc[("rft", 0.4), "n_reached"] == 2 and table.loc[("rft", 0.4), "seeds"] == 3
    assert table.loc[("rft", 0.8), "forgetting"] == pytest.approx(0.05) and table.loc[("rft", 0.8), "n_reached"] == 1
    assert math.isnan(table.loc[("rft", 1.0), "forgetting"]) and table.loc[("rft", 1.0), "n_reached"] == 0


def test_each_family_is_compared_with_rft_seed_by_seed():
    """Differences are taken within a seed (its arms share puzzles and items) and averaged over the seeds where
    both frontiers reach the level; RFT itself and a family without its RFT have no row."""
    table = against(differences(frame())).set_index(["arm", "puzzle_level"])
    assert set(table.index.unique("arm")) == {"sft"} and set(table.reference) == {"rft"}
    at = table.loc[("sft", 0.4)]
    assert at.difference == pytest.approx((0.02 + 0.03) / 2) and at.n_paired == 2 and at.seeds == 3
    assert at.difference_low < at.difference < at.difference_high  # two seeds: an interval
    at = table.loc[("sft", 0.8)]  # seed 0 only: 0.04 - 0.05, and no interval from one seed
    assert at.difference == pytest.approx(-0.01) and at.n_paired == 1 and math.isnan(at.difference_low)
    assert math.isnan(table.loc[("sft", 1.0), "difference"]) and table.loc[("sft", 1.0), "n_paired"] == 0


SUMMARY = {"sweep_id": "s", "seeds": [0, 1, 2], "points": {"p0": {}}, "checkpoints": 10, "skipped": {}}


def test_the_report_shows_the_comparison_with_rft_only_when_there_is_an_rft():
    text = sweep_markdown(SUMMARY, tables(frame()), {})
    paired = text.split("minus RFT's")[1].split("###")[0]
    assert "| puzzle_level | sft |" in paired  # neither RFT nor the LoRA family without its RFT
    row = next(line for line in paired.splitlines() if line.startswith("| 0.400"))
    # sft minus rft at 0.4, over the two seeds whose RFT frontier gets there
    assert row.startswith("| 0.400 | 0.025 [") and row.endswith("(2/3) |")
    without = frame()[~frame().arm.str.startswith("rft")]
    text = sweep_markdown(SUMMARY, tables(without), {})
    assert "minus RFT's" not in text and "agree" not in text and "causes.png" not in text


def test_the_report_counts_its_points():
    assert "1 point, 10 distinct checkpoints:" in sweep_markdown(SUMMARY, tables(frame()), {})
    two = sweep_markdown(SUMMARY | {"points": {"p0": {}, "p1": {"arms.sft.learning_rate": 1e-5}}}, tables(frame()), {})
    assert "2 points, 10 distinct checkpoints:" in two


def test_the_report_names_the_arms_skipped_or_stopped_at_each_point():
    assert "Skipped arms" not in sweep_markdown(SUMMARY, tables(frame()), {})
    noted = SUMMARY | {
        "skipped": {"p0": {"rollout_sft": {"1": "no exact rollouts"}}},
        "stopped": {"p0": {"iterative_sft": {"2": "round 12 (after step 550), no exact answer in 8,000 samples"}}},
    }
    text = sweep_markdown(noted, tables(frame()), {})
    assert "(asked for, not in this report): `p0 rollout_sft`: seed 1: no exact rollouts.\n" in text
    assert "`p0 iterative_sft`: seed 2: round 12 (after step 550), no exact answer in 8,000 samples.\n" in text


def test_the_report_says_which_points_make_up_each_frontier():
    """Per family trained at more than one point and level: in how many seeds each point's checkpoint is the
    frontier's there; the base model (step 0, every point's) counts as `base`; one-point families have no row."""
    points = ["p0", "p0", "p0", "p0", "p0", "p1", "p0", "p1", "p1", "p0"]  # RFT and the LoRA family: p0 alone
    base = {"arm": "sft", "seed": 0, "puzzle_exact": 0.5, "forgetting": 0.0, "prior_mean": 0.9, "point": "p0"}
    checkpoints = pd.concat([frame().assign(step=10, point=points), pd.DataFrame([base | {"step": 0}])])
    chosen = frontier_points(checkpoints).set_index(["arm", "puzzle_level", "point"]).n_seeds
    assert set(chosen.index.unique("arm")) == {"sft"}
    # at 0.4: seed 0's base (0.5, forgets nothing), seed 1's p0 checkpoint at 0.6, seed 2's only one (p1)
    assert chosen.loc[("sft", 0.4)].to_dict() == {"base": 1, "p0": 1, "p1": 1}
    assert chosen.loc[("sft", 0.8)].to_dict() == {"p1": 3}
    per_seed = frontier_levels(checkpoints)
    with_points = sweep_tables(per_seed, differences_from_rft(per_seed)) | {"frontier_points": chosen.reset_index()}
    text = sweep_markdown(SUMMARY, with_points, {})
    assert "Which settings make up those frontiers" in text and "| 0.400 | base: 1, p0: 1, p1: 1 |" in text
    assert "Which settings" not in sweep_markdown(SUMMARY, tables(frame()), {})  # none given: no section


def test_each_setting_of_a_family_has_a_frontier_of_its_own_compared_with_the_first_seed_by_seed():
    """A family trained at two points: each point's checkpoints make a frontier of their own (`sft p1`), compared
    seed by seed with the family's first setting over the seeds where both reach the level; families trained at
    one point have none, nor those read from other sweeps, and a sweep where every family has one point no such
    section."""
    # sft: p0 and p1 in seeds 0 and 1, p0 alone in seed 2; RFT and the LoRA family at p0 alone
    points = ["p0"] * 4 + ["p0", "p1", "p0", "p1", "p0"] + ["p0"]
    settings = setting_tables(frame().assign(step=10, point=points))
    own = settings["settings"].set_index(["arm", "puzzle_level"])
    assert set(own.index.unique("arm")) == {"sft p0", "sft p1"}
    assert own.loc[("sft p0", 0.4), "forgetting"] == pytest.approx((0.03 + 0.05 + 0.02) / 3)
    assert own.loc[("sft p1", 0.4), "forgetting"] == pytest.approx((0.04 + 0.06) / 2)
    assert own.loc[("sft p1", 0.4), "n_reached"] == 2
    contrast = settings["settings_against_first"].set_index(["arm", "puzzle_level"])
    assert set(contrast.reference) == {"sft p0"}
    # seeds 0 and 1: 0.04 - 0.03 and 0.06 - 0.05; at 0.8 only seed 2's p0 and seeds 0-1's p1 get there: no pair
    assert contrast.loc[("sft p1", 0.4), "difference"] == pytest.approx(0.01)
    assert contrast.loc[("sft p1", 0.4), "n_paired"] == 2 and contrast.loc[("sft p1", 0.8), "n_paired"] == 0
    causes = settings["at_frontier_settings_against_first"].set_index(["predictor", "puzzle_level"])
    assert causes.loc[("forward_kl", 0.4), "agree"] == 2  # forward_kl is 100 x forgetting + seed here
    text = sweep_markdown(SUMMARY, tables(frame()) | settings, {})
    assert "| puzzle_level | sft p0 | sft p1 |" in text and "| puzzle_level | sft p1 - sft p0 |" in text
    one_point = setting_tables(frame().assign(step=10, point="p0"))
    assert all(table.empty for table in one_point.values())
    # RFT read from another sweep at two of its points: that sweep's own report compares its settings, not this one
    other = ["other-0123456789:p0", "other-0123456789:p1"] * 2
    borrowed = setting_tables(frame().assign(step=10, point=other + ["p0"] * 6))
    assert all(table.empty for table in borrowed.values())
    assert "on a frontier of its own" not in sweep_markdown(SUMMARY, tables(frame()) | one_point, {})


def test_the_comparison_does_not_depend_on_the_order_of_the_checkpoints():
    """A sweep's frame comes in the order its points ran; the comparison is the same in any row order, and looks
    its rows up in a sorted index (pandas warns when it has to scan an unsorted one)."""
    shuffled = frame().sample(frac=1.0, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        table = against(differences(shuffled))
    expected = against(differences(frame()))
    pd.testing.assert_frame_equal(table, expected)


def test_the_predictors_are_read_at_the_checkpoint_that_makes_up_each_frontier():
    """At a level, each seed's frontier checkpoint is the one forgetting least at that accuracy or more; its
    predictors are averaged over the seeds that reach the level. Columns the frame lacks have no rows."""
    table = at_frontier(frontier_levels(frame())).set_index(["predictor", "arm", "puzzle_level"])
    assert set(table.index.unique("predictor")) == {"forward_kl"}
    at = table.loc[("forward_kl", "sft", 0.6)]  # seeds 0, 1, 2: forgetting 0.04, 0.05, 0.02 there
    assert at.value == pytest.approx((4.0 + 6.0 + 4.0) / 3) and at.n_reached == 3 and at.seeds == 3
    at = table.loc[("forward_kl", "rft", 0.8)]  # seed 0's checkpoint at 0.9 alone
    assert at.value == pytest.approx(5.0) and at.n_reached == 1 and math.isnan(at.value_low)
    text = sweep_markdown(SUMMARY, tables(frame()), {})
    sits = text.split("Where the frontiers sit")[1].split("###")[0]
    assert "| predictor | puzzle_level | rft | sft | sft-lora |" in sits
    assert "| forward_kl | 0.800 | 5.00 (1/3) |" in sits  # the digits a KL is shown with


def test_the_causes_at_the_frontier_are_compared_with_rfts_seed_by_seed():
    """Each cause at a family's frontier checkpoint minus at RFT's, within a seed, and how many seeds it orders
    as forgetting orders them: forward_kl follows forgetting here by construction; data_nll is SFT's 1 more in
    every seed, while SFT forgets more than RFT at 0.4 and less at 0.8."""
    data = frame().assign(data_nll=lambda d: d.arm.map({"rft": 1.0, "sft": 2.0, "sft-lora": 3.0}))
    table = at_frontier_against(differences(data)).set_index(["predictor", "arm", "puzzle_level"])
    assert set(table.index.unique("arm")) == {"sft"} and set(table.index.unique("predictor")) == {
        "forward_kl",
        "data_nll",
    }
    at = table.loc[("forward_kl", "sft", 0.4)]  # seeds 0 and 1: 3 - 1 and 6 - 3; seed 2's RFT never gets there
    assert at.difference == pytest.approx(2.5) and (at.n_paired, at.seeds, at.agree) == (2, 3, 2)
    assert table.loc[("data_nll", "sft", 0.4), "agree"] == 2
    at = table.loc[("data_nll", "sft", 0.8)]  # seed 0: forgetting 0.04 - 0.05, data_nll 2 - 1
    assert at.difference == pytest.approx(1.0) and (at.n_paired, at.agree) == (1, 0)
    assert table.loc[("data_nll", "sft", 1.0), "n_paired"] == 0
    text = sweep_markdown(SUMMARY, tables(data), {})
    paired = text.split("The same, seed by seed")[1].split("###")[0]
    assert "| data_nll | 0.800 | 1.000 (1/3), 0/1 agree |" in paired
    assert "| forward_kl | 0.400 | 2.50 [" in paired and "(2/3), 2/2 agree |" in paired
    assert "![causes against RFT](causes.png)" in paired


def test_every_cause_is_written_with_its_digits():
    """Each cause sweep.CAUSES names has its rows in the report's seed-by-seed table, written with the digits
    sweep_report.DIGITS gives it (a cause added to one and not the other would fail the report after a whole sweep)."""
    data = frame().assign(**{PREDICTORS[name]: lambda d, k=k: d.forward_kl + k for k, name in enumerate(CAUSES)})
    text = sweep_markdown(SUMMARY, tables(data), {})
    paired = text.split("The same, seed by seed")[1].split("###")[0]
    assert set(DIGITS) == set(CAUSES)
    for name in CAUSES:
        assert f"| {name} | 0.400 | " in paired


def test_rft_trained_by_another_sweep_is_read_only_where_its_study_is_this_one(tmp_path):
    """sweep.reference: the reference's RFT checkpoints of this sweep's seeds, each point named after its sweep;
    a folder that is no sweep report, a sweep that trains RFT itself, a study that differs beyond the arms or a
    seed the reference lacks is a ConfigError before any work."""
    import json

    import yaml

    from forgetting.borrowed import check_same_base, reference_frame
    from forgetting.config import ConfigError, not_results
    from forgetting.profiles import load_config
    from forgetting.sweep import points

    def check(config):
        return reference_frame(config, points(config))

    def ours(*changes: str):
        sweep = ["seeds=[0, 1]", "arms.rft.enabled=false", "sweep.extra=[{}]", f"sweep.reference={tmp_path}"]
        return load_config("micro", [*sweep, *changes])

    with pytest.raises(ConfigError, match="is no sweep report"):
        check(ours())
    theirs = load_config("micro", ["seeds=[0, 1, 2]", "arms.sft.learning_rate=0.01"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(theirs.model_dump(mode="json", exclude=not_results())))
    (tmp_path / "summary.json").write_text(json.dumps({"sweep_id": "micro-0123456789"}))
    frame().assign(point="p0", step=10, arm_key="0123456789").to_csv(tmp_path / "frontier.csv", index=False)
    reference = check(ours())
    assert set(reference.frame.arm) == {"rft"} and set(reference.frame.seed) == {0, 1}  # its seed 2 is not ours
    assert set(reference.frame.point) == {"micro-0123456789:p0"} and len(reference.frame) == 3
    assert reference.note == {"report": str(tmp_path), "sweep_id": "micro-0123456789", "checkpoints": 3}
    assert check(load_config("micro")) is None
    with pytest.raises(ConfigError, match=r"point\(s\) \['p1'\] train RFT"):
        check(ours("sweep.extra=[{}, {arms.rft.enabled: true}]"))
    with pytest.raises(ConfigError, match=r"differs from this one in \['puzzles'\]"):
        check(ours("puzzles.grid=3x3"))
    with pytest.raises(ConfigError, match=r"its RFT has no checkpoint of seed\(s\) \[5\]"):
        check(ours("seeds=[0, 5]"))
    # after the work: the reference's base must know, seed by seed, what this sweep's base knew
    base = pd.DataFrame({"arm": "sft", "seed": [0, 1], "step": 0, "prior_mean": [0.9, 0.9]})
    with_base = reference.frame.assign(step=lambda f: f.step.where(f.seed != 1, 0), prior_mean=0.9)
    check_same_base(base, reference._replace(frame=with_base))
    with pytest.raises(ConfigError, match=r"prior mean differs from this sweep's in seed\(s\) \[1\]"):
        check_same_base(base.assign(prior_mean=[0.9, 0.8]), reference._replace(frame=with_base))


def test_families_another_sweep_trained_are_compared_with_this_sweeps_of_the_same_name():
    """A family sweep.compare borrows (`sft@other`) gets a frontier of its own; this sweep's sft is compared with it
    seed by seed, as with RFT, and only this sweep's own families are compared with RFT."""
    twin = {"arm": "sft@other", "forgetting": lambda d: d.forgetting + 0.01, "forward_kl": lambda d: d.forward_kl + 1}
    borrowed = frame()[frame().arm == "sft"].assign(**twin)
    per_seed = frontier_levels(pd.concat([frame(), borrowed], ignore_index=True))
    assert set(differences_from_rft(per_seed).arm) == {"sft"}
    table = against(differences_from_compared(per_seed)).set_index(["arm", "reference", "puzzle_level"])
    at = table.loc[("sft", "sft@other", 0.6)]  # every seed's sft forgets 0.01 less than its borrowed twin
    assert at.difference == pytest.approx(-0.01) and (at.n_paired, at.seeds) == (3, 3)
    text = sweep_markdown(SUMMARY, sweep_tables(per_seed, differences_from_rft(per_seed)), {})
    section = text.split("the same family trained another way")[1].split("###")[0]
    assert "| puzzle_level | sft - sft@other |" in section and "| 0.600 | -0.010 [" in section
    assert "| forward_kl | 0.600 | -1.00 [" in section and "3/3 agree |" in section
    assert "trained another way" not in sweep_markdown(SUMMARY, tables(frame()), {})


def test_families_are_borrowed_only_from_a_sweep_whose_study_is_this_one(tmp_path):
    """sweep.compare: each report's families besides RFT's and those it borrowed itself, renamed after its sweep,
    of this sweep's seeds; a report that is no sweep's, whose study differs beyond the arms, that has no family of
    its own, lacks a seed, or shares its sweep's name with another is a ConfigError before any work."""
    import json

    import yaml

    from forgetting.borrowed import compared_frames
    from forgetting.config import ConfigError, not_results
    from forgetting.profiles import load_config

    def report(folder, name: str, arms: list[str]):
        folder.mkdir()
        theirs = load_config("micro", ["seeds=[0, 1, 2]", f"name={name}"])
        (folder / "config.yaml").write_text(yaml.safe_dump(theirs.model_dump(mode="json", exclude=not_results())))
        (folder / "summary.json").write_text(json.dumps({"sweep_id": f"{name}-0123456789"}))
        rows = frame()[frame().arm.isin(arms)].assign(point="p0", step=10, arm_key="0123456789")
        rows.to_csv(folder / "frontier.csv", index=False)
        return str(folder)

    def ours(*compare: str, seeds: str = "[0, 1]"):
        return load_config("micro", [f"seeds={seeds}", f"sweep.compare={json.dumps(list(compare))}"])

    hot = report(tmp_path / "hot", "micro-hot", ["rft", "sft", "sft-lora"])
    (found,) = compared_frames(ours(hot))
    assert set(found.frame.arm) == {"sft@micro-hot", "sft-lora@micro-hot"} and set(found.frame.seed) == {0, 1}
    assert set(found.frame.point) == {"micro-hot-0123456789:p0"}
    assert found.note == {
        "report": hot,
        "sweep_id": "micro-hot-0123456789",
        "families": ["sft@micro-hot", "sft-lora@micro-hot"],
        "checkpoints": 5,  # sft: two in each of seeds 0 and 1; sft-lora: one
    }
    assert compared_frames(load_config("micro")) == []
    with pytest.raises(ConfigError, match="sweep.compare: .* is no sweep report"):
        compared_frames(ours(str(tmp_path)))
    with pytest.raises(ConfigError, match=r"differs from this one in \['puzzles'\]"):
        compared_frames(load_config("micro", [f"sweep.compare={json.dumps([hot])}", "puzzles.grid=3x3"]))
    with pytest.raises(ConfigError, match="has no arm family of its own besides RFT"):
        compared_frames(ours(report(tmp_path / "rft", "micro-rft", ["rft"])))
    with pytest.raises(ConfigError, match=r"has no checkpoint of seed\(s\) \[5\]"):
        compared_frames(ours(hot, seeds="[0, 5]"))
    with pytest.raises(ConfigError, match="two reports of sweeps named 'micro-hot'"):
        compared_frames(ours(hot, report(tmp_path / "again", "micro-hot", ["sft"])))


def test_the_causes_are_tallied_only_where_a_family_forgets_clearly_more_or_less_than_rft(tmp_path, capsys):
    """causes_tally counts a cause's agreeing seeds at the levels whose interval against RFT is clear of zero;
    flows.tally sums it over the page's sweep blocks, in the page's order, and fills a block with it."""
    from flows.tally import main
    from forgetting.sweep import causes_tally

    contrast = pd.DataFrame(
        {"arm": "sft", "puzzle_level": [0.4, 0.6], "difference_low": [0.01, -0.01], "difference_high": [0.03, 0.02]}
    )
    paired = pd.DataFrame(
        {"predictor": "forward_kl", "arm": "sft", "puzzle_level": [0.4, 0.6], "agree": [2, 1], "n_paired": [3, 3]}
    )
    counted = causes_tally(contrast, paired).set_index("predictor")
    assert list(counted.index) == list(CAUSES)
    assert counted.loc["forward_kl"].to_dict() == {"agree": 2, "compared": 3}  # 0.6 crosses zero: left out
    assert counted.loc["data_nll"].to_dict() == {"agree": 0, "compared": 0}
    assert causes_tally(pd.DataFrame(), pd.DataFrame()).compared.sum() == 0  # a sweep without RFT

    page = tmp_path / "results.md"
    blocks = ["results-b", "results-study", "results-a", "results-norft", "results-tally"]
    page.write_text("".join(f"<!-- {name}:begin -->\n<!-- {name}:end -->\n" for name in blocks))
    for name, agree in (("results-a", 1), ("results-b", 3)):
        (tmp_path / name).mkdir()
        contrast.to_csv(tmp_path / name / "against_rft.csv", index=False)
        paired.assign(agree=[agree, 0]).to_csv(tmp_path / name / "at_frontier_against_rft.csv", index=False)
    (tmp_path / "results-study").mkdir()  # a study's block: no comparison along frontiers
    (tmp_path / "results-norft").mkdir()
    for name in ("against_rft.csv", "at_frontier_against_rft.csv"):
        (tmp_path / "results-norft" / name).write_text("\n")  # what an empty table writes
    main(["--page", str(page), "--block", "results-tally"])
    table = capsys.readouterr().out
    assert table.startswith("2 sweep blocks with a level where a family forgets clearly")
    rows = [line for line in table.splitlines() if line.startswith("| results-") or line.startswith("| total")]
    assert rows == [
        "| results-b | 3/3 | 0/0 | 0/0 | 0/0 |",
        "| results-a | 1/3 | 0/0 | 0/0 | 0/0 |",
        "| total | 4/6 | 0/0 | 0/0 | 0/0 |",
    ]
    assert "| total | 4/6 |" in page.read_text().split("<!-- results-tally:begin -->")[1]


def test_the_published_causes_tally_is_current():
    """docs/results.md's tally block is what flows.tally computes from the published blocks (a block published or
    written again since would leave the count the README cites stale)."""
    from flows.publish import RESULTS_PAGE
    from flows.tally import tally, tally_markdown

    published = RESULTS_PAGE.read_text().split("<!-- results-causes-tally:begin -->\n")[1].split("<!-- results-")[0]
    assert published == tally_markdown(tally(RESULTS_PAGE)), "run python -m flows.tally --block results-causes-tally"


def test_a_published_sweep_is_compared_afterwards_with_another_sweeps_families(tmp_path):
    """rewrite_sweep_report with compare: the other report's families borrowed into the frontiers as sweep.compare
    borrows them, the config.yaml that reproduces the report naming it (and the sweep id that config gives); a
    report it refuses changes nothing, and a rewrite without compare then writes the same files again."""
    import json

    import yaml

    from forgetting.config import ConfigError
    from forgetting.profiles import load_config
    from forgetting.sweep import sweep_id, sweep_spec, with_borrowed
    from forgetting.sweep_report import REPORT_TABLES, rewrite_sweep_report, write_sweep_report

    def report(name: str, arms: list[str], shift: float):
        folder, config = tmp_path / name, load_config("micro", ["seeds=[0, 1, 2]", f"name={name}", "sweep.extra=[{}]"])
        rows = frame()[frame().arm.isin(arms)].assign(point="p0", step=10, arm_key="0123456789")
        rows = rows.assign(forgetting=rows.forgetting + shift, prior_mean=rows.prior_mean - shift)
        rows = rows.assign(**{c: rows.forgetting for c in PREDICTORS.values() if c not in rows})
        write_sweep_report(folder, sweep_id(config), with_borrowed(rows, []), {"p0": {}})
        (folder / "config.yaml").write_text(yaml.safe_dump(sweep_spec(config), sort_keys=False))
        return folder

    ours, hot = report("micro-ours", ["rft", "sft"], 0.0), report("micro-hot", ["rft", "sft"], 0.01)
    before = {f.name: f.read_bytes() for f in ours.iterdir()}
    before_id = json.loads(before["summary.json"])["sweep_id"]
    with pytest.raises(ConfigError, match="is no sweep report"):
        rewrite_sweep_report(ours, (str(tmp_path),))
    assert before == {f.name: f.read_bytes() for f in ours.iterdir()}  # refused before anything was written
    summary = rewrite_sweep_report(ours, (str(hot),))
    config = load_config(str(ours / "config.yaml"))
    assert config.sweep.compare == [str(hot)] and summary["sweep_id"] == sweep_id(config) != before_id
    (note,) = summary["compared"]
    assert note["sweep_id"] == json.loads((hot / "summary.json").read_text())["sweep_id"]
    assert note["families"] == ["sft@micro-hot"] and note["report"] == str(hot)
    against = pd.read_csv(ours / "against_compared.csv").set_index("puzzle_level")
    assert set(against.reference) == {"sft@micro-hot"} and against.loc[0.6].difference == pytest.approx(-0.01)
    assert "sft@micro-hot" in set(pd.read_csv(ours / "frontier.csv").arm)
    assert {f.stem for f in ours.glob("*.csv")} == {"frontier", *REPORT_TABLES}  # the files flows.publish copies
    after = {f.name: f.read_bytes() for f in ours.iterdir()}
    rewrite_sweep_report(ours)
    assert after == {f.name: f.read_bytes() for f in ours.iterdir()}

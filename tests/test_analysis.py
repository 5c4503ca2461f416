"""Forgetting, curves and dynamics math on small hand-made evaluation records."""

import functools
import json
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from forgetting import NUMERICS_VARIABLES
from forgetting.config import REPO_ROOT
from forgetting.metrics import (
    at_accuracy,
    common_accuracy,
    curves,
    forgetting_at_level,
    forgetting_table,
    mean_ci,
    paired_stderr,
    read_evaluation,
    summary,
)
from forgetting.predictors import (
    data_nll_at,
    data_sample,
    dynamics,
    predictors,
    quadratic_r2,
    spearman,
    spearman_interval,
)
from forgetting.report import aggregate_reports, without_nan, write_report


def record(arm, step, puzzle, a, b, failures=(0, 0), logprob=(-1.0, -1.0), distance=0.0, n=4):
    return {
        "arm": arm,
        "step": step,
        "puzzle_benchmark": "jigsaw",
        "benchmarks": [
            {"benchmark": "jigsaw", "metric": "exact_match", "value": puzzle, "stderr": 0.1, "n": n,
             "format_failures": 0},
            {"benchmark": "a", "metric": "exact_match", "value": a, "stderr": 0.1, "n": n,
             "format_failures": failures[0]},
            {"benchmark": "b", "metric": "exact_match", "value": b, "stderr": 0.2, "n": n,
             "format_failures": failures[1]},
        ],
        "answer_logprob": {"a": logprob[0], "b": logprob[1]},
        "param_distance": {"l2": distance * 10, "relative": distance},
    }  # fmt: skip


def samples(arm, step, a_scores, b_scores):
    return {
        (arm, step): [{"benchmark": "a", "doc_id": i, "score": s} for i, s in enumerate(a_scores)]
        + [{"benchmark": "b", "doc_id": i, "score": s} for i, s in enumerate(b_scores)]
    }


BASE = record("base", 0, 0.0, 1.0, 0.5)
SFT = record("sft", 10, 1.0, 0.25, 0.5, failures=(2, 1), logprob=(-3.0, -2.0), distance=0.3)
RFT = record("rft", 10, 0.5, 1.0, 0.5, logprob=(-1.0, -1.5), distance=0.1)
SAMPLES = samples("base", 0, [1, 1, 1, 1], [1, 1, 0, 0]) | samples("sft", 10, [0, 1, 0, 0], [0, 1, 1, 0])


def test_summary_signs_and_format_collapse():
    s = summary("study-x", BASE, [SFT, RFT])
    assert list(s["arms"]) == ["base", "sft", "rft"]
    assert s["arms"]["base"]["mean_forgetting"] == 0.0
    # (1.0 - 0.25 + 0.5 - 0.5) / 2: positive = forgotten
    assert s["arms"]["sft"]["mean_forgetting"] == pytest.approx(0.375)
    assert s["arms"]["sft"]["prior_mean"] == pytest.approx(0.375)
    assert s["arms"]["sft"]["puzzle_exact"] == 1.0
    assert s["arms"]["sft"]["format_collapse"] == pytest.approx(3 / 8)
    assert s["arms"]["rft"]["mean_forgetting"] == 0.0 and s["arms"]["rft"]["format_collapse"] == 0.0


def test_paired_stderr():
    assert paired_stderr([1, 1, 0, 0], [1, 1, 0, 0]) == 0.0
    # differences -1, 0, 1, 0: mean 0, sample variance 2/3, s.e. sqrt(2/3 / 4)
    assert paired_stderr([1, 1, 0, 0], [0, 1, 1, 0]) == pytest.approx(math.sqrt(2 / 3 / 4))
    assert math.isnan(paired_stderr([1], [0]))


def test_forgetting_table_deltas_and_stderr():
    table = forgetting_table(BASE, [SFT, RFT], SAMPLES).set_index(["arm", "benchmark"])
    assert table.loc[("sft", "a"), "delta"] == pytest.approx(-0.75)
    assert table.loc[("sft", "a"), "stderr"] == pytest.approx(paired_stderr([1, 1, 1, 1], [0, 1, 0, 0]))
    assert table.loc[("sft", "b"), "stderr"] == pytest.approx(paired_stderr([1, 1, 0, 0], [0, 1, 1, 0]))
    # no per-item scores for rft: the unpaired combination of the two standard errors
    assert table.loc[("rft", "b"), "stderr"] == pytest.approx(math.sqrt(0.2**2 + 0.2**2))
    assert table.loc[("sft", "jigsaw"), "kind"] == "puzzle" and table.loc[("sft", "jigsaw"), "delta"] == 1.0
    assert table.loc[("sft", "a"), "format_failures"] == 2


def test_curves_start_every_arm_at_the_base():
    curve = curves([BASE, SFT, RFT])
    assert list(zip(curve.arm, curve.step, strict=True)) == [("sft", 0), ("sft", 10), ("rft", 0), ("rft", 10)]
    sft = curve[(curve.arm == "sft") & (curve.step == 10)].iloc[0]
    assert sft.forgetting == pytest.approx(0.375)
    assert sft.logprob_change == pytest.approx(((-3.0 + 1.0) + (-2.0 + 1.0)) / 2)
    assert sft.param_relative == 0.3
    with pytest.raises(ValueError, match="base"):
        curves([SFT])


def test_arms_compared_at_matched_puzzle_accuracy():
    records = [BASE] + [
        record(arm, step, puzzle, 1.0 - f, 0.5)
        for arm, step, puzzle, f in [
            ("sft", 5, 0.7, 0.4),
            ("sft", 10, 1.0, 0.6),
            ("rft", 5, 0.3, 0.0),
            ("rft", 10, 0.6, 0.1),
            ("rft", 15, 0.9, 0.2),
            ("rollout_sft", 5, 0.5, 0.2),
        ]
    ]
    curve = curves(records)
    matched = at_accuracy(curve, 0.6)
    # sft crosses 0.6 between the base (step 0, puzzle 0, forgetting 0) and step 5 (0.7, 0.2): 6/7 of the way
    assert matched["sft"]["steps_to_matched"] == pytest.approx(30 / 7)
    assert matched["sft"]["forgetting_at_matched"] == pytest.approx(0.2 * 6 / 7)
    assert matched["rft"]["steps_to_matched"] == 10 and matched["rft"]["forgetting_at_matched"] == pytest.approx(0.05)
    assert math.isnan(matched["rollout_sft"]["steps_to_matched"])  # never reached: no number made up
    assert math.isnan(matched["rollout_sft"]["forgetting_at_matched"])
    final = summary("study-x", BASE, [records[2], records[5]], curve, 0.6)
    assert final["matched_accuracy"] == 0.6 and final["arms"]["rft"]["steps_to_matched"] == 10
    assert "steps_to_matched" not in final["arms"]["base"]
    # every arm reaches 0.5 (rollout_sft's best); forgetting there, interpolated between checkpoints
    assert common_accuracy(curve) == 0.5
    at_common = forgetting_at_level(curve, 0.5)
    assert at_common["sft"] == pytest.approx(0.2 * 0.5 / 0.7)  # base (0.0, 0) -> step 5 (0.7, 0.2)
    assert at_common["rft"] == pytest.approx(0.05 * 2 / 3)  # step 5 (0.3, 0) -> step 10 (0.6, 0.05)
    assert at_common["rollout_sft"] == pytest.approx(0.1)  # reached exactly at step 5
    assert final["common_accuracy"] == 0.5 and final["arms"]["sft"]["forgetting_at_common"] == at_common["sft"]


def test_no_common_accuracy_when_an_arm_never_beats_the_base():
    curve = curves([BASE, SFT, record("rft", 10, 0.0, 1.0, 0.5)])
    assert math.isnan(common_accuracy(curve))
    assert all(math.isnan(v) for v in forgetting_at_level(curve, common_accuracy(curve)).values())


def test_spearman():
    assert spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    assert math.isnan(spearman([1, 2, 3, 4], [1, 2, 3, 4]))  # four points rank perfectly by chance too often
    assert math.isnan(spearman([1, 1, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6]))  # one value per arm: says which arm


def test_dynamics_says_which_measure_tracks_forgetting():
    records = [BASE] + [
        record(arm, step, 1.0, 1.0 - f, 0.5, distance=d)
        for arm, step, f, d in [
            ("sft", 5, 0.4, 0.1),
            ("sft", 10, 0.6, 0.2),
            ("sft", 15, 0.7, 0.25),
            ("rft", 5, 0.0, 0.3),
            ("rft", 10, 0.1, 0.4),
            ("rft", 15, 0.15, 0.5),
        ]
    ]
    table, findings = dynamics(curves(records), {"sft": {"nll_per_token": 3.0}, "rft": {"nll_per_token": 0.5}})
    assert len(table) == findings["points"] == 6
    assert table.data_ppl.tolist() == pytest.approx([math.exp(3.0)] * 3 + [math.exp(0.5)] * 3)
    # one data NLL per arm: two distinct values cannot be ranked; the parameter distance has six
    assert math.isnan(findings["spearman_forgetting_vs_data_nll"])
    assert findings["spearman_forgetting_vs_param_distance"] == pytest.approx(-19 / 35)  # ranks 1..6 vs 4,5,6,1,2,3
    assert "not enough distinct points to rank with the base model's NLL" in findings["statement"]
    assert "the parameter distance from the base ranks forgetting better" in findings["statement"]
    _, none = dynamics(curves(records[:3]), {})
    assert none["statement"].startswith("Not enough points to rank forgetting against either measure (2 arm")


def test_quadratic_r2_and_the_interval_of_rho():
    xs = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    u_shape = [(x - 2.9) ** 2 for x in xs]  # a quadratic explains it all, a rank correlation little
    assert quadratic_r2(xs, u_shape) == pytest.approx(1.0) and spearman(xs, u_shape) == pytest.approx(-9 / 35)
    assert math.isnan(quadratic_r2([1, 2, 3, 4], [1, 4, 9, 16]))  # four points: a quadratic fits anything
    low, high = spearman_interval(0.5, 12)
    z, half = math.atanh(0.5), 1.96 * math.sqrt(1.06 / 9)
    assert (low, high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    assert -1 < low < 0.5 < high < 1


def test_data_nll_by_checkpoint_counts_what_the_arm_had_seen():
    rows = [{"step": s, "nll": nll, "tokens": n} for s, nll, n in ((0, 4.0, 2), (3, 2.0, 2), (7, 1.0, 1))]
    rft = {"nll_per_token": 9.0, "per_example": rows}
    assert data_nll_at(rft, 1) == 2.0 and data_nll_at(rft, 5) == 1.5 and data_nll_at(rft, 10) == 7.0 / 5
    sft = {"nll_per_token": 3.0, "per_example": [{"step": -1, "nll": 6.0, "tokens": 2}]}
    assert data_nll_at(sft, 1) == data_nll_at(sft, 100) == 3.0  # drawn from all of it at every step
    assert data_nll_at({"nll_per_token": 2.5}, 4) == 2.5  # a record from before per-example values


def test_weighted_examples_count_as_the_data_they_stand_for():
    rows = [{"step": 0, "nll": 4.0, "tokens": 2, "weight": 3.0}, {"step": 2, "nll": 1.0, "tokens": 1, "weight": 1.0}]
    assert data_nll_at({"per_example": rows}, 1) == 2.0 and data_nll_at({"per_example": rows}, 5) == 13.0 / 7


def test_the_data_sample_gives_early_checkpoints_examples_and_stands_for_all_the_data():
    """RFT-like data, 10 rollouts a step for 100 steps, scored 64 at most: strata of doubling length (0, 1, 2-3, ...,
    64-99) get 4 examples each at least and the rest by size; each stratum's weights add up to its size; the
    data before a checkpoint is estimated as if all were scored (here an example's NLL is its step's; exactly up to
    the spacing within a stratum)."""
    steps = [s for s in range(100) for _ in range(10)]
    sample = data_sample(steps, 64)
    picked = [i for i, _ in sample]
    assert len(sample) <= 64 and picked == sorted(set(picked))
    for lo, hi in ((0, 1), (1, 2), (2, 4), (4, 8), (64, 100)):
        inside = [(i, w) for i, w in sample if lo <= steps[i] < hi]
        assert len(inside) >= 4 and sum(w for _, w in inside) == pytest.approx(10 * (hi - lo))
    assert steps[picked[-1]] >= 97  # the last steps' data are in it
    entry = {"per_example": [{"step": steps[i], "nll": float(steps[i]), "tokens": 1, "weight": w} for i, w in sample]}
    for checkpoint in (1, 2, 4, 8, 100):
        assert data_nll_at(entry, checkpoint) == pytest.approx((checkpoint - 1) / 2, abs=0.1)
    assert data_sample([-1] * 30, 64) == [(i, 1.0) for i in range(30)]  # fewer than n: all of them
    sft = data_sample([-1] * 1000, 64)  # data without steps: one stratum, evenly spaced over all of it
    assert len(sft) == 64 and sft[0][0] < 16 and sft[-1][0] > 1000 - 16 and {w for _, w in sft} == {1000 / 64}


def test_predictors_name_what_explains_forgetting_and_when_they_cannot():
    steps = [1, 2, 3, 4, 5, 6]
    table = pd.DataFrame(
        {
            "arm": ["sft"] * 3 + ["rft"] * 3,
            "step": steps,
            "forgetting": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "forward_kl": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # tracks forgetting exactly
            "reverse_kl": [6.0, 1.0, 5.0, 2.0, 4.0, 3.0],
            "data_nll": [2.0, 2.0, 2.0, 1.0, 1.0, 1.0],  # one value per arm
            "param_relative": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "logprob_change": [math.nan] * 6,
        }
    )
    found = predictors(table)
    assert found["forward_kl"]["r2"] == pytest.approx(1.0) and found["forward_kl"]["spearman"] == pytest.approx(1.0)
    assert found["forward_kl"]["points"] == 6 and found["reverse_kl"]["spearman"] < 0.0
    assert math.isnan(found["data_nll"]["spearman"]) and math.isnan(found["data_nll"]["r2"])
    assert found["prior_logprob_change"]["points"] == 0 and math.isnan(found["prior_logprob_change"]["r2"])


def test_write_report_fills_the_folder(tmp_path):
    out = tmp_path / "report"
    s = write_report(out, "study-x", [BASE, SFT, RFT], SAMPLES, {"sft": {"nll_per_token": 2.0}}, {"sft": 10, "rft": 10})
    names = {p.name for p in out.iterdir()}
    assert names == {
        "summary.json", "forgetting.csv", "curves.csv", "dynamics.csv", "report.md",
        "tradeoff.png", "forgetting.png", "dynamics.png",
    }  # fmt: skip
    saved = json.loads((out / "summary.json").read_text())  # valid JSON: NaN written as null
    assert saved["study_id"] == "study-x" and set(saved["arms"]) == {"base", "sft", "rft"}
    assert saved["arms"]["sft"] == without_nan(s["arms"]["sft"])
    data = saved["training_data"]["sft"]
    assert data["data_nll"] == 2.0 and data["prompt_style"] == "direct"
    forgetting = pd.read_csv(out / "forgetting.csv")
    assert {"arm", "benchmark", "base", "score", "delta", "stderr", "format_failures"} <= set(forgetting.columns)
    assert "| sft |" in (out / "report.md").read_text()
    assert "| sft | direct | ground-truth answers |" in (out / "report.md").read_text()  # what each arm trained on
    names = {"forward_kl", "reverse_kl", "data_nll", "param_distance", "prior_logprob_change"}
    assert set(saved["predictors"]) == names
    assert saved["predictors"]["param_distance"]["r2"] is None  # two checkpoints: not enough points, said so
    assert "| param_distance | 2 | not enough points |" in (out / "report.md").read_text()


def test_mean_ci():
    stats = mean_ci([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and stats["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert stats["n"] == 3 and stats["low"] == pytest.approx(2.0 - stats["ci95"])
    assert math.isnan(mean_ci([0.5])["ci95"]) and mean_ci([0.5])["mean"] == 0.5
    assert mean_ci([1.0, math.nan, 3.0])["mean"] == 2.0 and mean_ci([1.0, math.nan, 3.0])["n"] == 2
    accuracy = mean_ci([1.0, 0.5, 0.9], bounds=(0.0, 1.0))  # a t-interval over 3 seeds runs past 1
    assert accuracy["mean"] + accuracy["ci95"] > 1.0 and accuracy["high"] == 1.0 and accuracy["low"] > 0.0


def test_aggregate_reports_over_seeds(tmp_path):
    reports = {}
    for seed, shift in ((0, 0.0), (1, 0.1)):
        sft = record("sft", 10, 1.0, 0.25 + shift, 0.5, distance=0.3)
        reports[seed] = tmp_path / f"seed{seed}"
        write_report(
            reports[seed],
            f"s{seed}",
            [BASE, sft, RFT],
            SAMPLES,
            {"sft": {"nll_per_token": 2.0}},
            {"sft": 10, "rft": 10},
        )
    out = tmp_path / "all"
    s = aggregate_reports(out, "study-all", reports)
    assert s["seeds"] == [0, 1] and s["seed_studies"] == {0: "s0", 1: "s1"}
    forgetting = s["arms"]["sft"]["mean_forgetting"]
    assert forgetting["values"] == pytest.approx([0.375, 0.325]) and forgetting["mean"] == pytest.approx(0.35)
    assert forgetting["ci95"] == pytest.approx(
        12.7062 * (0.05 / math.sqrt(2)) / math.sqrt(2), rel=1e-4
    )  # t * sd / sqrt(n)
    assert s["arms"]["rft"]["mean_forgetting"]["ci95"] == 0.0
    assert s["arms"]["sft"]["steps_to_matched"]["mean"] == 6 and s["matched_accuracy"] == 0.6  # 0 -> 1.0 by step 10
    assert math.isnan(s["arms"]["rft"]["steps_to_matched"]["mean"])  # puzzle 0.5 < 0.6 in both seeds
    assert s["common_accuracy"] == 0.5 and s["common_accuracy_by_seed"] == [0.5, 0.5]  # rft's best in each seed
    assert s["arms"]["sft"]["forgetting_at_common"]["values"] == pytest.approx([0.375 / 2, 0.325 / 2])
    assert s["arms"]["sft"]["steps_to_matched"]["n"] == 2 and s["arms"]["rft"]["steps_to_matched"]["n"] == 0
    table = pd.read_csv(out / "forgetting.csv").set_index(["arm", "benchmark"])
    assert table.loc[("sft", "a"), "delta"] == pytest.approx(-0.7) and table.loc[("sft", "a"), "seeds"] == 2
    curve = pd.read_csv(out / "curves.csv")
    assert {"puzzle_exact_ci95", "prior_mean_ci95"} <= set(curve.columns)
    assert {p.name for p in out.glob("*.png")} == {"tradeoff.png", "forgetting.png", "dynamics.png"}
    report = (out / "report.md").read_text()
    assert "| rft | 0.500 [0.500, 0.500] |" in report and "(0/2)" in report  # rft never reached 0.6
    assert "(0/" not in next(line for line in report.splitlines() if line.startswith("| base |"))  # no level


def _published_report(tmp_path):
    """A micro config whose report folder holds a finished (synthetic) report."""
    from forgetting.profiles import load_config

    config = load_config("micro", output_dir=str(tmp_path / "runs"))
    report = tmp_path / "runs" / config.study_id / "report"
    write_report(report, config.study_id, [BASE, SFT, RFT], SAMPLES, {}, {"sft": 10, "rft": 10})
    (report / "config.yaml").write_text("name: micro\n")
    (report / "run.json").write_text(json.dumps({"command": "python -m flows.study --profile X", "wall_time_s": 90,
                                                 "finished": "2026-11-25T20:00:00+00:00"}))  # fmt: skip
    code = {"training_code": "f88fe6cab2da3a7a", "commit": "0123456789abcdef", "changed": ["forgetting/x.py"]}
    recorded = {"python": "3.11.7", "cpu": "AMD EPYC", "cpus": 2, "gpu": None, "code": code, "packages": {"torch": "2"}}
    (report / "environment.json").write_text(json.dumps(recorded))
    return config


def test_publish_fills_the_readme_block_from_a_report(tmp_path):
    from flows.publish import markers, publish

    config = _published_report(tmp_path)
    begin, end = markers("results")
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n{begin}\nold\n{end}\n\n## after\n")
    publish(config, page=readme, root=tmp_path)
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{end}\n\n## after\n")
    assert (
        "`python -m flows.study --profile docs/results/config.yaml`" in text
        and "1.5 min on 2 CPU cores (AMD EPYC)" in text
    )
    assert "commit `0123456789` with changes to `forgetting/x.py`, on" in text
    assert "(`make install PINS=docs/results`)" in text
    assert "(docs/results/tradeoff.png)" in text and "| sft |" in text
    assert (tmp_path / "docs" / "results" / "tradeoff.png").is_file()
    written = {f.name for f in (tmp_path / "runs" / config.study_id / "report").iterdir()}
    assert written == {f.name for f in (tmp_path / "docs" / "results").iterdir()}  # every file the report holds


def test_publish_fills_a_named_block_and_leaves_the_others(tmp_path):
    from flows.publish import main, markers, publish
    from forgetting.config import ConfigError

    config = _published_report(tmp_path)
    (begin, end), (c_begin, c_end) = markers("results"), markers("results-control")
    readme = tmp_path / "README.md"
    readme.write_text(f"{begin}\nmain study\n{end}\n\n{c_begin}\nold\n{c_end}\n")
    (config.report_dir / "environment.json").unlink()  # as in a few reports published early on
    publish(config, page=readme, block="results-control", root=tmp_path)
    text = readme.read_text()
    assert "main study" in text and "old" not in text
    assert "its report). The run that wrote this" in text and "on 2 CPU cores (outputs" in text  # no pins, no CPU
    assert "(docs/results-control/tradeoff.png)" in text
    assert (tmp_path / "docs" / "results-control" / "summary.json").is_file()
    assert not (tmp_path / "docs" / "results").exists()
    with pytest.raises(ConfigError, match="no <!-- other:begin -->"):
        publish(config, page=readme, block="other", root=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "micro", "--block", "Results Two"])
    assert exit_.value.code == 2
    study_report = ["--report", str(config.report_dir)]
    for refused in (["--rewrite"], [*study_report, "--rewrite"], [*study_report, "--compare", "docs/results-sweep"]):
        with pytest.raises(SystemExit) as exit_:  # --rewrite needs a sweep's report folder, --compare a --rewrite
            main(["--page", str(readme), *refused])
        assert exit_.value.code == 2


def test_a_published_report_moves_to_another_page_with_links_from_there(tmp_path):
    """--report DIR --page docs/x.md: the block is written by the tool from the published files, its plots
    linked from the page's own folder and its command from the repository root."""
    from flows.publish import main, markers, publish

    config = _published_report(tmp_path)
    begin, end = markers("control")
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "log.md"
    readme.write_text(f"{begin}\n{end}\n")
    published = publish(config, page=readme, block="control", root=tmp_path)
    page.write_text(f"# log\n\n{begin}\nold\n{end}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("flows.publish.REPO_ROOT", tmp_path)
        main(["--report", str(published), "--page", str(page), "--block", "control"])
    text = page.read_text()
    assert "(control/tradeoff.png)" in text and "--profile docs/control/config.yaml`" in text and "old" not in text


def test_a_run_records_its_commit_and_changed_files_and_its_packages_pin_again(tmp_path, capsys):
    """environment's code: the checkout's commit and what differs from it (none outside a checkout); pins gives
    the recorded packages as constraints, without the project, the installers or a local build label, and runs on
    the standard library alone (make install PINS= calls it before anything is installed)."""
    from flows.pins import main
    from forgetting.environment import code_version, pins

    assert code_version(tmp_path) | {"training_code": None} == {"training_code": None, "commit": None, "changed": []}
    git = ("git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t")
    (tmp_path / "a.py").write_text("x = 1\n")
    for command in (("init", "-q"), ("add", "a.py"), ("commit", "-qm", "a")):
        subprocess.run((*git, *command), check=True)
    head = subprocess.run((*git, "rev-parse", "HEAD"), capture_output=True, text=True).stdout.strip()
    assert code_version(tmp_path)["commit"] == head and code_version(tmp_path)["changed"] == []
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    assert code_version(tmp_path)["changed"] == ["a.py", "b.py"]

    packages = {"torch": "2.9.0+cu128", "peft": "0.21.2", "forgetting-study": "0.1.0", "pip": "26.0", "Pillow": "13.0"}
    recorded = {"python": "3.11.7", "code": {"commit": head, "changed": ["a.py"]}, "packages": packages}
    lines = pins(recorded).splitlines()
    assert lines[0] == f"# the packages of a run on Python 3.11.7, code commit {head} with 1 file(s) changed"
    assert lines[1:] == ["torch==2.9.0", "peft==0.21.2", "Pillow==13.0"]
    (tmp_path / "environment.json").write_text(json.dumps(recorded))
    main([str(tmp_path)])
    assert capsys.readouterr().out == pins(recorded)
    bare = (sys.executable, "-S", "-m", "flows.pins", str(tmp_path))  # -S: no site-packages, as on a bare venv
    assert subprocess.run(bare, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout == pins(recorded)
    for bad, why in (("{", "is not JSON"), ('{"packages": {}}', "lists no packages"), (None, "no environment.json")):
        if bad is None:
            (tmp_path / "environment.json").unlink()
        else:
            (tmp_path / "environment.json").write_text(bad)
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path)])
        assert exit_.value.code == 2 and why in capsys.readouterr().err


def test_a_report_run_again_on_other_training_libraries_says_so(tmp_path, capsys):
    """A profile that is a report's config.yaml, beside an environment.json whose training libraries, training
    code or CPU rounding differ from this process's: a note names each difference and the pins command; none when
    they agree. A record without CPU rounding settings ran natively."""
    from flows.cli import note_recorded_environment
    from forgetting.environment import cpu_numerics, training_fingerprint

    ours, code = training_fingerprint()["libraries"], {"training_code": training_fingerprint()["code"]}
    numerics = cpu_numerics()
    assert numerics == {"MKL_CBWR": "AUTO,STRICT"}
    profile = tmp_path / "config.yaml"
    profile.write_text("name: micro\n")
    for packages, training, rounding, expected in (
        (ours, code, numerics, []),
        ({**ours, "peft": "0.1.0", "vllm": "9.9"}, code, numerics, ["peft 0.1.0, here", "vllm 9.9, here absent"]),
        (ours, {"training_code": "0" * 16}, numerics, [f"training code {'0' * 16}, here {code['training_code']}"]),
        (ours, code, None, ["CPU float rounding native, here MKL_CBWR=AUTO,STRICT"]),
    ):
        record = {"packages": packages, "code": training} | ({"cpu_numerics": rounding} if rounding else {})
        (tmp_path / "environment.json").write_text(json.dumps(record))
        note_recorded_environment(profile)
        err = capsys.readouterr().err
        assert all(part in err for part in expected) and bool(err) == bool(expected)
        assert not expected or f"make install PINS={tmp_path}" in err
    (tmp_path / "environment.json").write_text("[]")
    note_recorded_environment(profile)  # not a record: no note, no error
    assert capsys.readouterr().err == ""


def test_cpu_rounding_does_not_depend_on_the_threads_and_is_part_of_an_arm_key():
    """In a process that imports the project, a product whose sum MKL splits over threads (a weight gradient's
    over a batch's tokens) comes out the same on one thread and on two, and the arm key names the setting;
    FORGETTING_NUMERICS=native leaves it out (the keys arms had before it). A process whose MKL ran before it
    imported the project is refused when it computes a key, where the two differ natively."""
    product = (
        "g = torch.Generator().manual_seed(1); x, y = torch.randn(128, 5120, generator=g), torch.randn(5120, 512, "
        "generator=g); torch.set_num_threads(1); one = x @ y; torch.set_num_threads(2); two = x @ y; "
    )
    key = "from forgetting.environment import training_fingerprint as key; "
    probe = "import forgetting, torch; " + product + key + "print(torch.equal(one, two), 'cpu_numerics' in key())"
    early = (
        "import torch; " + product + "import forgetting; " + key + "from forgetting.errors import ConfigError\n"
        "try:\n    key(); print(torch.equal(one, two), 'accepted')\n"
        "except ConfigError as e:\n    print(torch.equal(one, two), 'refused', e)"
    )
    env = {k: v for k, v in os.environ.items() if k not in NUMERICS_VARIABLES}
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=REPO_ROOT)
    out = run([sys.executable, "-c", probe], env=env | {"FORGETTING_NUMERICS": "reproducible"})
    assert out.stdout.split() == ["True", "True"], out.stderr
    out = run([sys.executable, "-c", probe], env=env | {"FORGETTING_NUMERICS": "native"})
    assert out.stdout.split()[1] == "False", out.stderr  # the key arms always had
    out = run([sys.executable, "-c", early], env=env | {"FORGETTING_NUMERICS": "reproducible"})
    same, verdict = out.stdout.split()[:2]
    assert verdict == ("accepted" if same == "True" else "refused"), out.stdout + out.stderr
    assert verdict == "accepted" or "MKL ran before the variable was set" in out.stdout


def test_seeds_are_compared_at_one_level_and_say_how_many_reached_it(tmp_path):
    """Seed 0's arms all reach 0.5, seed 1's rft only 0.25: both seeds are read at 0.25, and a level-based
    number says how many seeds it rests on."""
    reports = {}
    for seed, rft_puzzle in ((0, 0.5), (1, 0.25)):
        rft = record("rft", 10, rft_puzzle, 1.0, 0.5)
        reports[seed] = tmp_path / f"seed{seed}"
        write_report(reports[seed], f"s{seed}", [BASE, SFT, rft], SAMPLES, {}, {"sft": 10, "rft": 10}, 0.4)
    s = aggregate_reports(tmp_path / "all", "study-all", reports)
    assert s["common_accuracy_by_seed"] == [0.5, 0.25] and s["common_accuracy"] == 0.25
    # sft goes from the base (puzzle 0, forgetting 0) to puzzle 1.0 and forgetting 0.375 at step 10: at 0.25, 0.09375
    assert s["arms"]["sft"]["forgetting_at_common"]["values"] == pytest.approx([0.09375, 0.09375])
    matched = s["arms"]["rft"]["steps_to_matched"]  # level 0.4: seed 0 reached it (0 -> 0.5 by step 10), seed 1 not
    assert matched["values"][0] == 8 and math.isnan(matched["values"][1]) and matched["n"] == 1
    assert "| 8 (1/2) |" in (tmp_path / "all" / "report.md").read_text()


def test_skipped_and_stopped_arms_are_named_with_their_reason_in_every_report(tmp_path):
    """An arm asked for and not trained is listed under `skipped` with the reason, an arm whose data say it ended
    early (iterative self-SFT at a round with no exact answer) under `stopped` with where; per seed when
    aggregated."""
    rounds = [{"round": 1, "rollouts": 8, "exact": 3, "kept": 2}, {"round": 2, "rollouts": 8, "exact": 0, "kept": 0}]
    stop = {"round": 2, "step": 5, "reason": "no exact answer in 8 samples"}
    iterative = record("iterative_sft", 10, 0.0, 0.5, 0.5)
    reports = {}
    for seed in (0, 1):
        skipped = {"rollout_sft": "no exact rollouts"} if seed == 1 else {}
        source = {"source": "rounds", "rounds": rounds, **({"stopped": stop} if seed == 0 else {})}
        data = {"iterative_sft": {"nll_per_token": 1.0, "rollout_source": source}}
        reports[seed] = tmp_path / f"seed{seed}"
        finals = {"sft": 10, "rft": 10, "iterative_sft": 10}
        one = write_report(reports[seed], f"s{seed}", [BASE, SFT, RFT, iterative], SAMPLES, data, finals, 0.4, skipped)
        assert one["skipped"] == skipped
        assert one["stopped"] == (
            {"iterative_sft": "round 2 (after step 5), no exact answer in 8 samples"} if seed == 0 else {}
        )
    first, second = ((reports[s] / "report.md").read_text() for s in (0, 1))
    assert "Skipped arms" not in first and "Stopped arms" not in second
    assert "**Skipped arms** (asked for, not in this report): `rollout_sft`: no exact rollouts.\n" in second
    assert "**Stopped arms** (a round kept no answer to train on: " in first
    assert "`iterative_sft`: round 2 (after step 5), no exact answer in 8 samples.\n" in first
    assert "stopped in round 2 (no exact answer in 8 samples): its final model is its step-5 model" in first
    s = aggregate_reports(tmp_path / "all", "study-all", reports)
    assert s["skipped"] == {"rollout_sft": {1: "no exact rollouts"}}
    assert s["stopped"] == {"iterative_sft": {0: "round 2 (after step 5), no exact answer in 8 samples"}}
    text = (tmp_path / "all" / "report.md").read_text()
    assert "`rollout_sft`: seed 1: no exact rollouts." in text
    assert "`iterative_sft`: seed 0: round 2 (after step 5), no exact answer in 8 samples." in text


def test_the_prefect_report_artifact_carries_its_plots(tmp_path):
    """A markdown artifact has no folder beside it: its plots are inlined, not linked."""
    from tasks.report import report_markdown

    write_report(tmp_path, "study-x", [BASE, SFT, RFT], SAMPLES, {}, {"sft": 10, "rft": 10})
    text = report_markdown(tmp_path)
    assert text.count("](data:image/png;base64,iVBOR") == 3  # the PNG signature, base64-encoded
    assert "(tradeoff.png)" not in text and "(tradeoff.png)" in (tmp_path / "report.md").read_text()


def _evaluation_folders(root, records) -> list:
    """Evaluation folders as forgetting/evaluation.py writes them: evaluation.json and samples.jsonl."""
    folders = []
    for rec in records:
        folder = root / f"{rec['arm']}-{rec['step']}"
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(json.dumps(rec))
        items = SAMPLES.get((rec["arm"], rec["step"]), [])
        (folder / "samples.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
        folders.append(folder)
    return folders


def test_a_report_is_made_again_only_when_what_it_reads_changed(tmp_path, monkeypatch):
    from forgetting import report_cache
    from forgetting.report_cache import current_report

    folders = _evaluation_folders(tmp_path / "evals", [BASE, SFT, RFT])
    out = tmp_path / "study-x" / "report"
    args = ("study-x", folders, {"sft": {"nll_per_token": 2.0}}, {"sft": 10, "rft": 10}, 0.6, {})
    first = current_report(out, *args)
    assert math.isnan(first["predictors"]["param_distance"]["r2"])  # NaN kept, not JSON's null
    plain = write_report(tmp_path / "plain", "study-x", [BASE, SFT, RFT], SAMPLES, *args[2:])
    assert json.dumps(first) == json.dumps(plain)  # what write_report returns, NaN for NaN

    def drawn() -> int:
        return (out / "tradeoff.png").stat().st_mtime_ns

    before = drawn()
    kept = current_report(out, *args)  # the same inputs: nothing is written, the same summary comes back
    assert json.dumps(kept) == json.dumps(first) and drawn() == before
    # Another matched accuracy, a changed evaluation, a missing report file: made again.
    assert current_report(out, *args[:4], 0.5, {})["matched_accuracy"] == 0.5 and drawn() != before
    current_report(out, *args)
    changed = record("sft", 10, 0.75, 0.25, 0.5)
    (folders[1] / "evaluation.json").write_text(json.dumps(changed))
    assert current_report(out, *args)["arms"]["sft"]["puzzle_exact"] == 0.75
    (out / "dynamics.png").unlink()
    current_report(out, *args)
    assert (out / "dynamics.png").is_file()
    (out / "report.md").write_text("edited")  # a report file changed since it was written: made again
    current_report(out, *args)
    assert "| sft |" in (out / "report.md").read_text()
    before = drawn()
    (out.parent / "report-cache.json").write_text('{"inputs": ')  # a damaged record of the last report: made again
    assert json.dumps(current_report(out, *args)) == json.dumps(current_report(out, *args)) and drawn() != before
    before = drawn()
    monkeypatch.setattr(report_cache, "SOURCES", (("report.py", "other = 1\n"),))  # this process imported other code
    current_report(out, *args)
    assert drawn() != before


def test_a_damaged_evaluation_is_named_with_the_folder_to_delete(tmp_path):
    from forgetting.storage import DamagedFile

    folder = _evaluation_folders(tmp_path / "evals", [SFT])[0]
    with open(folder / "samples.jsonl", "a") as f:
        f.write('{"benchmark": "jig')  # cut short after its first rows
    lines = (folder / "samples.jsonl").read_text().count("\n") + 1
    with pytest.raises(DamagedFile, match=re.escape(f"samples.jsonl cannot be read (line {lines}: ")) as err:
        read_evaluation(folder)
    assert str(err.value).endswith(f"; delete {folder.resolve()} and run again to have it made anew")
    (folder / "evaluation.json").write_bytes(b"\xff\xfe")
    with pytest.raises(DamagedFile, match="evaluation.json cannot be read"):
        read_evaluation(folder)

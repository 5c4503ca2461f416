"""The flows for real: Prefect (test harness), MLflow (sqlite under tmp), files on disk."""

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from safetensors.torch import load_file

from flows.puzzles import puzzles_flow
from flows.study import study
from forgetting import world
from forgetting.config import OutputConfig
from forgetting.iterative_sft import train_iterative_sft
from tasks.tracking import tracking_uri

pytestmark = pytest.mark.slow


def _runs(config):
    client = MlflowClient(tracking_uri(config))
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    return client, client.search_runs([experiment.experiment_id])


def test_puzzles_flow_writes_and_tracks_the_dataset(prefect_harness, micro):
    config = micro.model_copy(update={"puzzles": micro.puzzles.model_copy(update={"grid": "3x3", "source": "bundled"})})
    path = puzzles_flow(config)
    client, runs = _runs(config)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert parent.data.tags["study_id"] == child.data.tags["study_id"] == config.study_id
    assert parent.data.params["puzzles.grid"] == "3x3"
    assert child.info.status == parent.info.status == "FINISHED"
    assert child.data.params["puzzles.path"] == path
    assert child.data.metrics["puzzles.train_count"] == config.puzzles.n_train
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "puzzles")}
    assert artifacts == {"puzzles/manifest.json", "puzzles/contact_sheet.png"}
    environment = json.loads(Path(client.download_artifacts(parent.info.run_id, "environment.json")).read_text())
    assert environment["packages"]["torch"] and environment["python"].startswith("3.")  # what pip freeze lists
    assert environment["cpus"] >= 1 and len(environment["code"]["training_code"]) == 16  # and its commit, if any
    contexts = {i.tags[0].value for i in child.inputs.dataset_inputs}
    assert contexts == {"train", "test"}
    # The artifacts live beside the store, under the output dir, not in ./mlruns.
    assert (config.output.path / "mlartifacts").is_dir()


def test_study_flow_runs_the_stages_that_exist(prefect_harness, micro, monkeypatch):
    from tasks import evaluation_processes

    micro.evaluation.processes = 2  # a helper evaluates sft's and rft's models while rollout_sft starts (2 threads)
    helpers, start = [], evaluation_processes._start
    monkeypatch.setattr(evaluation_processes, "_start", lambda spec, stem: helpers.append(spec) or start(spec, stem))
    result = study(micro)
    if torch.get_num_threads() >= 2:
        assert len(helpers) == 1 and not helpers[0]["final"] and set(helpers[0]["training"]) == {"sft", "rft"}
    assert result["study_id"] == micro.study_id
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["config_hash"] == micro.config_hash()
    _, runs = _runs(micro)
    names = {r.info.run_name for r in runs}
    assert names == {
        micro.study_id,
        "puzzles",
        "base",
        "sft",
        "rft",
        "rollout_sft",
        "eval-base",
        "eval-sft",
        "eval-rft",
    }
    assert set(result["arms"]) == {"sft", "rft"}  # the micro base never solves a puzzle: no rollout-SFT data
    sft = next(r for r in runs if r.info.run_name == "sft")
    assert sft.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"] and "train_loss" in sft.data.metrics
    assert not any(k.startswith("puzzle") for k in sft.data.metrics)  # one source: the evaluation's
    # the arm's own settings as parameters, the Trainer's full arguments as one file; the experiment opens on runs
    assert sft.data.params["learning_rate"] == str(micro.arms.sft.learning_rate) and "model.finetune" in sft.data.params
    assert not {"_name_or_path", "accelerator_config", "report_to"} & sft.data.params.keys()
    client = MlflowClient(tracking_uri(micro))
    assert {a.path for a in client.list_artifacts(sft.info.run_id)} >= {"trainer_args.json", "final"}
    experiment = client.get_experiment(sft.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    rft = next(r for r in runs if r.info.run_name == "rft")
    assert "reward" in rft.data.metrics and rft.info.status == "FINISHED"
    assert result["base_model"].endswith("assets/micro-base")
    for task in world.PRIOR_TASKS:
        lines = (Path(result["prior_benchmarks"]) / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == micro.pretrain.eval_items
    # Every arm evaluated through lm-eval at each checkpoint; the report holds base and arms, on the parent run too.
    report = Path(result["report"])
    summary = json.loads((report / "summary.json").read_text())
    assert summary["study_id"] == micro.study_id and set(summary["arms"]) == {"base", "sft", "rft"}
    # the arm asked for and not trained is named with its reason, in the report and the flow run's state
    assert "never solved a puzzle" in summary["skipped"]["rollout_sft"] and list(summary["skipped"]) == ["rollout_sft"]
    assert "**Skipped arms** (asked for, not in this report): `rollout_sft`: " in (report / "report.md").read_text()
    for values in summary["arms"].values():
        assert 0.0 <= values["puzzle_exact"] <= 1.0 and 0.0 <= values["prior_mean"] <= 1.0
    assert {p.name for p in report.glob("*.png")} == {"tradeoff.png", "forgetting.png", "dynamics.png"}
    curves = pd.read_csv(report / "curves.csv")
    assert sorted(curves[curves.arm == "sft"].step) == [0, 2, 4]  # evaluation.every 2, 4 steps
    assert curves.forward_kl.notna().all() and curves.reverse_kl.notna().all()  # a value at every checkpoint
    assert set(summary["predictors"]) >= {"forward_kl", "data_nll", "param_distance"}
    eval_sft = next(r for r in runs if r.info.run_name == "eval-sft")
    assert eval_sft.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
    assert eval_sft.data.params["arm"] == "sft" and eval_sft.data.params["steps"] == "2,4"
    assert eval_sft.data.params["evaluation.limit"] == str(micro.evaluation.limit)
    history = MlflowClient(tracking_uri(micro)).get_metric_history(eval_sft.info.run_id, "prior_mean")
    assert [m.step for m in history] == [2, 4]
    assert eval_sft.data.metrics["puzzle_exact"] == summary["arms"]["sft"]["puzzle_exact"]  # its final step's
    assert run.data.metrics.keys() >= {"sft.puzzle_exact", "rft.mean_forgetting", "base.prior_mean"}
    # An unchanged rerun reuses the dataset, the trained arms and the report on disk.
    drawn = (report / "tradeoff.png").stat().st_mtime_ns
    state = study(micro, return_state=True)
    assert state.is_completed() and state.name == "Completed, arms skipped"
    assert state.message.startswith("rollout_sft: no exact rollouts in ")
    again = state.result()
    assert again["puzzles"] == result["puzzles"] and again["arms"] == result["arms"]
    assert json.dumps(again["summary"]) == json.dumps(result["summary"])
    assert (report / "tradeoff.png").stat().st_mtime_ns == drawn  # kept, not drawn again


def test_pretrain_base_writes_where_the_command_line_says(prefect_harness, tmp_path, monkeypatch):
    """--destination takes the base; the shipped copy in assets/ is left as it was."""
    import hashlib
    import sys

    from flows import pretrain_base
    from forgetting.config import REPO_ROOT

    shipped = REPO_ROOT / "assets" / "micro-base" / "model.safetensors"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    steps = ["--set", "pretrain.steps=4", "--set", "pretrain.eval_every=4", "--set", "pretrain.eval_items=8"]
    argv = ["--profile", "micro", *steps, "--output-dir", str(tmp_path / "out"), "--destination", str(tmp_path / "b")]
    monkeypatch.setattr(sys, "argv", ["flows/pretrain_base.py", *argv])
    pretrain_base.main()
    card = json.loads((tmp_path / "b" / "model_card.json").read_text())
    assert "--destination" in card["command"] and (tmp_path / "b" / "model.safetensors").is_file()
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before


def test_study_can_pretrain_its_own_base(prefect_harness, tmp_path):
    from forgetting.profiles import load_config

    config = load_config(
        "micro",
        ["model.pretrain=true", "pretrain.steps=8", "pretrain.eval_every=8", "pretrain.eval_items=8"],
        output_dir=str(tmp_path),
    )
    result = study(config)
    base = Path(result["base_model"])
    assert base.parent == tmp_path / "base" and (base / "model_card.json").is_file()
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    assert study(config)["base_model"] == str(base)  # reused, not pretrained again
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp


def test_evaluate_flow_alone_reports_what_is_trained(prefect_harness, micro):
    from flows.evaluate import evaluate_flow

    summary = evaluate_flow(micro)  # nothing trained yet for this config: the base alone
    assert set(summary["arms"]) == {"base"} and summary["arms"]["base"]["mean_forgetting"] == 0.0
    assert "Not enough points" in summary["dynamics"]["statement"]
    report = micro.output.path / micro.study_id / "report"
    assert (report / "forgetting.csv").is_file() and (report / "tradeoff.png").is_file()


def test_study_over_seeds_reports_mean_and_ci(prefect_harness, tmp_path):
    from forgetting.profiles import load_config

    config = load_config(
        "micro", ["seeds=[0,1]", "arms.rft.enabled=false", "arms.rollout_sft.enabled=false"], output_dir=str(tmp_path)
    )
    result = study(config)
    assert set(result["seeds"]) == {0, 1}
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["arms"]) == {"base", "sft"}
    sft = summary["arms"]["sft"]["puzzle_exact"]
    assert len(sft["values"]) == 2 and min(sft["values"]) <= sft["mean"] <= max(sft["values"])
    # each seed is the single-seed study with that seed: its own report, reused by a later single-seed run
    for seed, one in result["seeds"].items():
        assert one["study_id"] == config.model_copy(update={"seed": seed, "seeds": []}).study_id
        assert Path(one["report"]).is_dir()
    _, runs = _runs(config)
    seed_runs = [r for r in runs if r.data.tags.get("stage") == "seed"]
    assert sorted(r.info.run_name for r in seed_runs) == ["seed 0", "seed 1"]
    assert all(r.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"] for r in seed_runs)
    parent = mlflow.get_run(result["mlflow_run_id"])
    assert {"sft.puzzle_exact", "sft.puzzle_exact.ci95"} <= parent.data.metrics.keys()
    # the report says how to reproduce it: its config as a profile (the same study id) and the command
    run_info = json.loads((Path(result["report"]) / "run.json").read_text())
    assert run_info["command"].endswith("report/config.yaml") and run_info["wall_time_s"] > 0
    assert load_config(str(Path(result["report"]) / "config.yaml")).study_id == config.study_id
    assert "trl" in json.loads((Path(result["report"]) / "environment.json").read_text())["packages"]

    # the seeds side by side in processes of their own: the same weights and scores, logged in the same places;
    # two at a time, so seed 2 starts as the first ends, and takes both cores once it runs alone
    side = config.model_copy(
        update={"seeds": [0, 1, 2], "seed_processes": 2, "output": OutputConfig(dir=str(tmp_path / "side"))}
    )
    beside = study(side)
    for seed in (0, 1):
        one = beside["seeds"][seed]
        assert one["study_id"] == result["seeds"][seed]["study_id"]
        alone, other = (
            load_file(next(Path(r["seeds"][seed]["arms"]["sft"]).glob("*.safetensors"))) for r in (result, beside)
        )
        # bit for bit, though seed 0 trained on 2 threads alone and on 1 beside seed 1 (forgetting/__init__.py:
        # REPRODUCIBLE_NUMERICS; natively an Intel Xeon's MKL rounds 1 thread and 2 apart, 4e-6 in 4 steps)
        assert alone.keys() == other.keys() and all(torch.equal(alone[k], other[k]) for k in alone)
        forgetting = [(Path(r["seeds"][seed]["report"]) / "forgetting.csv").read_text() for r in (result, beside)]
        assert forgetting[0] == forgetting[1]
        summaries = [
            _flat(json.loads((Path(r["report"]) / "summary.json").read_text())["arms"])
            for r in (result["seeds"][seed], one)
        ]
        # the same accuracies; the data NLL through the trained weights, so to the weights' rounding
        assert summaries[0].keys() == summaries[1].keys() and all(
            a == b or (isinstance(a, float) and isinstance(b, float) and a == pytest.approx(b, rel=1e-6))
            for a, b in zip(summaries[0].values(), summaries[1].values(), strict=True)
        )
    last = (Path(beside["seeds"][2]["report"]).parent / "seed-process.log").read_text()
    assert f"seed 2 done, on {min(2, os.cpu_count())} threads at its end" in last
    _, runs = _runs(side)
    by_id = {r.info.run_id: r for r in runs}
    seed_runs = [r for r in runs if r.data.tags.get("stage") == "seed"]
    assert all(r.data.tags["mlflow.parentRunId"] == beside["mlflow_run_id"] for r in seed_runs) and len(seed_runs) == 3
    arm_runs = [r for r in runs if r.data.tags.get("stage") == "train"]
    assert {by_id[r.data.tags["mlflow.parentRunId"]].info.run_name for r in arm_runs} == {"seed 0", "seed 1", "seed 2"}
    assert len(list((tmp_path / "side" / "evals").glob("base-*"))) == 1
    seed_flows = FlowFilter(name=FlowFilterName(any_=["study-seed"]))
    with get_client(sync_client=True) as client:
        names = {r.name for r in client.read_flow_runs(flow_filter=seed_flows)}
    assert {f"{side.study_id} seed {s}" for s in (0, 1, 2)} <= names


def test_a_seed_that_fails_in_its_own_process_is_named_with_its_last_lines(prefect_harness, micro):
    """Both seeds' processes fail (their study's MLflow run does not exist): the error names each, with its log."""
    from tasks.seed_processes import run_seeds
    from tasks.tracking import configure

    config = micro.model_copy(update={"seeds": [0, 1], "seed_processes": 2})
    configure(config)
    done = []
    with pytest.raises(RuntimeError) as err:
        run_seeds(config, "no-such-run", lambda percent, what: done.append(percent))
    message = str(err.value)
    assert "seed 0: process exited with 1" in message and "seed 1: process exited with 1" in message
    assert "no-such-run" in message and done == [50.0, 100.0]
    for one in config.per_seed():
        assert "no-such-run" in (one.report_dir.parent / "seed-process.log").read_text()


def test_sweep_runs_every_point_and_compares_frontiers(prefect_harness, tmp_path):
    """Two SFT learning rates: two SFT arms, one RFT arm the points share (trained and counted once), a
    frontier per family, forgetting along it at matched puzzle accuracy, the studies nested in the sweep's run."""
    from flows.publish import markers, publish
    from flows.sweep import sweep
    from forgetting.profiles import load_config
    from forgetting.sweep import sweep_dir, sweep_id

    config = load_config("micro", ["sweep.grid={arms.sft.learning_rate: [0.001, 0.0001]}"], str(tmp_path))
    summary = sweep(config)
    report = sweep_dir(config) / "report"
    frame = pd.read_csv(report / "frontier.csv")
    assert {"arm", "point", "seed", "step", "puzzle_exact", "prior_mean", "on_frontier"} <= set(frame.columns)
    assert frame[frame.arm == "sft"].arm_key.nunique() == 2 and frame[frame.arm == "rft"].arm_key.nunique() == 1
    assert len(frame[frame.arm == "rft"]) == 3  # steps 0, 2, 4 of the one RFT arm, not once per point
    assert frame.groupby("arm").on_frontier.any().all()
    matched = pd.read_csv(report / "matched.csv")
    assert set(matched.arm) == {"sft", "rft"} and set(matched.puzzle_level) == {0.2, 0.4, 0.6, 0.8, 1.0}
    assert set(pd.read_csv(report / "against_rft.csv").arm) == {"sft"} and len(summary["against_rft"]) == 5
    assert list(summary["points"]) == ["p0", "p1"] and (report / "frontier.png").is_file()
    assert (report / "predictors.png").is_file() and "![predictors](predictors.png)" in (
        report / "report.md"
    ).read_text()
    assert frame.forward_kl[frame.step > 0].notna().all() and set(summary["predictors"]) >= {"forward_kl", "data_nll"}
    assert summary["predictors"]["param_distance"]["points"] == (frame.step > 0).sum()  # pooled, each arm once
    sits = pd.read_csv(report / "at_frontier.csv")  # every predictor at each family's frontier checkpoints
    assert set(sits.predictor) == {"forward_kl", "reverse_kl", "data_nll", "param_distance", "prior_logprob_change"}
    paired = pd.read_csv(report / "at_frontier_against_rft.csv")  # the candidate causes, SFT's minus RFT's
    assert set(paired.predictor) == {"forward_kl", "reverse_kl", "data_nll", "param_distance"}
    assert set(paired.arm) == {"sft"} and (paired.agree <= paired.n_paired).all()
    page = (report / "report.md").read_text()
    assert "Where the frontiers sit" in page and "The same, seed by seed" in page and (report / "causes.png").is_file()
    # which learning rate makes up SFT's frontier at each level it reaches (RFT has one point: no rows)
    chosen = pd.read_csv(report / "frontier_points.csv")
    assert list(chosen.columns) == ["arm", "puzzle_level", "point", "n_seeds"] and set(chosen.arm) <= {"sft"}
    reached = matched[matched.arm == "sft"].set_index("puzzle_level").n_reached
    assert chosen.groupby("puzzle_level").n_seeds.sum().to_dict() == reached[reached > 0].to_dict()
    assert ("Which settings make up those frontiers" in page) == (len(chosen) > 0)
    settings = pd.read_csv(report / "settings.csv")  # each learning rate on a frontier of its own, p1 against p0
    assert set(settings.arm) == {"sft p0", "sft p1"} and "| puzzle_level | sft p1 - sft p0 |" in page
    assert set(pd.read_csv(report / "settings_against_first.csv").reference) == {"sft p0"}
    client, runs = _runs(config)
    parent = next(r for r in runs if r.info.run_name == summary["sweep_id"])
    studies = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(studies) == 2 and {r.info.run_name for r in studies} == _study_ids(config)
    # it says how to reproduce it, and flows.publish finds it from the profile (a study's old files go)
    run_info = json.loads((report / "run.json").read_text())
    assert run_info["command"] == f"python -m flows.sweep --profile {report / 'config.yaml'}"
    assert sweep_id(load_config(str(report / "config.yaml"))) == summary["sweep_id"]
    begin, end = markers("results")
    readme, stale = tmp_path / "README.md", tmp_path / "docs" / "results" / "tradeoff.png"
    readme.write_text(f"{begin}\nold\n{end}\n")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a study's plot")
    publish(config, page=readme, root=tmp_path)
    text = readme.read_text()
    assert "`python -m flows.sweep --profile docs/results/config.yaml`" in text
    assert "(docs/results/frontier.png)" in text
    assert (tmp_path / "docs" / "results" / "at_frontier_against_rft.csv").is_file() and not stale.exists()
    assert {f.name for f in report.iterdir()} == {f.name for f in (tmp_path / "docs" / "results").iterdir()}
    # written again from its published frontier.csv by the current code: the same files, byte for byte
    from flows.publish import main

    published = tmp_path / "docs" / "results"
    before = {f.name: f.read_bytes() for f in published.iterdir() if f.suffix in (".csv", ".md", ".json")}
    main(["--report", str(published), "--block", "results", "--page", str(readme), "--rewrite"])
    assert {name: (published / name).read_bytes() for name in before} == before and readme.read_text() == text
    # the SFT arms again with no RFT of their own, compared with the published sweep's: the same comparison
    alone = ["sweep.grid={arms.sft.learning_rate: [0.001, 0.0001]}", "arms.rft.enabled=false"]
    again = load_config("micro", [*alone, f"sweep.reference={published}"], str(tmp_path))
    borrowed = sweep(again)
    assert borrowed["reference"] == {"report": str(published), "sweep_id": summary["sweep_id"], "checkpoints": 3}
    for name in ("matched", "against_rft", "at_frontier_against_rft"):
        assert borrowed[name] == summary[name], name
    page = (sweep_dir(again) / "report" / "report.md").read_text()
    assert f"- `RFT`: 3 checkpoints of sweep `{summary['sweep_id']}`" in page
    # and compared with the published sweep's own SFT: the same checkpoints under another name; nothing else moves
    twin_config = load_config("micro", [*alone, f"sweep.reference={published}", f"sweep.compare=[{published}]"])
    twin = sweep(twin_config)
    assert [c["families"] for c in twin["compared"]] == [["sft@micro"]]
    assert [(row["reference"], row["puzzle_level"]) for row in twin["against_compared"]] == [
        ("sft@micro", level) for level in (0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    frame = pd.read_csv(sweep_dir(twin_config) / "report" / "frontier.csv")
    keys = ["seed", "step", "puzzle_exact", "prior_mean", "forgetting"]
    ours, theirs = (frame[frame.arm == arm].sort_values(keys)[keys] for arm in ("sft", "sft@micro"))
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
    for name in ("against_rft", "at_frontier_against_rft", "predictors"):
        assert twin[name] == borrowed[name], name


def _study_ids(config) -> set[str]:
    from forgetting.sweep import points

    return {one.study_id for _, _, one in points(config)}


def test_every_arm_on_the_think_prompt(prefect_harness, tmp_path, monkeypatch):
    """The paper's arms on the think prompt, through the study flow: answer-only SFT, teacher-SFT, RFT,
    rollout-SFT on an early RFT checkpoint's exact rollouts, then from the final model, and iterative self-SFT
    in two rounds. The tiny-think base on the code_colours cue (corners in the colours whose codes it knows)
    solves some puzzles, so rollout-SFT and iterative-SFT's first round get data. Every setting of every arm's
    section is read by some stage (recorded as the flow runs)."""
    from forgetting import inference, rollout_sft
    from forgetting.arm_config import ArmsConfig
    from forgetting.config import ConfigError
    from forgetting.profiles import load_config
    from forgetting.schema import Section

    think = [
        "model.name_or_path=tiny-think",
        "puzzles.cue=code_colours",
        "puzzles.image_size=112",
        "arms.sft.prompt_style=think",
        "arms.teacher_sft={enabled: true, steps: 4, batch_size: 4, learning_rate: 0.001}",
        "arms.rft.prompt_style=think",
        "arms.rft.max_new_tokens=48",
        "arms.rollout_sft.prompt_style=think",
        "arms.rollout_sft.rollout_source=early",
        "arms.rollout_sft.samples_per_puzzle=16",
        "arms.iterative_sft={enabled: true, steps: 4, rounds: 2, batch_size: 4, learning_rate: 0.001, "
        "prompt_style: think, samples_per_puzzle: 16, temperature: 0.9}",
        "evaluation.every=4",
    ]
    config = load_config("micro", think, output_dir=str(tmp_path))
    read, plain = set(), object.__getattribute__
    temperatures = []  # of fresh samples: rollout-SFT's at RFT's, iterative-SFT's rounds at its own

    def sampling(temperature, **keywords):
        temperatures.append(temperature)
        return inference.sampling(temperature, **keywords)

    def recording(self, name):
        kind = plain(self, "__class__")
        if name in kind.model_fields:
            read.add((kind.__name__, name))
        return plain(self, name)

    monkeypatch.setattr(Section, "__getattribute__", recording)
    monkeypatch.setattr(rollout_sft, "sampling", sampling)
    result = study(config)
    monkeypatch.undo()
    assert set(temperatures) == {config.arms.rft.temperature, 0.9}
    for arm in ArmsConfig.model_fields:
        if isinstance(getattr(config.arms, arm), Section) and getattr(config.arms, arm).enabled:
            kind = type(getattr(config.arms, arm))
            unread = {f for f in kind.model_fields if (kind.__name__, f) not in read}
            assert not unread, f"arms.{arm}: settings no stage read: {unread}"
    assert set(result["arms"]) == {"sft", "teacher_sft", "rft", "rollout_sft", "iterative_sft"}
    report = Path(result["report"])
    summary = json.loads((report / "summary.json").read_text())
    data = summary["training_data"]
    assert {a: d["prompt_style"] for a, d in data.items()} == dict.fromkeys(data, "think")
    assert data["sft"]["reasoning_tokens"] == 0 and data["teacher_sft"]["reasoning_tokens"] > 20
    assert data["rollout_sft"]["source"]["source"] == "early" and data["rollout_sft"]["source"]["rft_step"] == 2
    assert data["rollout_sft"]["source"]["kept"] > 0
    assert summary["arms"]["teacher_sft"]["data_nll_reasoning"] > 0  # in MLflow too, on the study's run
    assert "teacher_sft.data_nll_answer" in mlflow.get_run(result["mlflow_run_id"]).data.metrics
    text = (report / "report.md").read_text()
    assert "early RFT checkpoint (step 2)" in text and "teacher's explanation + answer" in text
    # iterative-SFT: each round sampled the model as it stood (round 2 the arm's step-2 checkpoint) and trained on
    # its exact samples; the checkpoints carry the arm's steps, and each sample the step before its round
    iterative = Path(result["arms"]["iterative_sft"]).parent
    rounds = data["iterative_sft"]["source"]["rounds"]
    assert [(r["round"], r["first_step"]) for r in rounds] == [(1, 1), (2, 3)] and all(r["kept"] for r in rounds)
    assert rounds[1]["checkpoint"] == str(iterative / "checkpoint-2")
    assert sorted(p.name for p in iterative.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(iterative.glob("round-*"))  # each round's Trainer folder gone once its checkpoints moved up
    (iterative / "round-2").mkdir()  # as a run killed after the last round's final/ moved up leaves it
    (iterative / "round-2" / "trainer_state.json").write_text("{}")
    assert train_iterative_sft(config, "", None, iterative).final == iterative / "final"  # finished: no work
    assert not (iterative / "round-2").exists()
    steps = [json.loads(line)["step"] for line in (iterative / "training_data.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and set(steps) == {0, 2} and len(steps) == sum(r["kept"] for r in rounds)
    assert f"own samples, 2 rounds, exact {rounds[0]['exact']:,}, {rounds[1]['exact']:,} of 512 each" in text
    client, runs = _runs(config)
    run = next(r for r in runs if r.info.run_name == "iterative_sft")  # its curve runs on over the rounds
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert "rollout_source.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # every arm trained and was evaluated on the think prompt
    for arm in ("sft", "teacher_sft", "rollout_sft"):
        line = (Path(result["arms"][arm]).parent / "training_data.jsonl").read_text().splitlines()[0]
        assert json.loads(line)["completion"].endswith("</answer>"), arm
    curves = pd.read_csv(report / "curves.csv")
    assert curves[curves.step == 0].puzzle_exact.nunique() == 1  # the base, on the same think puzzle prompt
    assert set(curves[curves.arm == "iterative_sft"].step) == {0, 4}
    # from the final RFT model instead: a rollout-SFT arm of its own, the other arms reused
    final = load_config("micro", [*think, "arms.rollout_sft.rollout_source=final"], str(tmp_path))
    again = study(final)
    assert again["arms"]["rft"] == result["arms"]["rft"]
    assert again["arms"]["rollout_sft"] != result["arms"]["rollout_sft"]
    summary = json.loads((Path(again["report"]) / "summary.json").read_text())
    source = summary["training_data"]["rollout_sft"]["source"]
    assert source["source"] == "final" and source["rft_step"] == final.arms.rft.steps
    with pytest.raises(
        ConfigError, match=r"early_step 3 is not a step the RFT arm saves a checkpoint at; it saves at \[2\]"
    ):
        load_config("micro", [*think, "arms.rollout_sft.early_step=3"], str(tmp_path))  # before any work


def test_arms_on_two_processes(prefect_harness, micro):
    """arms.num_processes=2: each arm trains under accelerate launch on 2 processes (here CPU ones, over gloo),
    which the flow waits for; it sees one arm folder, rank 0 alone writes the rollouts (every rank's, once) and
    logs each step once to the arm's MLflow run."""
    from flows.train import train_flow
    from forgetting.arms import arm_dir
    from forgetting.models import SHIPPED
    from forgetting.puzzle_data import PuzzleDataset

    config = micro.model_copy(deep=True)
    config.arms.num_processes = 2
    config.arms.rollout_sft.enabled = False
    paths = train_flow(config)
    assert set(paths) == {"sft", "rft"}
    puzzles = next((config.output.path / "puzzles").iterdir())
    sft = arm_dir(config, "sft", str(SHIPPED["micro"]), PuzzleDataset(puzzles, puzzles.name))
    assert Path(paths["sft"]) == sft and (sft / "final" / "model.safetensors").is_file()
    assert len(list((config.output.path / "arms").iterdir())) == 2  # one folder an arm, as with one process
    rft = Path(paths["rft"])
    rows = [json.loads(line) for line in (rft / "rollouts.jsonl").read_text().splitlines()]
    steps = config.arms.rft.steps
    assert len(rows) == steps * config.arms.rft.batch_size  # 8 completions a step, 4 from each process
    assert sorted({r["step"] for r in rows}) == list(range(steps))
    client, runs = _runs(config)
    for arm, metric in (("sft", "loss"), ("rft", "reward")):
        run = next(r for r in runs if r.info.run_name == arm)
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == list(range(1, steps + 1))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


# What paper-3b-smoke may change of paper-3b: the model, sizes, steps, the benchmarks' stand-in, CPU settings.
SMOKE_SHRINKS = {
    "name", "output.dir", "model.name_or_path", "model.dtype", "model.device",
    "arms.checkpoint_every", "arms.rft.use_vllm",
    "puzzles.source", "puzzles.folder", "puzzles.image_size", "puzzles.n_train", "puzzles.n_test",
    "evaluation.benchmarks", "evaluation.limit", "evaluation.batch_size", "evaluation.every",
    *(f"arms.{a}.{k}" for a in ("sft", "rft", "rollout_sft") for k in ("steps", "batch_size", "micro_batch_size")),
    "arms.rft.num_generations", "arms.rft.max_new_tokens",
}  # fmt: skip


@pytest.mark.slow
def test_the_paper_profile_runs_end_to_end_on_its_architecture_cut_down(prefect_harness, tmp_path):
    """paper-3b-smoke: every stage of the paper profile's code path on Qwen2.5-VL-3B's architecture cut to 2 text
    layers and 2 vision blocks, initialised at random by the study, with the stock chat template and generation
    settings: LoRA, gradient checkpointing, micro batches, think style, 3x3 photo jigsaws, a group lm-eval scores
    as one. It differs from paper-3b only where a smoke run must shrink."""
    from forgetting.profiles import load_config

    smoke = load_config("paper-3b-smoke", output_dir=str(tmp_path))
    paper, mine = _flat(load_config("paper-3b").model_dump(mode="json")), _flat(smoke.model_dump(mode="json"))
    assert {k for k in paper.keys() | mine.keys() if paper.get(k) != mine.get(k)} <= SMOKE_SHRINKS
    result = study(smoke)
    base = Path(result["base_model"])
    assert json.loads((base / "model_card.json").read_text())["initialised"] == "at random"
    architecture = json.loads((base / "config.json").read_text())
    assert architecture["text_config"]["hidden_size"] == 2048 and architecture["text_config"]["num_hidden_layers"] == 2
    assert architecture["vision_config"]["hidden_size"] == 1280 and architecture["vision_config"]["depth"] == 2
    assert json.loads((base / "generation_config.json").read_text())["top_k"] == 1  # the stock settings, set aside
    assert set(result["arms"]) == {"sft", "rft"}  # a random model solves no 3x3 jigsaw: rollout-SFT says so
    for arm in ("sft", "rft"):
        assert (Path(result["arms"][arm]) / "adapter_config.json").is_file()
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert summary["arms"]["sft"]["data_nll"] > 0 and summary["arms"]["base"]["format_collapse"] >= 0
    rows = pd.read_csv(Path(result["report"]) / "forgetting.csv")
    assert set(rows.benchmark) == {"jigsaw_think", "tiny_world_quadrants"}
    assert set(rows[rows.benchmark == "tiny_world_quadrants"].n) == {3 * smoke.evaluation.limit}


def test_bad_input_found_on_the_way_is_not_retried_and_ends_the_command_with_its_message(
    prefect_harness, tmp_path, capsys
):
    """A task that meets bad input (a damaged stored model) fails at once, without the retry that helps a passing
    fault; the command line prints the message and exits with 2, as for a bad config value."""
    from prefect import flow, task

    from flows.cli import run
    from forgetting.models import ModelLoadError
    from tasks import retried_unless

    calls = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retried_unless())
    def fails(error: type[Exception]):
        calls.append(error)
        raise error("model: /x/model.safetensors cannot be read")

    @flow
    def meets(error: type[Exception]):
        return fails(error)

    for error, tries in ((ModelLoadError, 1), (RuntimeError, 2)):
        calls.clear()
        assert meets(error, return_state=True).is_failed() and len(calls) == tries

    with pytest.raises(SystemExit) as stop:
        run(lambda config: meets(ModelLoadError), ["--profile", "micro", "--output-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith("error: model: /x/model.safetensors cannot be read\n")

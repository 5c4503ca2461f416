"""The study as people run it: served deployments triggered through the Prefect API, a kill -9 and a
rerun, two studies at once, the servers, and bad input that must fail before any work."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import mlflow
import pandas as pd
import pytest

from deployments import servers
from deployments.serve import PREFECT_YAML, prefect_yaml
from forgetting.config import REPO_ROOT, ConfigError
from forgetting.profiles import load_config
from tasks.tracking import close_orphaned_runs, configure, process_tags, tracking_uri
from tests.conftest import real_servers

pytestmark = pytest.mark.slow
QUICK = ["--set", "arms.rollout_sft.enabled=false"]  # micro's base never solves a puzzle: nothing to learn from


def _env() -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test harness's server
    env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri in this process writes it; flows pick their own
    return env


def _study_command(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "flows.study", "--profile", "micro", "--output-dir", str(out), *QUICK, *overrides]


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended (rc {process.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _complete(found) -> Path | None:
    """A checkpoint the Trainer has finished saving (trainer_state.json is written last); killing the run
    while it saves leaves a partial one, which a rerun removes and redoes (test_training tests that)."""
    checkpoint = next(iter(found), None)
    if checkpoint is None:
        return None
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return checkpoint
    except (OSError, ValueError):
        return None


def _summary(out: Path, config) -> dict:
    return json.loads((out / config.study_id / "report" / "summary.json").read_text())


def test_prefect_yaml_is_generated_from_the_profiles():
    assert PREFECT_YAML.read_text() == prefect_yaml([load_config("tiny"), load_config("micro")]), (
        "deployments/prefect.yaml is stale: run python -m deployments.serve --write-yaml"
    )


def test_unreachable_mlflow_fails_in_seconds(tmp_path):
    config = load_config("micro", ["tracking.tracking_uri=http://127.0.0.1:9"], output_dir=str(tmp_path))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.study", "--profile", "micro", "--output-dir", str(tmp_path),
         "--set", "tracking.tracking_uri=http://127.0.0.1:9"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "no MLflow server answers at http://127.0.0.1:9" in result.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "puzzles").exists()
    with pytest.raises(ConfigError, match="tracking.tracking_uri"):
        from tasks.tracking import check_tracking

        check_tracking(config)


def test_a_store_of_another_mlflow_schema_is_refused_before_any_work(tmp_path):
    """A local store MLflow would refuse at its first run (written by an older MLflow, or by a newer one, as after
    pinning an older report's libraries) is named before any work, with what to do for each."""
    import sqlite3
    from contextlib import closing

    import mlflow

    from tasks.tracking import check_tracking

    config = load_config("micro", output_dir=str(tmp_path))
    check_tracking(config)  # no store yet
    db = tmp_path / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # this MLflow's tables
    check_tracking(config)

    def stamp(revision: str) -> None:
        with closing(sqlite3.connect(db)) as store, store:
            store.execute("UPDATE alembic_version SET version_num = ?", (revision,))

    stamp("451aebb31d03")  # MLflow's first migration
    with pytest.raises(ConfigError, match="written by an older MLflow .*mlflow db upgrade"):
        check_tracking(config)
    stamp("ffffffffffff")
    with pytest.raises(ConfigError, match="written by a newer MLflow .*another --output-dir"):
        check_tracking(config)
    db.write_text("not a database")
    check_tracking(config)  # MLflow names that itself


def test_unknown_benchmark_fails_before_training(tmp_path):
    result = subprocess.run(
        _study_command(tmp_path, "--set", "evaluation.benchmarks=[tiny_world,no_such_task]"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "no_such_task" in result.stderr
    assert not (tmp_path / "arms").exists()


def test_a_flow_without_a_prefect_server_starts_the_temporary_one_early_and_stops_it(tmp_path):
    """From the command line with no PREFECT_API_URL: Prefect's temporary server starts while the flow's libraries
    load, the flow runs against it, and it is stopped at the end; with bad input, too, nothing is left running."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    early = (
        "from flows.launch import server_ready, start_temporary_server\n"
        "start_temporary_server('flows.study')\n"  # imported, not run: nothing starts
        "from prefect.server.api.server import SubprocessASGIServer\n"
        "assert not SubprocessASGIServer().running\n"
        "start_temporary_server('__main__')\n"
        "server_ready()\n"
        "from deployments.servers import healthy\n"
        "assert healthy(SubprocessASGIServer().api_url + '/health')\n"
        "print(SubprocessASGIServer().api_url)\n"
    )
    started = subprocess.run([sys.executable, "-c", early], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    assert not servers.healthy(started.stdout.strip() + "/health")  # stopped at exit, by Prefect's own handler
    command = [sys.executable, "-m", "flows.puzzles", "--profile", "micro", "--output-dir", str(tmp_path)]
    for extra, rc in ((["--set", "puzzles.grid=7x7"], 2), ([], 0)):
        result = subprocess.run(command + extra, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == rc, result.stderr[-2000:]
        stopped = [line for line in result.stderr.splitlines() if "Stopping temporary server on" in line]
        assert len(stopped) == 1, result.stderr[-2000:]  # the one server, started early, found by the flow
        assert not servers.healthy(stopped[0].rsplit(" ", 1)[1] + "/api/health")  # it ended with the process
    assert "Finished in state Completed()" in result.stderr and (tmp_path / "puzzles").is_dir()


def test_runs_of_a_killed_process_are_marked_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure() sets it; undone after the test
    config = load_config("micro", output_dir=str(tmp_path))
    experiment = configure(config)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = mlflow.MlflowClient(tracking_uri(config))
    orphan = client.create_run(experiment, tags={**process_tags(), "pid": dead.stdout.strip()}).info.run_id
    live = client.create_run(experiment, tags=process_tags()).info.run_id  # this process: alive
    assert close_orphaned_runs(experiment) == [orphan]
    assert client.get_run(orphan).info.status == "FAILED" and client.get_run(live).info.status == "RUNNING"


def test_kill_9_during_rft_then_rerun_resumes(prefect_harness, tmp_path):
    """kill -9 while the RFT arm trains; the same command again reuses what finished, continues RFT from its
    last checkpoint, marks the killed MLflow run FAILED, and writes the report an uninterrupted run writes."""
    overrides = ["--set", "arms.rft.steps=24", "--set", "arms.checkpoint_every=4", "--set", "evaluation.every=12"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(
        _study_command(killed, *overrides), cwd=REPO_ROOT, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    checkpoint = _wait_for(lambda: _complete(killed.glob("arms/rft-*/checkpoint-8")), 300, "an RFT checkpoint", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rft = checkpoint.parent
    assert not (rft / "final").exists()
    sft_final = next(killed.glob("arms/sft-*/final"))
    stamps = {p: p.stat().st_mtime_ns for p in (sft_final, rft / "checkpoint-4", rft / "checkpoint-8")}
    subprocess.run(_study_command(killed, *overrides), cwd=REPO_ROOT, env=_env(), check=True, timeout=600)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing finished was redone
    assert (rft / "final").is_dir() and (rft / "checkpoint-24").is_dir()
    steps = [json.loads(line)["step"] for line in (rft / "rollouts.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(24)) and steps == sorted(steps)  # each step's rollouts once

    config = load_config("micro", [o for o in overrides if o != "--set"] + ["arms.rollout_sft.enabled=false"])
    client = mlflow.MlflowClient(f"sqlite:///{killed}/mlflow.db")
    experiment = client.get_experiment_by_name(config.tracking.experiment).experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.runName = '{config.study_id}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]

    subprocess.run(_study_command(clean, *overrides), cwd=REPO_ROOT, env=_env(), check=True, timeout=600)
    assert _summary(killed, config)["arms"] == _summary(clean, config)["arms"]


def test_two_studies_at_once_in_one_output_dir(prefect_harness, tmp_path):
    """Two seeds side by side, sharing the output dir (and so the puzzles, held-out sets, base evaluation)."""
    quick = ["--set", "arms.rft.enabled=false"]
    processes = [
        subprocess.Popen(
            _study_command(tmp_path, *quick, "--set", f"seed={seed}"),
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for seed in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    configs = [
        load_config("micro", ["arms.rft.enabled=false", "arms.rollout_sft.enabled=false", f"seed={s}"]) for s in (0, 1)
    ]
    summaries = [_summary(tmp_path, c) for c in configs]
    assert summaries[0]["study_id"] != summaries[1]["study_id"]
    assert all(set(s["arms"]) == {"base", "sft"} for s in summaries)
    assert summaries[0]["arms"]["base"] == summaries[1]["arms"]["base"]  # the same base, evaluated once
    assert len(list(tmp_path.glob("puzzles/*"))) == 1 and len(list(tmp_path.glob("arms/sft-*"))) == 2
    assert not list(tmp_path.glob("**/.*.tmp-*"))


@contextlib.contextmanager
def _served(tmp_path: Path, *overrides: str, api: str | None = None):
    """`python -m deployments.serve --profile micro` in the background (against the test harness's Prefect
    server, or the one at api) until its study deployment is known."""
    from prefect import get_client

    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    command = [sys.executable, "-m", "deployments.serve", "--profile", "micro", "--output-dir", str(tmp_path)]
    server = subprocess.Popen(
        command + [a for o in overrides for a in ("--set", o)],
        cwd=REPO_ROOT, env=_env() | ({"PREFECT_API_URL": api} if api else {}), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:

        def deployed():
            with get_client(sync_client=True) as client:
                try:
                    return client.read_deployment_by_name("study/micro")
                except Exception:
                    return None

        yield _wait_for(deployed, 120, "the served deployment", server)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_served_study_runs_when_triggered_with_a_changed_parameter(prefect_harness, tmp_path):
    """What the UI does: the served deployment, triggered through the API with one field changed."""
    from prefect.deployments import run_deployment

    with _served(tmp_path):
        config = load_config(
            "micro", ["arms.rft.enabled=false", "arms.rollout_sft.enabled=false", "arms.sft.steps=2"], str(tmp_path)
        )
        run = run_deployment("study/micro", parameters={"config": config.model_dump(mode="json")}, timeout=300)
        assert run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        summary = _summary(tmp_path, config)
        assert set(summary["arms"]) == {"base", "sft"} and summary["arms"]["sft"]["step"] == 2


def test_a_sweep_runs_its_points_as_flow_runs_of_a_deployment(prefect_harness, tmp_path):
    """sweep.deployment: every point a flow run of the served study deployment, nested in the sweep's MLflow run;
    a deployment that does not exist is refused before any work."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.sweep import sweep
    from forgetting.sweep import sweep_dir

    sets = ["arms.rft.enabled=false", "arms.rollout_sft.enabled=false", "arms.sft.steps=2"]
    sets += ["sweep.grid={arms.sft.learning_rate: [0.001, 0.0001]}"]
    with pytest.raises(ConfigError, match="no deployment 'study/nowhere'"):
        sweep(load_config("micro", [*sets, "sweep.deployment=study/nowhere"], str(tmp_path)))
    assert not (tmp_path / "arms").exists()
    with _served(tmp_path) as deployment:

        def runs() -> dict:
            with get_client(sync_client=True) as client:
                only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                return {r.id: r for r in client.read_flow_runs(deployment_filter=only)}

        before = runs()  # the session's earlier tests may have run this deployment
        config = load_config("micro", [*sets, "sweep.deployment=study/micro"], str(tmp_path))
        summary = sweep(config)
        new = [r for i, r in runs().items() if i not in before]
    assert sorted(r.state.name for r in new) == ["Completed", "Completed"]
    frame = pd.read_csv(sweep_dir(config) / "report" / "frontier.csv")
    assert frame[frame.arm == "sft"].arm_key.nunique() == 2 and list(summary["points"]) == ["p0", "p1"]
    client = mlflow.MlflowClient(tracking_uri(config))
    found = client.search_runs([client.get_experiment_by_name(config.tracking.experiment).experiment_id])
    parent = next(r for r in found if r.info.run_name == summary["sweep_id"])
    assert len([r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 2


def test_a_cron_schedule_reaches_the_scheduler(tmp_path):
    """`make serve ARGS='--set schedule.cron=...'`: the study deployment carries the schedule in its time zone,
    and a real Prefect server's scheduler creates the runs it asks for."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = "http://127.0.0.1:14201/api"
    with real_servers(tmp_path / "servers", 14201, 15001):
        cron = ['schedule.cron="0 3 * * 1"', "schedule.timezone=Europe/Berlin"]
        with temporary_settings({PREFECT_API_URL: api}), _served(tmp_path, *cron, api=api) as deployment:
            (schedule,) = deployment.schedules
            assert schedule.schedule.cron == "0 3 * * 1" and schedule.schedule.timezone == "Europe/Berlin"

            def scheduled():
                with get_client(sync_client=True) as client:
                    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                    return [r for r in client.read_flow_runs(deployment_filter=only) if r.state.name == "Scheduled"]

            runs = _wait_for(scheduled, 120, "the scheduler's runs")
        berlin = [r.expected_start_time.astimezone(ZoneInfo("Europe/Berlin")) for r in runs]
        assert all((t.weekday(), t.hour, t.minute) == (0, 3, 0) for t in berlin), berlin
        assert all(r.parameters["scheduled"] is True for r in runs)  # they add seeds (flows/study.py)


def test_make_servers_starts_and_stops_both(tmp_path):
    folder = tmp_path / "servers"
    with real_servers(folder, 14200, 15000):
        assert servers.healthy("http://127.0.0.1:14200/api/health") and servers.healthy("http://127.0.0.1:15000/health")
        assert (folder / "mlflow.db").is_file() and (folder / "prefect").is_dir()
    assert not servers.healthy("http://127.0.0.1:14200/api/health")
    assert not servers.healthy("http://127.0.0.1:15000/health")
    assert not list(folder.glob("*.pid"))


def test_prefect_yaml_deploys_to_a_process_work_pool(prefect_harness):
    from prefect import get_client

    env = {**_env(), "FORGETTING_STUDY_ROOT": str(REPO_ROOT)}
    prefect = [str(Path(sys.executable).with_name("prefect")), "--no-prompt"]
    pool = ["work-pool", "create", "forgetting-process", "--type", "process", "--overwrite"]
    subprocess.run(prefect + pool, cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=120)
    result = subprocess.run(
        prefect + ["deploy", "--all", "--prefect-file", str(PREFECT_YAML)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with get_client(sync_client=True) as client:
        for name in ("study/tiny", "evaluate/tiny", "train/micro"):
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == "forgetting-process"
            assert deployment.parameters["config"]["name"] == name.split("/")[1]

"""What a person sees: a study tracked on real Prefect and MLflow servers, read back through headless Chromium
(`make browser` installs it; `make test` does so first)."""

import os
import re
import subprocess
import sys

import pytest

from deployments import browser
from forgetting.config import REPO_ROOT
from tests.conftest import real_servers
from tests.test_deployments import _served

pytestmark = pytest.mark.slow
PREFECT, MLFLOW = 14204, 15004


def test_the_uis_show_the_study_as_a_person_needs_it(tmp_path):
    """The deployment's run form marks only empty-able fields optional, arms first; the flow run's state names the
    skipped arm, the report artifact shows its plots; MLflow opens on the runs (not GenAI traces), and the study's
    saved views show each arm's own runs (not folded under the study's row) and chart the arms' curves; the
    screenshot command writes its PNGs."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = f"http://127.0.0.1:{PREFECT}/api"
    with real_servers(tmp_path / "servers", PREFECT, MLFLOW), temporary_settings({PREFECT_API_URL: api}):
        env = os.environ | {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW}"}
        study = [sys.executable, "-m", "flows.study", "--profile", "micro", "--output-dir", str(tmp_path / "runs")]
        done = subprocess.run(study, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ui = rf"http://127\.0\.0\.1:{MLFLOW}/#/experiments/1/runs"
        assert re.search(rf"MLflow: {ui}/\w+\?workflowType=machine_learning", done.stdout + done.stderr)
        assert re.search(
            rf"arms side by side: {ui}\?workflowType=machine_learning&viewStateShareKey=micro-\w+-arms", done.stderr
        )
        with _served(tmp_path, api=api):
            pages = browser.study_pages(f"http://127.0.0.1:{PREFECT}", f"http://127.0.0.1:{MLFLOW}")
            form = browser.dom(pages["prefect-form"])
        assert ">Learning Rate<" in form and "Learning Rate (Optional)" not in form  # every profile sets it
        assert "Cron (Optional)" in form and "Tracking Uri (Optional)" in form  # empty: none, the default store
        assert form.index(">Arms<") < form.index(">Puzzles<") < form.index(">Schedule<")  # most changed first
        run = browser.dom(pages["prefect-run"])
        assert "Completed, arms skipped" in run
        report = browser.dom(pages["prefect-report"])
        assert report.count('<img src="data:image/png;base64,') == 3 and "Skipped arms" in report
        assert "rollout_sft: no exact rollouts" in report  # the flow run's state message, beside the artifact
        runs = browser.dom(pages["mlflow-runs"])
        assert "micro-" in runs and "matching runs" in runs and "Detect Issues" not in runs
        arms = browser.dom(pages["mlflow-arms"])
        assert "Group: sft" in arms and "Group: rft" in arms and ">train_loss<" in arms  # the arms' own rows
        curves = browser.dom(pages["mlflow-evaluations"])
        assert "Group: base" in curves and "Model metrics (4)" in browser.text(curves)  # puzzle, prior, KL, distance
        out = tmp_path / "img"
        browser.main(
            ["--prefect", f"http://127.0.0.1:{PREFECT}", "--mlflow", f"http://127.0.0.1:{MLFLOW}"] + ["--out", str(out)]
        )
        assert sorted(p.stem for p in out.glob("*.png")) == sorted(pages) and len(pages) == 6
        assert all(p.stat().st_size > 20_000 for p in out.glob("*.png"))  # a rendered page, not a blank one

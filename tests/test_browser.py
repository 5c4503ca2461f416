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

pytestmark = pytest.mark.slow
PREFECT, MLFLOW = 14204, 15004


def test_the_uis_show_the_study_as_a_person_needs_it(tmp_path):
    """The flow run's state names the skipped arm, the report artifact shows its plots, MLflow opens on the runs
    (not GenAI traces) with the study's run in the list; the screenshot command writes its PNGs."""
    with real_servers(tmp_path / "servers", PREFECT, MLFLOW):
        env = os.environ | {"PREFECT_API_URL": f"http://127.0.0.1:{PREFECT}/api"}
        env |= {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{MLFLOW}"}
        study = [sys.executable, "-m", "flows.study", "--profile", "micro", "--output-dir", str(tmp_path / "runs")]
        done = subprocess.run(study, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        link = rf"MLflow: http://127\.0\.0\.1:{MLFLOW}/#/experiments/1/runs/\w+\?workflowType=machine_learning"
        assert re.search(link, done.stdout + done.stderr)  # the study's run, in the UI's model-training view
        pages = browser.study_pages(f"http://127.0.0.1:{PREFECT}", f"http://127.0.0.1:{MLFLOW}")
        run = browser.dom(pages["prefect-run"])
        assert "Completed, arms skipped" in run
        report = browser.dom(pages["prefect-report"])
        assert report.count('<img src="data:image/png;base64,') == 3 and "Skipped arms" in report
        assert "rollout_sft: no exact rollouts" in report  # the flow run's state message, beside the artifact
        runs = browser.dom(pages["mlflow-runs"])
        assert "micro-" in runs and "matching runs" in runs and "Detect Issues" not in runs
        out = tmp_path / "img"
        browser.main(
            ["--prefect", f"http://127.0.0.1:{PREFECT}", "--mlflow", f"http://127.0.0.1:{MLFLOW}"] + ["--out", str(out)]
        )
        assert sorted(p.name for p in out.glob("*.png")) == ["mlflow-runs.png", "prefect-report.png", "prefect-run.png"]
        assert all(p.stat().st_size > 20_000 for p in out.glob("*.png"))  # a rendered page, not a blank one

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests track into their own tmp sqlite stores

import pytest  # noqa: E402

from forgetting.config import REPO_ROOT  # noqa: E402
from forgetting.profiles import load_config  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def micro(tmp_path):
    """The micro profile, writing under tmp_path."""
    return load_config("micro", output_dir=str(tmp_path))


@contextlib.contextmanager
def real_servers(folder, prefect_port: int, mlflow_port: int):
    """`python -m deployments.servers start` (Prefect and MLflow, what `make servers` runs) on these ports with
    data in folder; stopped by their recorded process ids on exit."""
    args = ["--dir", str(folder), "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]
    servers = [sys.executable, "-m", "deployments.servers"]
    started = subprocess.run([*servers, "start", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        subprocess.run([*servers, "stop", *args], cwd=REPO_ROOT, timeout=120)

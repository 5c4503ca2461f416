"""Prefect flows: study.py runs the whole DAG; every stage also has a flow that runs alone."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import forgetting  # noqa: E402, F401 - sets the CPU's float rounding before any library runs an operation

"""What a person sees in the Prefect and MLflow UIs, through headless Chromium (Debian's `chromium` package;
`make browser` installs it): the pages of a study's latest flow run, its report artifact and its MLflow
experiment, as screenshots or as the DOM a browser renders.

    make servers && make study ARGS=...          # a study tracked on the servers (see README, "Use the UI")
    .venv/bin/python -m deployments.browser --out docs/img    # the README's screenshots of those pages

The UIs are single-page apps: a page is read after a budget of virtual time in which its scripts fetch and
render.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deployments.servers import MLFLOW_PORT, PREFECT_PORT
from tasks.tracking import view_url

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SIZES = {  # window (width, height) of a page's screenshot; others 1400 x 1000
    "prefect-report": (1400, 2400),
    "prefect-form": (1400, 3000),
    "mlflow-arms": (1800, 1000),
    "mlflow-evaluations": (1800, 1200),
}
CHARTS = "&compareRunsMode=CHART"  # MLflow's runs page as charts
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=30000"]


def browser() -> str:
    """The headless browser's executable; RuntimeError naming the fix when there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"no browser found ({', '.join(BROWSERS)}): `make browser` installs Debian's chromium")


def dom(url: str, timeout: float = 120) -> str:
    """The page's DOM once its scripts have rendered it."""
    done = subprocess.run(
        [browser(), *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def text(page: str) -> str:
    """What a DOM shows as text: tags and comments (React leaves `<!-- -->` between pieces of text) removed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<!--.*?-->", "", page, flags=re.S)))


def screenshot(url: str, path: Path, width: int = 1400, height: int = 1000, timeout: float = 120) -> Path:
    """A PNG of the page as rendered in a window of that size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [browser(), *FLAGS, f"--window-size={width},{height}", f"--screenshot={path}", url]
    subprocess.run(command, capture_output=True, timeout=timeout, check=True)
    if not path.is_file():
        raise RuntimeError(f"the browser wrote no screenshot of {url}")
    return path


def study_pages(prefect_ui: str, mlflow_ui: str, experiment: str = "forgetting-study") -> dict[str, str]:
    """The URLs a person opens: a served study deployment's run form (when one is served), the latest study flow
    run (state, graph, logs), its report artifact, the MLflow experiment's runs in the model-training view, and
    the latest study's saved views: its arms side by side (table) and its evaluations (charts: the curves)."""
    import mlflow
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"{prefect_ui.rstrip('/')}/api"}), get_client(sync_client=True) as c:
        runs = c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["study"])), sort=FlowRunSort.START_TIME_DESC
        )
        if not runs:
            raise RuntimeError(f"no study flow run on the Prefect server at {prefect_ui}")
        only = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id]))
        report = next(a for a in c.read_artifacts(artifact_filter=only) if a.key == "study-report")
        served = c.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["study"])))
    client = mlflow.MlflowClient(mlflow_ui)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"no MLflow experiment {experiment!r} at {mlflow_ui}")
    latest = client.search_runs(
        [found.experiment_id], "tags.stage = 'train'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not latest:
        raise RuntimeError(f"no arm's training run in MLflow experiment {experiment!r} at {mlflow_ui}")
    study_id = latest[0].data.tags["study_id"]
    form = {"prefect-form": f"{prefect_ui.rstrip('/')}/deployments/deployment/{served[0].id}/run"} if served else {}
    return form | {
        "prefect-run": f"{prefect_ui.rstrip('/')}/runs/flow-run/{runs[0].id}",
        "prefect-report": f"{prefect_ui.rstrip('/')}/artifacts/artifact/{report.id}",
        "mlflow-runs": f"{mlflow_ui.rstrip('/')}/#/experiments/{found.experiment_id}?workflowType=machine_learning",
        "mlflow-arms": view_url(mlflow_ui, found.experiment_id, study_id, "arms"),
        "mlflow-evaluations": view_url(mlflow_ui, found.experiment_id, study_id, "evaluations") + CHARTS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefect", default=f"http://127.0.0.1:{PREFECT_PORT}", help="Prefect UI")
    parser.add_argument("--mlflow", default=f"http://127.0.0.1:{MLFLOW_PORT}", help="MLflow UI")
    parser.add_argument("--out", default="docs/img", help="folder for the PNGs")
    args = parser.parse_args(argv)
    try:
        for name, url in study_pages(args.prefect, args.mlflow).items():
            width, height = SIZES.get(name, (1400, 1000))
            print(screenshot(url, Path(args.out) / f"{name}.png", width=width, height=height))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

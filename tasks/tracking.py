"""MLflow tracking: one parent run per study, one child run per stage, arm and evaluation.

Default store: sqlite:///<output dir>/mlflow.db with artifacts in <output dir>/mlartifacts;
$MLFLOW_TRACKING_URI or tracking.tracking_uri point elsewhere (e.g. http://127.0.0.1:5000).
MLflow keeps the active run per thread, so code running in a Prefect worker thread opens its own
child run with child_run(parent_run_id, ...), never relying on the caller's active run.
The tracking URI is process-wide in MLflow: one study per process (run studies side by side as processes).

    mlflow ui --backend-store-uri sqlite:///$PWD/runs/mlflow.db     # browse what a study logged
"""

import json
import os
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from forgetting.config import REPO_ROOT, ConfigError, StudyConfig  # noqa: E402
from forgetting.environment import environment
from forgetting.puzzle_data import PuzzleDataset  # noqa: E402
from forgetting.puzzles import format_answer  # noqa: E402
from forgetting.storage import one_maker  # noqa: E402

SQLITE = "sqlite:///"  # a local store's URI: this, then the database file's absolute path

# Read once, before anything here calls mlflow.set_tracking_uri, which writes this variable itself.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(config: StudyConfig) -> str:
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    if USER_TRACKING_URI:
        return USER_TRACKING_URI
    return f"{SQLITE}{config.output.path / 'mlflow.db'}"


def run_link(config: StudyConfig, run_id: str) -> str:
    """Where a person looks at a run: its page in the MLflow UI, in the UI's model-training view (it opens on
    GenAI traces otherwise), or for a local store the command that browses it."""
    uri = tracking_uri(config)
    if not uri.startswith(("http://", "https://")):
        return f"{uri} (run {run_id}; browse it with: mlflow ui --backend-store-uri {uri})"
    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"


# Saved views of the experiment's runs page (MLflow's "shared view": an experiment tag holding the page's state, opened
# with ?viewStateShareKey=<key>): one study's runs of one stage, grouped by arm (a group's row is the mean over
# seeds), chosen columns, and charts of the metrics that compare arms (a regular expression over metric names). The
# default page folds the arms' runs under their study's row and charts the first ten runs' every metric.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
VIEWS = {
    "arms": {
        "stage": "train",
        "columns": ["params.`prompt_style`", "params.`learning_rate`", "params.`steps`", "params.`batch_size`"]
        + ["params.`beta`", "metrics.`train_loss`", "metrics.`reward`", "metrics.`train_runtime`"],
        "charts": "^(loss|reward|kl|mean_token_accuracy)$",
    },
    "evaluations": {
        "stage": "evaluate",
        "columns": ["params.`steps`", "params.`prompt_style`", "metrics.`puzzle_exact`", "metrics.`prior_mean`"]
        + ["metrics.`forward_kl`", "metrics.`param_distance.relative`"],
        "charts": "^(puzzle_exact|prior_mean|forward_kl|param_distance.relative)$",
    },
}


def view_state(config: StudyConfig, view: str) -> dict:
    """The runs page's state for one of VIEWS of this study (the keys are those of MLflow's UI state)."""
    spec = VIEWS[view]
    return {
        "searchFilter": f"tags.study_id = '{config.study_id}' and tags.stage = '{spec['stage']}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "arm"}]},
        "runsHiddenMode": "SHOW_ALL",
        "selectedColumns": spec["columns"],
        "chartsSearchFilter": spec["charts"],
    }


def view_key(study_id: str, view: str) -> str:
    """The share key of one of a study's VIEWS (its experiment tag is SHARED_VIEW_TAG + key)."""
    return f"{study_id}-{view}"


def share_views(config: StudyConfig, experiment_id: str) -> None:
    """The study's VIEWS as experiment tags, which their links open."""
    client = mlflow.MlflowClient(tracking_uri(config))
    for view in VIEWS:
        key = SHARED_VIEW_TAG + view_key(config.study_id, view)
        client.set_experiment_tag(experiment_id, key, json.dumps(view_state(config, view)))


def view_links(config: StudyConfig, run_id: str) -> dict[str, str]:
    """Saves the study's VIEWS in run_id's experiment; returns where a person opens them, view -> link (for a
    local store, the page of `mlflow ui --backend-store-uri ...` on its default port)."""
    uri = tracking_uri(config)
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    share_views(config, experiment)
    return {view: view_url(ui, experiment, config.study_id, view) for view in VIEWS}


def view_url(ui: str, experiment_id: str, study_id: str, view: str) -> str:
    """The MLflow UI's runs page showing one of a study's VIEWS."""
    runs = f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{runs}&viewStateShareKey={view_key(study_id, view)}"


def print_links(config: StudyConfig, run_id: str) -> None:
    """What a flow prints at its end: its run in the MLflow UI and the study's views there."""
    print(f"MLflow: {run_link(config, run_id)}")
    for view, link in view_links(config, run_id).items():
        print(f"MLflow, the {view} side by side: {link}")


def check_tracking(config: StudyConfig, timeout: float = 5.0) -> None:
    """An http(s) tracking URI must answer MLflow's /health within seconds (MLflow's client would retry for
    minutes, after the expensive work), a local SQLite store have this MLflow's schema (check_schema):
    ConfigError otherwise."""
    uri = tracking_uri(config)
    if (db := local_store(uri)) is not None:
        check_schema(db)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"tracking.tracking_uri: no MLflow server answers at {uri} ({reason})") from None


def check_schema(db: Path) -> None:
    """ConfigError naming the store when an existing SQLite store's schema is not the one this MLflow writes:
    MLflow would refuse it at the first run it logs, and for a store written by a newer MLflow (a checkout whose
    libraries were pinned to an older report's: flows/pins.py) its advice to upgrade does not apply. A store
    with no MLflow tables yet is this MLflow's to make."""
    if not db.is_file():
        return
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as store:
            found = store.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return  # no tables yet, or not a database: MLflow says which when it opens it
    from alembic.script import ScriptDirectory  # half a second to import: only for a store that has a schema

    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    if found is None or found[0] in scripts.get_heads():
        return
    known = {script.revision for script in scripts.walk_revisions()}
    ours = f"MLflow {mlflow.__version__}"
    if found[0] in known:
        raise ConfigError(
            f"output.dir: the MLflow store {db} was written by an older MLflow than {ours}: upgrade it "
            f"(mlflow db upgrade sqlite:///{db}, after a backup) or run with another --output-dir"
        )
    raise ConfigError(
        f"output.dir: the MLflow store {db} was written by a newer MLflow than {ours} (schema {found[0]}): run with "
        "another --output-dir, or with the MLflow that wrote it"
    )


def local_store(uri: str) -> Path | None:
    """The database file of a local SQLite tracking URI; None for any other store."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def configure(config: StudyConfig) -> str:
    """Point MLflow at the study's store and experiment; returns the experiment id."""
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    with _creation_lock(uri):
        return _experiment_id(config, uri)


@contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Two studies starting at once on a new SQLite store would both create its tables; one at a time."""
    if (db := local_store(uri)) is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with one_maker(db):
        yield


KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens it on its runs, not on GenAI traces


def _experiment_id(config: StudyConfig, uri: str) -> str:
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        for key, value in KIND.items():
            if key not in experiment.tags:  # made by an earlier version
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    artifacts = None
    if uri.startswith("sqlite:"):  # a local store keeps its artifacts beside it, not in ./mlruns
        artifacts = (config.output.path / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(config.tracking.experiment, artifact_location=artifacts, tags=KIND)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(config.tracking.experiment).experiment_id


def git_sha() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def study_tags(config: StudyConfig) -> dict[str, str]:
    return {
        "study_id": config.study_id,
        "profile": config.name,
        "config_hash": config.config_hash(),
        "git_sha": git_sha(),
    }


def process_tags() -> dict[str, str]:
    """Which process owns a run, so a later process can tell a killed run from a live one."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this host that is gone (killed: no `finally` ran) are marked
    FAILED, children included, so the MLflow UI does not show them running forever. Returns their ids."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'", max_results=1000
    )
    closed = []
    for run in runs:
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "failure", f"process {pid} on {host} ended without closing this run")
            client.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
    return closed


@contextmanager
def study_run(config: StudyConfig, run_name: str | None = None, parent_run_id: str | None = None) -> Iterator[str]:
    """The study's parent run (a child of parent_run_id when given: a sweep's point), with its config as params
    and artifact and its Python environment as an artifact; yields the run id. Runs an earlier, killed process
    left RUNNING are marked FAILED first."""
    experiment_id = configure(config)
    for run_id in close_orphaned_runs(experiment_id):
        print(f"MLflow run {run_id} was left running by a killed process: marked FAILED")
    tags = study_tags(config) | process_tags()
    nesting = {"parent_run_id": parent_run_id, "nested": True} if parent_run_id else {}
    name = run_name or config.study_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags, **nesting) as run:
        mlflow.log_params(flat_params(config.model_dump(mode="json")))
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        mlflow.log_dict(environment(), "environment.json")  # every installed package, what pip freeze lists
        yield run.info.run_id


@contextmanager
def child_run(parent_run_id: str, name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """A child run of parent_run_id, active in the calling thread (safe from Prefect worker threads)."""
    parent = mlflow.get_run(parent_run_id)
    inherited = {k: v for k, v in parent.data.tags.items() if k in {"study_id", "profile", "config_hash", "git_sha"}}
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id,
        run_name=name,
        parent_run_id=parent_run_id,
        nested=True,
        tags={**inherited, **process_tags(), **(tags or {})},
    ) as run:
        yield run.info.run_id


@contextmanager
def seed_run(parent_run_id: str, config: StudyConfig, seed: int) -> Iterator[str]:
    """Where one seed of a study logs: a child run `seed N` when the study has several seeds, else the parent."""
    if not config.seeds:
        yield parent_run_id
        return
    with child_run(parent_run_id, f"seed {seed}", tags={"stage": "seed", "seed": str(seed)}) as run_id:
        yield run_id


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'puzzles.grid': '2x2', ...}; MLflow params are flat strings."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def log_puzzle_dataset(dataset: PuzzleDataset) -> None:
    """Manifest, contact sheet and both splits (as mlflow.data inputs) into the thread's active run."""
    if mlflow.active_run() is None:
        raise RuntimeError("no active MLflow run: log inside study_run() or child_run()")
    manifest = dataset.manifest
    mlflow.log_dict(manifest, "puzzles/manifest.json")
    mlflow.log_artifact(str(dataset.path / "contact_sheet.png"), "puzzles")
    mlflow.log_params({"puzzles.dataset_hash": dataset.dataset_hash, "puzzles.path": str(dataset.path)})
    mlflow.log_metrics(
        {f"puzzles.{split}_count": n for split, n in manifest["counts"].items()}
        | {"puzzles.skipped_files": len(manifest["source"]["skipped"])}
    )
    for split in ("train", "test"):
        frame = pd.DataFrame(dataset.records(split)).drop(columns=["prompt_direct", "prompt_think"])
        frame["answer"] = frame["answer"].map(format_answer)
        frame["grid"] = frame["grid"].map(lambda g: f"{g[0]}x{g[1]}")
        with warnings.catch_warnings():  # MLflow registers two equal sources for local paths, and says so
            warnings.simplefilter("ignore", UserWarning)
            data = mlflow.data.from_pandas(
                frame,
                source=str(dataset.path / f"{split}.jsonl"),
                name=f"puzzles-{dataset.dataset_hash}-{split}",
                digest=dataset.dataset_hash[:8] + split[:2],
            )
        mlflow.log_input(data, context=split)

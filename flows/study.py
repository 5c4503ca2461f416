"""The whole study as one Prefect flow; reads top to bottom like the DAG in DESIGN.md.

    python -m flows.study --profile tiny            # what `make study` runs

Stages land one issue at a time; the study runs every stage that exists, for real:
  1. generate the jigsaw puzzles                                   (tasks/puzzles.py)
"""

from prefect import flow

from flows.cli import run
from flows.puzzles import make_puzzles
from tasks.config import StudyConfig, check_inputs
from tasks.tracking import study_run, tracking_uri


@flow(name="study", log_prints=True)
def study(config: StudyConfig = StudyConfig()) -> dict:  # noqa: B008 - the UI form needs a default
    """Run the forgetting study: puzzles, training arms, evaluation, report."""
    check_inputs(config)
    with study_run(config) as run_id:
        dataset = make_puzzles(config, run_id)
    print(f"study {config.study_id} done. MLflow: {tracking_uri(config)} (parent run {run_id})")
    return {"study_id": config.study_id, "mlflow_run_id": run_id, "puzzles": str(dataset.path)}


if __name__ == "__main__":
    run(study)

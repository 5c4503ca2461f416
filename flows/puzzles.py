"""Generate the jigsaw puzzle dataset alone, log it to MLflow, and print where it is.

python -m flows.puzzles --profile micro --set puzzles.grid=3x3 --set puzzles.source=bundled --output-dir DIR
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

from prefect import flow

from flows.cli import run
from flows.preflight import check_inputs
from forgetting.config import StudyConfig
from tasks.puzzles import tracked_puzzles
from tasks.tracking import run_link, study_run


@flow(name="puzzles", log_prints=True)
def puzzles_flow(config: StudyConfig = StudyConfig()) -> str:  # noqa: B008 - the UI form needs a default
    """Generate the jigsaw puzzle dataset and log it to MLflow."""
    check_inputs(config, base_model=False, benchmarks=False)
    with study_run(config, run_name=f"{config.study_id} puzzles") as run_id:
        dataset = tracked_puzzles(config, run_id)
    print(f"MLflow: {run_link(config, run_id)}")
    return str(dataset.path)


if __name__ == "__main__":
    run(puzzles_flow, base_model=False, benchmarks=False)

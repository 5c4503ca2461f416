"""Generate the jigsaw puzzle dataset alone, log it to MLflow, and print where it is.

python -m flows.puzzles --profile micro --set puzzles.grid=3x3 --set puzzles.source=bundled --output-dir DIR
"""

from prefect import flow

from flows.cli import run
from flows.preflight import check_inputs
from forgetting.config import StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from tasks.puzzles import puzzles_task
from tasks.tracking import child_run, log_puzzle_dataset, study_run, tracking_uri


def make_puzzles(config: StudyConfig, parent_run_id: str) -> PuzzleDataset:
    """The puzzle stage: dataset on disk, Prefect asset, MLflow child run 'puzzles'."""
    dataset = puzzles_task(config.puzzles, config.output.path)
    with child_run(parent_run_id, "puzzles", tags={"stage": "puzzles"}):
        log_puzzle_dataset(dataset)
    manifest = dataset.manifest
    print(
        f"puzzles {dataset.dataset_hash}: {manifest['counts']['train']} train / {manifest['counts']['test']} test, "
        f"{config.puzzles.grid} grid, {manifest['side']} px, source {config.puzzles.source} "
        f"({len(manifest['source']['skipped'])} files skipped)\n  at {dataset.path}\n"
        f"  contact sheet {dataset.path / 'contact_sheet.png'}"
    )
    return dataset


@flow(name="puzzles", log_prints=True)
def puzzles_flow(config: StudyConfig = StudyConfig()) -> str:  # noqa: B008 - the UI form needs a default
    """Generate the jigsaw puzzle dataset and log it to MLflow."""
    check_inputs(config, base_model=False, benchmarks=False)
    with study_run(config, run_name=f"{config.study_id} puzzles") as run_id:
        dataset = make_puzzles(config, run_id)
    print(f"MLflow: {tracking_uri(config)} (run {run_id})")
    return str(dataset.path)


if __name__ == "__main__":
    run(puzzles_flow, base_model=False, benchmarks=False)

"""The puzzle stage as a Prefect task: generate (or reuse) the dataset, materialize its Asset, describe it in
a markdown artifact, and log it to an MLflow child run `puzzles`. No Prefect result cache here:
generate_puzzles is its own content-addressed cache (a rerun finds manifest.json and returns in
milliseconds), and unlike a Prefect cache it notices a deleted dataset or a changed image folder.
"""

from pathlib import Path

from prefect.artifacts import create_markdown_artifact
from prefect.assets import add_asset_metadata, materialize

from assets import puzzle_dataset
from forgetting.config import PuzzleConfig, StudyConfig
from forgetting.puzzle_data import PuzzleDataset, generate_puzzles, plan_dataset
from tasks import retried_unless
from tasks.tracking import child_run, log_puzzle_dataset


def puzzles_task(config: PuzzleConfig, output_dir: Path) -> PuzzleDataset:
    """Generate (or reuse) the dataset as a Prefect task that materializes assets.puzzle_dataset."""
    asset = puzzle_dataset(plan_dataset(config, output_dir).path)

    @materialize(asset, name="generate-puzzles", retries=1, retry_condition_fn=retried_unless())
    def generate(config: PuzzleConfig, output_dir: Path) -> PuzzleDataset:
        dataset = generate_puzzles(config, output_dir)
        manifest = dataset.manifest
        add_asset_metadata(asset, {"dataset_hash": dataset.dataset_hash, "counts": manifest["counts"]})
        create_markdown_artifact(
            key="puzzle-dataset",
            description="Jigsaw puzzle dataset",
            markdown=(
                f"### Puzzles `{dataset.dataset_hash}`\n\n| | |\n|---|---|\n"
                f"| path | `{dataset.path}` |\n| grid | {config.grid} |\n| source | {config.source} |\n"
                f"| side | {config.side} px |\n| train / test | {manifest['counts']['train']} / "
                f"{manifest['counts']['test']} |\n| skipped files | {len(manifest['source']['skipped'])} |\n"
                f"\nContact sheet: `{dataset.path / 'contact_sheet.png'}`"
            ),
        )
        return dataset

    return generate(config, output_dir)


def tracked_puzzles(config: StudyConfig, parent_run_id: str) -> PuzzleDataset:
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

"""Prefect Assets: one key per data product of the study, so the Prefect UI's events show what each
task materialized and from what. Keys are file:// URIs of where the product lies.

This folder also holds the study's shipped static inputs (the tiny base checkpoint, its processor,
the lm-eval task YAMLs) as they land.
"""

from pathlib import Path

from prefect.assets import Asset, AssetProperties


def puzzle_dataset(path: Path) -> Asset:
    """A generated jigsaw dataset: <output>/puzzles/<dataset-hash>/."""
    return Asset(
        key=Path(path).resolve().as_uri(),
        properties=AssetProperties(
            name=f"puzzles {Path(path).name}",
            description="Jigsaw puzzles: train.jsonl, test.jsonl, PNG images, manifest.json, contact_sheet.png",
        ),
    )

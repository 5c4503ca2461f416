"""Prefect Assets: one key per data product of the study, so the Prefect UI's events show what each
task materialized and from what. Keys are file:// URIs of where the product lies.

This folder also holds the study's shipped static inputs: the tiny base checkpoints (micro-base, tiny-base,
tiny-think-base, tiny-think-brief-base, tiny-think-brief-long-base) with their processors, and the lm-eval task
YAMLs of the tiny world's benchmarks and the puzzle (lm_eval/).
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


def base_model(path_or_id: str) -> Asset:
    """The study's base model: a checkpoint directory, or a hub id (hf://org/name)."""
    path = Path(path_or_id)
    key = path.resolve().as_uri() if path.exists() or path_or_id.startswith("/") else f"hf://{path_or_id}"
    return Asset(key=key, properties=AssetProperties(name=f"base model {path.name}", description="Base model"))


def prior_benchmarks(path: Path) -> Asset:
    """The tiny world's held-out prior-knowledge sets: one JSONL (+ PNGs) per task."""
    return Asset(
        key=Path(path).resolve().as_uri(),
        properties=AssetProperties(name=f"prior benchmarks {Path(path).name}", description="Held-out tiny-world tasks"),
    )


def arm_checkpoints(path: Path, arm: str) -> Asset:
    """One training arm's folder: checkpoint-<step>/ directories, final/, and for rft rollouts.jsonl."""
    return Asset(
        key=Path(path).resolve().as_uri(),
        properties=AssetProperties(name=f"arm {arm} {Path(path).name}", description=f"Training arm {arm}"),
    )


def evaluation(path: Path, arm: str, step: int) -> Asset:
    """One model's evaluation: evaluation.json (benchmark rows, dynamics) and samples.jsonl (per item)."""
    return Asset(
        key=Path(path).resolve().as_uri(),
        properties=AssetProperties(name=f"evaluation {arm} step {step}", description=f"lm-eval results of {arm}"),
    )


def report(path: Path) -> Asset:
    """The study's report folder: summary.json, forgetting/curves/dynamics CSVs, report.md, plots."""
    return Asset(
        key=Path(path).resolve().as_uri(),
        properties=AssetProperties(name=f"report {Path(path).parent.name}", description="Forgetting report"),
    )

"""What the training benchmarks share: the profile's SFT and RFT arms cut to a few steps, on a fresh puzzle set in a
scratch folder (MLflow there too). The scripts beside it import it as `short_arms` (`python benchmarks/<script>.py`
puts this folder on the import path)."""

import os
from pathlib import Path

from forgetting.arms import ground_truth
from forgetting.config import StudyConfig
from forgetting.models import resolve_model_path
from forgetting.profiles import load_config
from forgetting.puzzle_data import PuzzleDataset, generate_puzzles
from forgetting.sft import sft_examples


def short_arms(profile: str, steps: int, folder: Path) -> tuple[StudyConfig, str, PuzzleDataset, list[dict]]:
    """(config with both arms at `steps` steps and one checkpoint at the end, base model path, puzzles, SFT's
    examples), everything written under folder."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    overrides = [f"arms.{a}.steps={steps}" for a in ("sft", "rft")] + [f"arms.checkpoint_every={steps}"]
    config = load_config(profile, [*overrides, "arms.checkpoint_steps=[]"], output_dir=str(folder))
    dataset = generate_puzzles(config.puzzles, folder)
    examples = sft_examples(dataset, config.arms.sft.prompt_style, dict(ground_truth(config, "sft", dataset)))
    return config, resolve_model_path(config.model.name_or_path), dataset, examples

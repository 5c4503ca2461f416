"""SFT with TRL's SFTTrainer, assistant-only loss: on the puzzles' ground-truth answers (arm `sft`), on a teacher's
explanations (arm `teacher_sft`; both built in forgetting/arms.py:ground_truth) or on correct rollouts (arm
`rollout_sft`, whose data forgetting/rollout_sft.py gathers).

    python -m flows.train --profile micro --set arms.rft.enabled=false --set arms.rollout_sft.enabled=false
"""

from collections.abc import Sequence
from pathlib import Path

from forgetting.config import SFTArmConfig, StudyConfig
from forgetting.models import LOADING, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.trainer import (
    FINAL,
    ArmResult,
    common_args,
    fit,
    image_dataset,
    last_checkpoint,
    trl_messages,
)


def sft_examples(dataset: PuzzleDataset, style: str, targets: dict[str, str]) -> list[dict]:
    """TRL's conversational vision format (messages with an image placeholder, the image's file beside them) for
    the train puzzles' prompts in style and targets (puzzle id -> completion)."""
    return [
        {
            "messages": trl_messages(record[f"prompt_{style}"], targets[record["id"]]),
            "images": [dataset.image_path(record)],
        }
        for record in dataset.records("train")
    ]


def sft_args(config: StudyConfig, arm_config: SFTArmConfig, out: Path) -> dict:
    """SFTConfig keywords for the sft and rollout_sft arms."""
    return dict(
        **common_args(config, out, arm_config),
        assistant_only_loss=True,
        max_length=None,
    )


def train_sft(
    config: StudyConfig,
    arm: str,
    arm_config: SFTArmConfig,
    base: str,
    examples: list[dict],
    out: Path,
    callbacks: Sequence = (),
) -> ArmResult:
    """SFTTrainer with assistant-only loss; resumes from the last checkpoint in out; callbacks: fit's."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / FINAL).is_dir():  # written last, by an atomic rename
        return ArmResult.of(arm, out)
    from trl import SFTConfig, SFTTrainer  # only to train: TRL's import takes seconds

    if not examples:
        raise ValueError(f"{arm}: no training examples")
    resume = last_checkpoint(out)
    model, processor = load_model(config.model, base, seed=config.seed)
    args = SFTConfig(**sft_args(config, arm_config, out))
    with LOADING:
        trainer = SFTTrainer(model=model, args=args, train_dataset=image_dataset(examples), processing_class=processor)
    fit(trainer, processor, config, out, resume, callbacks)
    return ArmResult.of(arm, out)

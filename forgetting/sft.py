"""SFT with TRL's SFTTrainer, assistant-only loss: on the puzzles' ground-truth answers (arm `sft`) or on
correct rollouts (arm `rollout_sft`, whose data forgetting/rollout_sft.py gathers).

    python -m flows.train --profile micro --set arms.rft.enabled=false --set arms.rollout_sft.enabled=false
"""

from pathlib import Path

from forgetting.config import SFTArmConfig, StudyConfig
from forgetting.models import LOADING, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.puzzles import make_target
from forgetting.trainer import (
    FINAL,
    NO_LOGGING,
    ArmResult,
    checkpoints,
    common_args,
    fit,
    last_checkpoint,
    trl_messages,
)


def sft_examples(dataset: PuzzleDataset, style: str) -> list[dict]:
    """TRL's conversational vision format: messages with an image placeholder, images beside them."""
    examples = []
    for record in dataset.records("train"):
        prompt = record[f"prompt_{style}"]
        examples.append(
            {
                "messages": trl_messages(prompt, make_target(record["answer"], style)),
                "images": [dataset.image(record)],
            }
        )
    return examples


def sft_args(config: StudyConfig, arm_config: SFTArmConfig, out: Path, report_to=NO_LOGGING) -> dict:
    """SFTConfig keywords for the sft and rollout_sft arms."""
    return dict(
        **common_args(config, out, arm_config.steps, arm_config.learning_rate, arm_config.batch_size, report_to),
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
    report_to=NO_LOGGING,
) -> ArmResult:
    """SFTTrainer with assistant-only loss; resumes from the last checkpoint in out."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out.mkdir(parents=True, exist_ok=True)
    if (out / FINAL).is_dir():  # written last, by an atomic rename
        return ArmResult(arm, out, checkpoints(out))
    if not examples:
        raise ValueError(f"{arm}: no training examples")
    resume = last_checkpoint(out)
    model, processor = load_model(config.model, base)
    args = SFTConfig(**sft_args(config, arm_config, out, report_to))
    with LOADING:
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=processor
        )
    fit(trainer, processor, config, out, resume)
    return ArmResult(arm, out, checkpoints(out))

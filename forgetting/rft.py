"""RFT: GRPO with TRL's GRPOTrainer and the puzzle reward (forgetting/puzzles.py:score_answer). Every rollout
is recorded, with its reward parts and step, to rollouts.jsonl (TRL's own completion log keeps a few): the
learning-dynamics analysis scores them under the base, and rollout-SFT may learn from them.

    python -m flows.train --profile micro --set arms.sft.enabled=false --set arms.rollout_sft.enabled=false
"""

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from forgetting import fast_paths
from forgetting import trainer as shared
from forgetting.config import StudyConfig
from forgetting.models import LOADING, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.puzzles import score_answer
from forgetting.storage import write_text_once
from forgetting.trainer import FINAL, ArmResult


class RolloutRecorder:
    """The reward function GRPOTrainer calls; scores with forgetting.puzzles.score_answer and appends every
    completion, with its reward parts and the training step, to a JSONL file."""

    __name__ = "puzzle_reward"

    def __init__(self, path: Path, style: str):
        self.path, self.style = path, style
        self.lock = threading.Lock()

    def __call__(self, prompts, completions, answer, id, trainer_state=None, log_metric=None, **_) -> list[float]:
        step = trainer_state.global_step if trainer_state is not None else -1
        texts = [c[0]["content"] for c in completions]
        scored = [score_answer(text, truth, self.style) for text, truth in zip(texts, answer, strict=True)]
        lines = [
            json.dumps(
                {"step": step, "puzzle_id": puzzle_id, "completion": text, "reward": parts.total, **asdict(parts)}
            )
            for text, puzzle_id, parts in zip(texts, id, scored, strict=True)
        ]
        lines = shared.gathered(lines)  # an arm on several processes: every rank's, written by the main one
        if lines is not None:
            with self.lock, open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")
        rewards = [parts.total for parts in scored]
        if log_metric is not None:
            log_metric("reward_parts/exact_rate", sum(parts.exact for parts in scored) / len(scored))
            log_metric("reward_parts/valid_rate", sum(parts.format > 0 for parts in scored) / len(scored))
            for name, value in group_diversity(id, texts, rewards).items():
                log_metric(f"groups/{name}", value)
        return rewards


def group_diversity(puzzle_ids: list, texts: list[str], rewards: list[float]) -> dict[str, float]:
    """How much a batch's groups (the completions of one puzzle) still differ. A group whose rewards are
    all equal has zero advantage and teaches GRPO nothing; a policy collapsing onto one answer shows as
    zero_spread rising towards 1 and distinct_answers falling towards 1."""
    groups: dict = {}
    for puzzle_id, text, reward in zip(puzzle_ids, texts, rewards, strict=True):
        groups.setdefault(puzzle_id, []).append((text.strip(), reward))
    return {
        "zero_spread": sum(len({r for _, r in g}) == 1 for g in groups.values()) / len(groups),
        "distinct_answers": sum(len({t for t, _ in g}) for g in groups.values()) / len(groups),
    }


def rft_examples(dataset: PuzzleDataset, style: str) -> list[dict]:
    return [
        {
            "prompt": shared.trl_messages(record[f"prompt_{style}"]),
            "image": dataset.image_path(record),
            "answer": record["answer"],
            "id": record["id"],
        }
        for record in dataset.records("train")
    ]


def grpo_args(config: StudyConfig, out: Path) -> dict:
    """GRPOConfig keywords for the rft arm."""
    rft = config.arms.rft
    return dict(
        **shared.common_args(config, out, rft),
        num_generations=rft.num_generations,
        beta=rft.beta,
        temperature=rft.temperature,
        scale_rewards=rft.scale_rewards,
        entropy_coef=rft.entropy_coef,
        max_completion_length=rft.max_new_tokens,
        log_completions=False,
        use_vllm=rft.use_vllm,
        vllm_mode="colocate",
    )


def train_rft(config: StudyConfig, base: str, dataset: PuzzleDataset, out: Path, callbacks: Sequence = ()) -> ArmResult:
    """GRPOTrainer on the train split's puzzles; resumes from the last checkpoint in out (dropping the rollouts
    recorded after it); callbacks: fit's."""
    out.mkdir(parents=True, exist_ok=True)
    rollouts = out / shared.ROLLOUTS
    if (out / FINAL).is_dir():
        return ArmResult.of("rft", out)
    from trl import GRPOConfig, GRPOTrainer  # only to train: TRL's import takes seconds

    from forgetting.shared_prompts import grpo_trainer

    resume = shared.last_checkpoint(out)
    if shared.is_main_process():
        _truncate_rollouts(rollouts, resume)
    model, processor = load_model(config.model, base, seed=config.seed)
    style = config.arms.rft.prompt_style
    examples = shared.image_dataset(rft_examples(dataset, style))
    with LOADING:  # with beta > 0 and full fine-tuning, GRPOTrainer loads a reference model here
        trainer = (grpo_trainer() if fast_paths.enabled() else GRPOTrainer)(
            model=model,
            reward_funcs=[RolloutRecorder(rollouts, style)],
            args=GRPOConfig(**grpo_args(config, out)),
            train_dataset=examples,
            processing_class=processor,
        )
    shared.fit(trainer, processor, config, out, resume, callbacks)
    return ArmResult.of("rft", out)


def _truncate_rollouts(path: Path, resume: str | None) -> None:
    """On resume, drop rollouts recorded after the checkpoint: the resumed run samples those steps again."""
    if not path.exists():
        return
    keep_through = int(resume.rsplit("-", 1)[-1]) if resume else -1
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < keep_through:
                kept.append(line)
        except (ValueError, KeyError):  # the last line, torn by a kill mid-write
            continue
    write_text_once(path, "".join(line + "\n" for line in kept))

"""Rollout-SFT's data: the RFT arm's exact rollouts, de-duplicated, either as recorded while RFT trained or
sampled afresh from its final or earliest checkpoint (the paper's cheaper variant). The training itself is
forgetting/sft.py.
"""

import json
from pathlib import Path

import torch

from forgetting.config import StudyConfig
from forgetting.inference import generate
from forgetting.models import chat, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rft import RolloutRecorder
from forgetting.trainer import ArmResult, trl_messages


class NoCorrectRollouts(RuntimeError):
    """rollout_sft has nothing to learn from: the RFT arm never produced an exact answer."""


def correct_rollouts(rollouts: Path) -> list[dict]:
    """Exact rollouts, de-duplicated on (puzzle, completion), in the order they were sampled."""
    seen, kept = set(), []
    with open(rollouts) as f:
        for line in f:
            r = json.loads(line)
            key = (r["puzzle_id"], r["completion"].strip())
            if r["exact"] > 0 and key not in seen:
                seen.add(key)
                kept.append(r)
    return kept


def rollout_sft_examples(dataset: PuzzleDataset, rollouts: list[dict], style: str) -> list[dict]:
    records = {r["id"]: r for r in dataset.records("train")}
    return [
        {
            "messages": trl_messages(records[r["puzzle_id"]][f"prompt_{style}"], r["completion"].strip()),
            "images": [dataset.image(records[r["puzzle_id"]])],
        }
        for r in rollouts
    ]


def sample_correct_rollouts(
    config: StudyConfig, checkpoint: str, dataset: PuzzleDataset, out: Path, samples: int | None = None
) -> Path:
    """Fresh rollouts from an RFT checkpoint on the train split, scored and written like training rollouts."""
    model, processor = load_model(config.model, checkpoint, trainable=False)
    style = config.arms.sft.prompt_style
    recorder = RolloutRecorder(out, style)
    g = samples or config.arms.rft.num_generations
    records = dataset.records("train")
    torch.manual_seed(config.seed)
    for i in range(0, len(records), 8):
        chunk = records[i : i + 8]
        conversations = [chat(r[f"prompt_{style}"], dataset.image(r)) for r in chunk for _ in range(g)]
        texts = generate(
            model,
            processor,
            conversations,
            config.arms.rft.max_new_tokens,
            do_sample=True,
            temperature=config.arms.rft.temperature,
        )
        recorder(
            prompts=None,
            completions=[[{"content": t}] for t in texts],
            answer=[r["answer"] for r in chunk for _ in range(g)],
            id=[r["id"] for r in chunk for _ in range(g)],
        )
    return out


def rollout_source(config: StudyConfig, rft: ArmResult, dataset: PuzzleDataset, out: Path) -> Path:
    """The rollouts rollout_sft learns from: RFT's recorded ones, or fresh samples from its final or
    earliest checkpoint."""
    source = config.arms.rollout_sft.rollout_source
    if source == "training":
        return rft.rollouts
    path = out / f"rollouts-{source}.jsonl"
    if not path.exists():
        checkpoint = str(rft.final) if source == "final" or not rft.checkpoints else rft.checkpoints[0]
        out.mkdir(parents=True, exist_ok=True)
        samples = config.arms.rollout_sft.samples_per_puzzle
        sample_correct_rollouts(config, checkpoint, dataset, path.with_suffix(".tmp"), samples)
        path.with_suffix(".tmp").rename(path)
    return path


def rollout_sft_data(config: StudyConfig, rft: ArmResult, dataset: PuzzleDataset, out: Path) -> list[dict]:
    """The exact rollouts rollout_sft trains on (rollout_source), or NoCorrectRollouts when there are none."""
    rollouts = rollout_source(config, rft, dataset, out)
    kept = correct_rollouts(rollouts)
    if not kept:
        raise NoCorrectRollouts(f"no exact rollouts in {rollouts}; the RFT arm never solved a puzzle")
    return kept

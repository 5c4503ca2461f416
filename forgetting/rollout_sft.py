"""Rollout-SFT's data: the RFT arm's exact rollouts, de-duplicated, either as recorded while RFT trained or
sampled afresh from its final model or an early checkpoint (the paper's cheaper variant). Which source, checkpoint
and step was used, and how many samples were exact, is written beside the data (rollout_source.json) and shown
in the report. The training itself is forgetting/sft.py.
"""

import json
from pathlib import Path

import torch

from forgetting.config import ConfigError, StudyConfig
from forgetting.inference import generate, sampling
from forgetting.models import chat, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rft import RolloutRecorder
from forgetting.storage import read_json_lines, write_text_once
from forgetting.trainer import ArmResult, trl_messages


class NoCorrectRollouts(RuntimeError):
    """rollout_sft has nothing to learn from: the RFT arm never produced an exact answer."""


def exact_unique(rows: list[dict]) -> list[dict]:
    """Exact rollouts, de-duplicated on (puzzle, completion), in the order they were sampled."""
    seen, kept = set(), []
    for r in rows:
        key = (r["puzzle_id"], r["completion"].strip())
        if r["exact"] > 0 and key not in seen:
            seen.add(key)
            kept.append(r)
    return kept


def correct_rollouts(rollouts: Path) -> list[dict]:
    """exact_unique of a rollouts file."""
    return exact_unique(read_json_lines(rollouts))


def rollout_sft_examples(dataset: PuzzleDataset, rollouts: list[dict], style: str) -> list[dict]:
    records = {r["id"]: r for r in dataset.records("train")}
    return [
        {
            "messages": trl_messages(records[r["puzzle_id"]][f"prompt_{style}"], r["completion"].strip()),
            "images": [dataset.image_path(records[r["puzzle_id"]])],
        }
        for r in rollouts
    ]


def sample_rollouts(
    config: StudyConfig, checkpoint: str, dataset: PuzzleDataset, out: Path, how: dict, style: str, seed: int
) -> Path:
    """Fresh rollouts from a model (an RFT checkpoint, or iterative-SFT's model of the round) on the train split
    in prompt style, drawn as how says (ArmsConfig.fresh_sampling: samples a puzzle, temperature and
    max_new_tokens) from torch seed seed, scored and written like RFT's training rollouts to out, unless out is
    there. Written beside it first and renamed at the end: a run killed while sampling leaves no rollouts, and
    samples afresh."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".tmp")
    partial.unlink(missing_ok=True)  # a run killed while sampling: its samples (and torn last line) go
    model, processor = load_model(config.model, checkpoint, trainable=False)
    recorder = RolloutRecorder(partial, style)
    g = how["samples"]
    records = dataset.records("train")
    torch.manual_seed(seed)
    for i in range(0, len(records), 8):
        chunk = records[i : i + 8]
        prompts = [chat(r[f"prompt_{style}"], dataset.image(r)) for r in chunk]
        conversations = [p for p in prompts for _ in range(g)]  # one object per prompt: run once for its samples
        texts = generate(
            model,
            processor,
            conversations,
            how["max_new_tokens"],
            **sampling(how["temperature"]),
        )
        recorder(
            prompts=None,
            completions=[[{"content": t}] for t in texts],
            answer=[r["answer"] for r in chunk for _ in range(g)],
            id=[r["id"] for r in chunk for _ in range(g)],
        )
    partial.rename(out)
    return out


SOURCE = "rollout_source.json"


def rollout_source(config: StudyConfig, rft: ArmResult, dataset: PuzzleDataset, out: Path) -> Path:
    """The rollouts rollout_sft learns from: RFT's recorded ones, or fresh samples from its final model or the
    early checkpoint (rollout_sft.early_step, else RFT's first)."""
    settings = config.arms.rollout_sft
    if settings.rollout_source == "training":
        return rft.rollouts
    path = out / f"rollouts-{settings.rollout_source}.jsonl"
    checkpoint, _ = source_checkpoint(config, rft)
    how = config.arms.fresh_sampling(settings.samples_per_puzzle)
    return sample_rollouts(config, checkpoint, dataset, path, how, settings.prompt_style, config.seed)


def source_checkpoint(config: StudyConfig, rft: ArmResult) -> tuple[str | None, int | str]:
    """The RFT model rollout_sft's rollouts come from, and its step: none and RFT's steps ("1-200") for the
    rollouts RFT recorded while training, else the model fresh rollouts are sampled from, the final one or the
    early checkpoint. No fallback: an early step RFT did not save is an error naming the steps it did."""
    source = config.arms.rollout_sft.rollout_source
    if source == "training":
        return None, f"1-{config.arms.rft.steps}"
    if source == "final":
        return str(rft.final), config.arms.rft.steps
    saved = {int(c.rsplit("-", 1)[-1]): c for c in rft.checkpoints}
    step = config.arms.rollout_sft.early_step or min(saved, default=0)
    if step not in saved:
        raise ConfigError(
            f"arms.rollout_sft.early_step: the RFT arm has no checkpoint at step {step or '(none saved)'}; it saved "
            f"{sorted(saved) or 'none'} (arms.checkpoint_every, arms.checkpoint_steps)"
        )
    return saved[step], step


def rollout_provenance(result: ArmResult) -> dict | None:
    """What rollout_source.json says of an arm's data (rollout_sft's, iterative_sft's), or None for other arms."""
    path = result.path / SOURCE
    return json.loads(path.read_text()) if path.is_file() else None


def rollout_sft_data(config: StudyConfig, rft: ArmResult, dataset: PuzzleDataset, out: Path) -> list[dict]:
    """The exact rollouts rollout_sft trains on (rollout_source), or NoCorrectRollouts when there are none; writes
    out/rollout_source.json saying where they came from and how many were exact and kept."""
    rollouts = rollout_source(config, rft, dataset, out)
    rows = read_json_lines(rollouts)
    kept = exact_unique(rows)
    checkpoint, step = source_checkpoint(config, rft)
    provenance = {
        "source": config.arms.rollout_sft.rollout_source,
        "checkpoint": checkpoint,
        "rft_step": step,
        "rollouts": len(rows),
        "exact": sum(r["exact"] > 0 for r in rows),
        "kept": len(kept),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_once(out / SOURCE, json.dumps(provenance, indent=1) + "\n")  # whole, even with several processes
    if not kept:
        raise NoCorrectRollouts(f"no exact rollouts in {rollouts}; the RFT arm never solved a puzzle")
    return kept

"""Iterative self-SFT (the iterative SFT of Retaining by Doing): SFT on the model's own exact answers, sampled
again from the model as it stands at the start of every round. Round 1 samples the base, so it is rollout-SFT on
the base's own correct samples; round r + 1 samples the model round r left. Each round is an SFT run of its own
(forgetting/sft.py's trainer: a fresh optimizer and cosine schedule) of steps / rounds steps, from that model.
Sampling reads RFT's max_new_tokens, as rollout-SFT's fresh samples do, and its temperature unless the arm sets its
own (arms.iterative_sft.temperature).

An arm's folder, besides what every arm has (checkpoint-<step> at the arm's own steps, final/):

    rollouts-round-<r>.jsonl   every sample of round r (1-based), scored like RFT's rollouts
    round-<r>/                 the round's Trainer while it trains; its checkpoints move up when it ends
    training_data.jsonl        the exact samples each round trained on, de-duplicated within the round, each with
                               the step before its round's first (as RFT's rollouts carry the step that sampled
                               them: forgetting/predictors.py:data_nll_at)
    rollout_source.json        per round: the model sampled, samples, exact ones, kept ones, puzzles solved;
                               `stopped` when a round kept no answer

A round that keeps no answer (none exact, or with well_formed_only none well-formed) has nothing to train on: the
arm stops there, its final/ the model that round sampled (the last round's checkpoint, without its optimizer state),
its checkpoints those it reached, so the report shows the arm up to where it stopped (its final at the arm's last
step is that model). A first round with none (the base solves no train puzzle) trains nothing: NoCorrectRollouts, as
rollout-SFT without rollouts.
A rerun finds the finished rounds (their last checkpoint moved up) and resumes the one that was training.
"""

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from forgetting.config import StudyConfig
from forgetting.models import LOADING, load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rollout_sft import (
    SOURCE,
    NoCorrectRollouts,
    exact_unique,
    rollout_sft_examples,
    sample_rollouts,
)
from forgetting.sft import sft_args
from forgetting.storage import read_json_lines, stable_hash, write_text_once
from forgetting.trainer import (
    FINAL,
    TRAINING_DATA,
    TRAINING_STATE,
    ArmResult,
    Callback,
    fit,
    image_dataset,
    last_checkpoint,
)

ARM = "iterative_sft"


class Shifted(Callback):
    """A callback that sees the arm's steps while a round's Trainer counts its own from 0: the round's first step
    as offset + 1, and the arm's steps in all as max_steps (MLflow's curves and the step log run on across
    rounds)."""

    def __init__(self, inner, offset: int, total: int):
        self.inner, self.offset, self.total = inner, offset, total

    def __getattr__(self, name: str):
        if not name.startswith("on_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        event = getattr(self.inner, name)

        def shifted(args, state, control, **kwargs):
            seen = dataclasses.replace(state, global_step=state.global_step + self.offset, max_steps=self.total)
            return event(args, seen, control, **kwargs)

        return shifted


def train_iterative_sft(
    config: StudyConfig, base: str, dataset: PuzzleDataset, out: Path, callbacks: Sequence = ()
) -> ArmResult:
    """Every round in turn: sample the round's model, keep its exact answers, train the round on them; the last
    round's model is the arm's final, or the model of the first round that keeps no answer (the arm stops there).
    NoCorrectRollouts when the base solves no train puzzle."""
    settings = config.arms.iterative_sft
    if (out / FINAL).is_dir():  # finished; a run killed after the last round's final/ moved up leaves its folder
        shutil.rmtree(out / f"round-{settings.rounds}", ignore_errors=True)
        return ArmResult.of(ARM, out)
    out.mkdir(parents=True, exist_ok=True)
    length = settings.steps // settings.rounds
    rounds, data, stopped = [], [], None
    for r in range(settings.rounds):
        start = r * length
        model = base if r == 0 else str(out / f"checkpoint-{start}")
        kept, rows = round_samples(config, model, dataset, out / f"rollouts-round-{r + 1}.jsonl", r)
        rounds.append(
            {
                "round": r + 1,
                "checkpoint": model,
                "first_step": start + 1,
                "rollouts": len(rows),
                "exact": sum(row["exact"] > 0 for row in rows),
                "kept": len(kept),
                "puzzles": len({row["puzzle_id"] for row in kept}),
            }
        )
        missing = f"no {'well-formed ' * settings.well_formed_only}exact answer in {len(rows):,} samples"
        if not kept and r == 0:
            raise NoCorrectRollouts(f"iterative_sft round 1: {missing} of the base model {model}")
        if not kept:
            stopped = {"round": r + 1, "step": start, "reason": missing}
            print(f"iterative_sft stops in round {r + 1} ({stopped['reason']}): its final is its step-{start} model")
            break
        data += [
            {"puzzle_id": row["puzzle_id"], "completion": row["completion"].strip(), "step": start} for row in kept
        ]
        train_round(config, model, dataset, kept, out, start, length, callbacks)
    write_text_once(out / TRAINING_DATA, "".join(json.dumps(row) + "\n" for row in data))
    source = {"source": "rounds", "rounds": rounds, **({"stopped": stopped} if stopped else {})}
    write_text_once(out / SOURCE, json.dumps(source, indent=1) + "\n")
    if stopped:  # last: the arm is finished
        final_from_checkpoint(out / f"checkpoint-{stopped['step']}", out)
    else:
        (out / f"round-{settings.rounds}" / FINAL).rename(out / FINAL)
        shutil.rmtree(out / f"round-{settings.rounds}")
    return ArmResult.of(ARM, out)


def final_from_checkpoint(checkpoint: Path, out: Path) -> None:
    """out/final/ as a copy of checkpoint's model and processor (its optimizer, scheduler and RNG state left
    out) with its log history as trainer_state.json (as trainer.finish writes it), written beside it and renamed:
    the final model of an arm that stopped at that checkpoint."""
    tmp = out / f".{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(*TRAINING_STATE))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    (tmp / "trainer_state.json").write_text(json.dumps(history, indent=1))
    tmp.rename(out / FINAL)


def round_samples(config: StudyConfig, model: str, dataset: PuzzleDataset, path: Path, r: int):
    """(the exact samples kept, every sample) of round r + 1, sampled from model into path unless it is there;
    each round draws from a random stream of its own (the seed's, with the round). Kept: each distinct exact
    answer of a puzzle (with well_formed_only, only those that earn the format bonus), at most answers_per_puzzle
    of them, the first sampled."""
    settings = config.arms.iterative_sft
    seed = int(stable_hash([config.seed, r])[:8], 16)
    sample_rollouts(config, model, dataset, path, config.arms.iterative_sampling(), settings.prompt_style, seed)
    rows = read_json_lines(path)
    candidates = [row for row in rows if row["format"] > 0] if settings.well_formed_only else rows
    return first_per_puzzle(exact_unique(candidates), settings.answers_per_puzzle), rows


def first_per_puzzle(rows: list[dict], n: int | None) -> list[dict]:
    """The first n rows of each puzzle, in their order (all of them when n is None)."""
    if n is None:
        return rows
    counts: dict[str, int] = {}
    kept = []
    for row in rows:
        counts[row["puzzle_id"]] = counts.get(row["puzzle_id"], 0) + 1
        if counts[row["puzzle_id"]] <= n:
            kept.append(row)
    return kept


def train_round(
    config: StudyConfig,
    model_path: str,
    dataset: PuzzleDataset,
    kept: list[dict],
    out: Path,
    start: int,
    length: int,
    callbacks: Sequence,
) -> None:
    """Train one round's `length` steps on its kept samples from model_path in out/round-<r>/ (resuming there),
    saving at the arm's checkpoint steps that fall inside it and at its end, then move those checkpoints up to out/
    under the arm's steps (the round's last one last: a rerun takes it as the round's mark of being done, and
    trains nothing)."""
    from trl import SFTConfig, SFTTrainer  # only to train: TRL's import takes seconds

    settings = config.arms.iterative_sft
    every, wanted = config.arms.checkpoint_every, config.arms.checkpoint_steps
    local = [s - start for s in range(start + 1, start + length) if s % every == 0 or s in wanted]
    arms = config.arms.model_copy(update={"checkpoint_every": length, "checkpoint_steps": local})
    round_config = config.model_copy(update={"arms": arms})
    folder = out / f"round-{start // length + 1}"
    if not (out / f"checkpoint-{start + length}").is_dir():
        if not (folder / FINAL).is_dir():  # killed after the round trained: its checkpoints still to move
            resume = last_checkpoint(folder)
            model, processor = load_model(config.model, model_path, seed=config.seed)
            args = SFTConfig(**sft_args(round_config, settings.model_copy(update={"steps": length}), folder))
            examples = image_dataset(rollout_sft_examples(dataset, kept, settings.prompt_style))
            with LOADING:
                trainer = SFTTrainer(model=model, args=args, train_dataset=examples, processing_class=processor)
            shifted = [Shifted(c, start, settings.steps) for c in callbacks]
            fit(trainer, processor, round_config, folder, resume, shifted)
        for step in [*local, length]:
            source = folder / f"checkpoint-{step}"
            if source.is_dir():
                source.rename(out / f"checkpoint-{start + step}")
    if start + length < settings.steps:  # the last round's final/ becomes the arm's
        shutil.rmtree(folder, ignore_errors=True)  # also the folder of a run killed before it removed it

"""The study's arms, and where each lives: `sft` (SFT on ground-truth answers, forgetting/sft.py), `teacher_sft`
(SFT on a scripted, always-correct explanation plus the answer, forgetting/puzzles.py:teacher_reasoning), `rft`
(GRPO with the puzzle reward, forgetting/rft.py), `rollout_sft` (SFT on the RFT arm's correct rollouts,
forgetting/rollout_sft.py) and `iterative_sft` (SFT on the model's own correct samples, drawn again every round,
forgetting/iterative_sft.py). Each arm has its own prompt style (arms.<arm>.prompt_style), which its training, its
rollouts, its evaluation and the base's view of its data all read (arm_style).

An arm's folder is named by the hash of what determines it (the base model's content, puzzles, model and arm
settings, seed, the training libraries and code, for rollout_sft the RFT arm it learns from, for iterative_sft the
RFT settings it samples with), so changing one arm's settings retrains that arm and what depends on it only; a
finished arm has final/, and a rerun finds it.

    python -m flows.train --profile micro     # the arms alone
"""

import json
from collections.abc import Sequence
from pathlib import Path

from forgetting import fast_paths
from forgetting.config import StudyConfig
from forgetting.environment import training_fingerprint, training_sources
from forgetting.iterative_sft import train_iterative_sft
from forgetting.models import hub_kernels, model_fingerprint
from forgetting.puzzle_data import CORNER_NAMES, PuzzleDataset
from forgetting.puzzles import make_target, teacher_reasoning
from forgetting.rft import train_rft
from forgetting.rollout_sft import rollout_sft_data, rollout_sft_examples
from forgetting.sft import sft_examples, train_sft
from forgetting.storage import product_dir, stable_hash, write_text_once
from forgetting.trainer import FINAL, TRAINING_DATA, ArmResult

ARMS = ("sft", "teacher_sft", "rft", "rollout_sft", "iterative_sft")
training_sources()  # read as the modules above are imported: code edited later in a run names no arm it trains


def arm_style(config: StudyConfig, arm: str) -> str:
    """The prompt style an arm trains on and is evaluated with."""
    return getattr(config.arms, arm).prompt_style


def arm_styles(config: StudyConfig) -> list[str]:
    """The prompt styles of the enabled arms, in arm order, each once: the base is evaluated in each."""
    return list(dict.fromkeys(arm_style(config, a) for a in ARMS if getattr(config.arms, a).enabled)) or ["direct"]


def arm_spec(config: StudyConfig, arm: str) -> dict:
    """What determines an arm, besides the base model, the puzzles and the arm it learns from (arm_dir adds those;
    a sweep compares arms by this alone, since its points share them): the study's settings for it, and what
    trains it (the training libraries' versions, the training code, whether the faster paths are on, and the
    Hub's kernels when they are)."""
    return {
        "arm": arm,
        "training": {
            **training_fingerprint(),
            "fast_paths": fast_paths.enabled(),
            **({"hub_kernels": True} if hub_kernels() else {}),  # off (the default): the keys arms always had
        },
        "model": config.model.model_dump(mode="json"),
        "settings": getattr(config.arms, arm).model_dump(mode="json"),
        "prompt_style": arm_style(config, arm),
        "checkpoint_every": config.arms.checkpoint_every,
        **({"checkpoint_steps": config.arms.checkpoint_steps} if config.arms.checkpoint_steps else {}),
        # several processes sample and reduce in another order: another arm (one process: ids as before)
        **({"num_processes": config.arms.num_processes} if config.arms.num_processes > 1 else {}),
        "seed": config.seed,
        # iterative_sft samples with RFT's settings where its own are empty (rollout_sft learns from the RFT arm:
        # arm_dir's upstream)
        **({"sampling": config.arms.iterative_sampling()} if arm == "iterative_sft" else {}),
    }


def arm_dir(config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, upstream: str = "") -> Path:
    spec = {
        **arm_spec(config, arm),
        "base": model_fingerprint(base),
        "puzzles": dataset.dataset_hash,
        "upstream": upstream,
    }
    return product_dir(config.output.path, "arms", f"{arm}-{stable_hash(spec)[:10]}")


def prepare_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, rft: ArmResult | None = None
) -> tuple[Path, list[dict] | None]:
    """An arm's folder and the examples an SFT-type arm trains on (None for rft and iterative_sft, which sample
    their own), their data written there first (training_data.jsonl; rollout-SFT's fresh rollouts): every process
    of an arm that trains on several reads the same. rollout_sft needs the rft arm's result."""
    out = arm_dir(config, arm, base, dataset, upstream=str(rft.path) if rft else "")
    style = arm_style(config, arm)
    if arm in ("sft", "teacher_sft"):
        pairs = ground_truth(config, arm, dataset)
        write_training_data(out, pairs)
        return out, sft_examples(dataset, style, dict(pairs))
    if arm in ("rft", "iterative_sft"):
        return out, None
    if arm == "rollout_sft":
        if rft is None:
            raise ValueError("rollout_sft needs the rft arm's result")
        kept = rollout_sft_data(config, rft, dataset, out)
        write_training_data(out, [(r["puzzle_id"], r["completion"].strip()) for r in kept])
        return out, rollout_sft_examples(dataset, kept, style)
    raise ValueError(f"unknown arm {arm!r}; arms are {ARMS}")


def run_arm(
    config: StudyConfig,
    arm: str,
    base: str,
    dataset: PuzzleDataset,
    rft: ArmResult | None = None,
    callbacks: Sequence = (),
) -> ArmResult:
    """Train one arm in this process, or find it trained (the plain function behind the Prefect task; an arm on
    several processes runs this in each: tasks/arm_process.py). rollout_sft needs the rft arm's result;
    callbacks (trainer.Callback objects) get the Trainer's events and logs."""
    out, examples = prepare_arm(config, arm, base, dataset, rft)
    if arm == "rft":
        return train_rft(config, base, dataset, out, callbacks)
    if arm == "iterative_sft":
        return train_iterative_sft(config, base, dataset, out, callbacks)
    return train_sft(config, arm, getattr(config.arms, arm), base, examples, out, callbacks)


def ground_truth(config: StudyConfig, arm: str, dataset: PuzzleDataset) -> list[tuple[str, str]]:
    """(puzzle id, target) per train puzzle: the answer alone (sft, in its prompt style's form), or a teacher's
    explanation and the answer (teacher_sft)."""
    rows, cols = config.puzzles.shape
    corners = CORNER_NAMES.get(config.puzzles.cue) if config.puzzles.source == "synthetic" else None
    pairs = []
    for record in dataset.records("train"):
        reasoning = teacher_reasoning(record["answer"], rows, cols, corners) if arm == "teacher_sft" else None
        pairs.append((record["id"], make_target(record["answer"], arm_style(config, arm), reasoning)))
    return pairs


def write_training_data(out: Path, pairs: list[tuple[str, str]]) -> None:
    """What an SFT arm trains on, as {puzzle_id, completion} lines (the rft arm's is rollouts.jsonl):
    the learning-dynamics analysis scores it under the base model."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / TRAINING_DATA).is_file():
        lines = [json.dumps({"puzzle_id": pid, "completion": text}) for pid, text in pairs]
        write_text_once(out / TRAINING_DATA, "".join(line + "\n" for line in lines))


def training_data(result: ArmResult) -> Path:
    """The completions an arm was trained on: ground truth (sft), the teacher's explanations (teacher_sft), its
    own rollouts (rft), or the correct rollouts it kept (rollout_sft; iterative_sft's, with their round's step);
    one JSON line each with puzzle_id and completion."""
    return result.rollouts if result.arm == "rft" else result.path / TRAINING_DATA


def finished_arms(config: StudyConfig, base: str, dataset: PuzzleDataset) -> dict[str, ArmResult]:
    """The enabled arms already trained for this config (their final/ exists), without training anything."""
    found = {}
    for arm in ARMS:
        upstream = found.get("rft") if arm == "rollout_sft" else None
        if arm == "rollout_sft" and upstream is None:
            upstream = ArmResult.of("rft", arm_dir(config, "rft", base, dataset))
        out = arm_dir(config, arm, base, dataset, upstream=str(upstream.path) if upstream else "")
        if getattr(config.arms, arm).enabled and (out / FINAL).is_dir():
            found[arm] = ArmResult.of(arm, out)
    return found

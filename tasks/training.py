"""The study's treatments, with TRL's own trainers: `sft` (SFTTrainer on ground-truth answers), `rft`
(GRPOTrainer with the puzzle reward) and `rollout_sft` (SFTTrainer on the RFT arm's correct rollouts).

    python -m flows.train --profile micro --set arms.rft.enabled=false     # the arms alone

Every arm: full fine-tuning or LoRA (tasks.models.load_model), fp32 on CPU and bf16 on GPU, a checkpoint
every arms.checkpoint_every steps (kept: they are the learning curves), and a rerun resumes from the last
checkpoint. Metrics go to the MLflow run active in the calling thread (Trainer's MLflow callback).
"""

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tasks.config import ModelConfig, SFTArmConfig, StudyConfig
from tasks.models import LOADING, chat, load_model, pick_device
from tasks.puzzles import PuzzleDataset, make_target, score_answer
from tasks.storage import write_text_once

ARMS = ("sft", "rft", "rollout_sft")
FINAL = "final"


class NoCorrectRollouts(RuntimeError):
    """rollout_sft has nothing to learn from: the RFT arm never produced an exact answer."""


@dataclass(frozen=True)
class ArmResult:
    """What an arm leaves on disk; tasks pass this, never a model."""

    arm: str
    path: Path  # <arm dir>/final holds the trained model (or adapter) and processor
    checkpoints: tuple[str, ...]  # checkpoint-<step> directories, oldest first
    rollouts: Path | None = None  # rft: every rollout, one JSON line each

    @property
    def final(self) -> Path:
        return self.path / FINAL


def preload() -> None:
    """Import TRL, datasets and the model classes in the calling thread. transformers and TRL import their
    members lazily, and two threads importing them at once race ("cannot import name 'SFTConfig' from 'trl'")."""
    import datasets  # noqa: F401
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: F401
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: F401


def device_args(model: ModelConfig) -> dict:
    """fp32 on CPU (TRL's bf16 default runs ~11x slower there and changes losses), bf16 on GPU."""
    on_gpu = pick_device(model).type == "cuda"
    return {"use_cpu": not on_gpu, "bf16": on_gpu, "fp16": False}


def common_args(config: StudyConfig, out: Path, steps: int, lr: float, batch_size: int) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_steps=1,
        save_steps=config.arms.checkpoint_every,
        save_strategy="steps",
        save_total_limit=None,
        save_only_model=False,
        report_to=["mlflow"],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        gradient_checkpointing=config.arms.gradient_checkpointing,
        deepspeed=config.arms.deepspeed,
        **device_args(config.model),
    )


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint in out, to resume from. A run killed while saving leaves a checkpoint
    without a readable trainer_state.json (the Trainer writes it last, after weights, optimizer and RNG
    state): such half-written checkpoints are removed, and training redoes those steps."""
    for checkpoint in reversed(checkpoints(out)):
        try:
            json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
            return checkpoint
        except (OSError, ValueError, KeyError):
            print(f"removing {checkpoint}: written only in part (killed while saving)")
            shutil.rmtree(checkpoint)
    return None


@torch.no_grad()
def restore_weights(model, config: StudyConfig, checkpoint: str | None) -> None:
    """Put a checkpoint's weights into the model a resumed trainer trains. transformers' Trainer loads them
    with load_state_dict, without the key mapping save_pretrained applied (Qwen2.5-VL is saved as
    `model.layers.*`, held as `model.language_model.layers.*`): it loads nothing and only warns, and the run
    goes on from the base weights with the checkpoint's optimizer state. Loading through from_pretrained maps
    the keys. (LoRA checkpoints hold adapter weights under PEFT's own names, which the Trainer loads right.)
    Called after the trainer is built, so a reference model (GRPO's KL term) stays the base."""
    if checkpoint is None or (Path(checkpoint) / "adapter_config.json").is_file():
        return
    saved, _ = load_model(config.model, checkpoint, trainable=False)
    model.load_state_dict(saved.state_dict(), strict=True)


def checkpoints(out: Path) -> tuple[str, ...]:
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return tuple(str(p) for p in sorted(found, key=lambda p: int(p.name.split("-")[-1])))


def _finish(trainer, processor, out: Path) -> None:
    """Save the final model (merged view not needed: LoRA saves the adapter) and processor atomically."""
    tmp = out / f".{FINAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    processor.save_pretrained(str(tmp))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    tmp.rename(out / FINAL)


# ---------------------------------------------------------------------------------------------------------
# SFT: ground-truth answers (arm `sft`) or correct rollouts (arm `rollout_sft`)


def sft_examples(dataset: PuzzleDataset, style: str) -> list[dict]:
    """TRL's conversational vision format: messages with an image placeholder, images beside them."""
    examples = []
    for record in dataset.records("train"):
        prompt = record[f"prompt_{style}"]
        examples.append(
            {
                "messages": _messages(prompt, make_target(record["answer"], style)),
                "images": [dataset.image(record)],
            }
        )
    return examples


def _messages(prompt: str, answer: str | None = None) -> list[dict]:
    messages = chat(prompt, image=None, answer=answer)
    messages[0]["content"].insert(0, {"type": "image"})  # TRL pairs placeholders with the `images` column
    return messages


def sft_args(config: StudyConfig, arm_config: SFTArmConfig, out: Path) -> dict:
    """SFTConfig keywords for the sft and rollout_sft arms."""
    return dict(
        **common_args(config, out, arm_config.steps, arm_config.learning_rate, arm_config.batch_size),
        assistant_only_loss=True,
        max_length=None,
    )


def train_sft(config: StudyConfig, arm: str, arm_config: SFTArmConfig, base: str, examples: list[dict], out: Path):
    """SFTTrainer with assistant-only loss; resumes from the last checkpoint in out."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out.mkdir(parents=True, exist_ok=True)
    if (out / FINAL).is_dir():  # written last, by an atomic rename
        return ArmResult(arm, out, checkpoints(out))
    if not examples:
        raise ValueError(f"{arm}: no training examples")
    model, processor = load_model(config.model, base)
    args = SFTConfig(**sft_args(config, arm_config, out))
    with LOADING:
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=processor
        )
    resume = last_checkpoint(out)
    restore_weights(trainer.model, config, resume)
    trainer.train(resume_from_checkpoint=resume)
    _finish(trainer, processor, out)
    return ArmResult(arm, out, checkpoints(out))


# ---------------------------------------------------------------------------------------------------------
# RFT: GRPO with the puzzle reward. Every rollout is recorded (TRL's own completion log keeps a few).


class RolloutRecorder:
    """The reward function GRPOTrainer calls; scores with tasks.puzzles.score_answer and appends every
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
            "prompt": _messages(record[f"prompt_{style}"]),
            "image": dataset.image(record),
            "answer": record["answer"],
            "id": record["id"],
        }
        for record in dataset.records("train")
    ]


def grpo_args(config: StudyConfig, out: Path) -> dict:
    """GRPOConfig keywords for the rft arm."""
    rft = config.arms.rft
    return dict(
        **common_args(config, out, rft.steps, rft.learning_rate, rft.batch_size),
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


def train_rft(config: StudyConfig, base: str, dataset: PuzzleDataset, out: Path) -> ArmResult:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    out.mkdir(parents=True, exist_ok=True)
    rollouts = out / "rollouts.jsonl"
    if (out / FINAL).is_dir():
        return ArmResult("rft", out, checkpoints(out), rollouts)
    resume = last_checkpoint(out)
    _truncate_rollouts(rollouts, resume)
    model, processor = load_model(config.model, base)
    style = config.arms.sft.prompt_style
    examples = Dataset.from_list(rft_examples(dataset, style))
    with LOADING:  # with beta > 0 and full fine-tuning, GRPOTrainer loads a reference model here
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[RolloutRecorder(rollouts, style)],
            args=GRPOConfig(**grpo_args(config, out)),
            train_dataset=examples,
            processing_class=processor,
        )
    restore_weights(trainer.model, config, resume)
    trainer.train(resume_from_checkpoint=resume)
    _finish(trainer, processor, out)
    return ArmResult("rft", out, checkpoints(out), rollouts)


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


# ---------------------------------------------------------------------------------------------------------
# Rollout-SFT data


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
            "messages": _messages(records[r["puzzle_id"]][f"prompt_{style}"], r["completion"].strip()),
            "images": [dataset.image(records[r["puzzle_id"]])],
        }
        for r in rollouts
    ]


def sample_correct_rollouts(
    config: StudyConfig, checkpoint: str, dataset: PuzzleDataset, out: Path, samples: int | None = None
) -> Path:
    """Fresh rollouts from an RFT checkpoint on the train split, scored and written like training rollouts."""
    from tasks.evaluation import generate

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


# ---------------------------------------------------------------------------------------------------------
# Where each arm lives, and its Prefect task. An arm's folder is named by the hash of what determines it
# (the base model's content, puzzles, model and arm settings, seed, and for rollout_sft the RFT arm it learns
# from), so changing one arm's settings retrains that arm and what depends on it only.


def arm_dir(config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, upstream: str = "") -> Path:
    from tasks.config import stable_hash
    from tasks.models import model_fingerprint

    spec = {
        "arm": arm,
        "base": model_fingerprint(base),
        "puzzles": dataset.dataset_hash,
        "model": config.model.model_dump(mode="json"),
        "settings": getattr(config.arms, arm).model_dump(mode="json"),
        "prompt_style": config.arms.sft.prompt_style,
        "checkpoint_every": config.arms.checkpoint_every,
        "seed": config.seed,
        "upstream": upstream,
    }
    return config.output.path / "arms" / f"{arm}-{stable_hash(spec)[:10]}"


def run_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, rft: ArmResult | None = None
) -> ArmResult:
    """Train one arm (the plain function behind the Prefect task)."""
    out = arm_dir(config, arm, base, dataset, upstream=str(rft.path) if rft else "")
    style = config.arms.sft.prompt_style
    if arm == "sft":
        records = dataset.records("train")
        write_training_data(out, [(r["id"], make_target(r["answer"], style)) for r in records])
        return train_sft(config, arm, config.arms.sft, base, sft_examples(dataset, style), out)
    if arm == "rft":
        return train_rft(config, base, dataset, out)
    if arm == "rollout_sft":
        if rft is None:
            raise ValueError("rollout_sft needs the rft arm's result")
        rollouts = rollout_source(config, rft, dataset, out)
        kept = correct_rollouts(rollouts)
        if not kept:
            raise NoCorrectRollouts(f"rollout_sft: no exact rollouts in {rollouts}; the RFT arm never solved a puzzle")
        write_training_data(out, [(r["puzzle_id"], r["completion"].strip()) for r in kept])
        return train_sft(config, arm, config.arms.rollout_sft, base, rollout_sft_examples(dataset, kept, style), out)
    raise ValueError(f"unknown arm {arm!r}; arms are {ARMS}")


TRAINING_DATA = "training_data.jsonl"


def write_training_data(out: Path, pairs: list[tuple[str, str]]) -> None:
    """What an SFT arm trains on, as {puzzle_id, completion} lines (the rft arm's is rollouts.jsonl):
    the learning-dynamics analysis scores it under the base model."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / TRAINING_DATA).is_file():
        lines = [json.dumps({"puzzle_id": pid, "completion": text}) for pid, text in pairs]
        write_text_once(out / TRAINING_DATA, "".join(line + "\n" for line in lines))


def training_data(result: ArmResult) -> Path:
    """The completions an arm was trained on: ground truth (sft), its own rollouts (rft), or the correct
    rollouts it kept (rollout_sft); one JSON line each with puzzle_id and completion."""
    return result.rollouts if result.arm == "rft" else result.path / TRAINING_DATA


def finished_arms(config: StudyConfig, base: str, dataset: PuzzleDataset) -> dict[str, ArmResult]:
    """The enabled arms already trained for this config (their final/ exists), without training anything."""
    found = {}
    for arm in ARMS:
        upstream = found.get("rft") if arm == "rollout_sft" else None
        if arm == "rollout_sft" and upstream is None:
            upstream_dir = arm_dir(config, "rft", base, dataset)
            upstream = ArmResult("rft", upstream_dir, checkpoints(upstream_dir), upstream_dir / "rollouts.jsonl")
        out = arm_dir(config, arm, base, dataset, upstream=str(upstream.path) if upstream else "")
        if getattr(config.arms, arm).enabled and (out / FINAL).is_dir():
            rollouts = out / "rollouts.jsonl" if arm == "rft" else None
            found[arm] = ArmResult(arm, out, checkpoints(out), rollouts)
    return found


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


def final_puzzle_scores(config: StudyConfig, result: ArmResult, dataset: PuzzleDataset) -> dict[str, float]:
    """Greedy puzzle scores of the arm's final model on the test split (evaluation.limit puzzles), cached
    in final/puzzle_scores.json."""
    from tasks.evaluation import puzzle_scores

    path = result.final / "puzzle_scores.json"
    if not path.is_file():
        model, processor = load_model(config.model, str(result.final), trainable=False)
        scores = puzzle_scores(model, processor, dataset, config.arms.sft.prompt_style, config.evaluation.limit)
        write_text_once(path, json.dumps(scores, indent=1))
    return json.loads(path.read_text())


def arm_task(config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, upstream: ArmResult | None = None):
    """The Prefect task training `arm`, materializing its folder as an asset; call .submit(...) on it."""
    from prefect.assets import materialize

    from assets import arm_checkpoints

    out = arm_dir(config, arm, base, dataset, upstream=str(upstream.path) if upstream else "")
    # One retry for transient failures: it resumes from the arm's last checkpoint, so it costs little.
    return materialize(
        arm_checkpoints(out, arm),
        name=f"train-{arm}",
        retries=1,
        retry_delay_seconds=5,
        retry_condition_fn=_worth_retrying,
    )(_tracked_arm)


def _worth_retrying(task, task_run, state) -> bool:
    """Not when the arm failed for a reason a retry cannot change: bad input, or no rollouts to learn from."""
    from tasks.config import ConfigError

    try:
        state.result()
    except (NoCorrectRollouts, ConfigError):
        return False
    except Exception:
        return True
    return True


def _tracked_arm(
    config: StudyConfig, arm: str, base: str, dataset: PuzzleDataset, parent_run_id: str, rft: ArmResult | None = None
) -> ArmResult:
    import mlflow

    from tasks.tracking import child_run

    with child_run(parent_run_id, arm, tags={"arm": arm, "stage": "train"}):
        result = run_arm(config, arm, base, dataset, rft)
        mlflow.log_params({"arm_dir": str(result.path), "base_model": base, "checkpoints": len(result.checkpoints)})
        mlflow.log_metrics(final_puzzle_scores(config, result, dataset))
        if result.rollouts is not None and result.rollouts.exists():
            mlflow.log_artifact(str(result.rollouts), "rollouts")
        mlflow.log_artifacts(str(result.final), "final")
    return result

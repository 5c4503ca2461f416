"""What every arm shares: the TRL arguments built from the study's config, checkpoints and resuming, the
finished model on disk, and the chat format TRL's datasets take. The arms: forgetting/sft.py,
forgetting/rft.py, forgetting/rollout_sft.py; which arm goes where: forgetting/arms.py.

Every arm: full fine-tuning or LoRA (forgetting/models.py:load_model), fp32 on CPU and bf16 on GPU, a
checkpoint every arms.checkpoint_every steps (kept: they are the learning curves), and a rerun resumes from
the last checkpoint. The Trainer reports to no logger of its own; `callbacks` (Callback objects) receive its
logs (the flows pass one that logs the metrics to the arm's MLflow run: tasks/training.py).
"""

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetting.config import ConfigError, ModelConfig, StudyConfig
from forgetting.image_files import IMAGE_FILES
from forgetting.models import chat, load_model, pick_device

FINAL = "final"
ROLLOUTS = "rollouts.jsonl"  # the rft arm's: every rollout, one JSON line each
TRAINING_DATA = "training_data.jsonl"  # an SFT-type arm's: the completions it trained on, one JSON line each
# what a Trainer's checkpoint holds besides the model and processor: the state to resume training from
TRAINING_STATE = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "trainer_state.json",
    "global_step*",
)


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

    @classmethod
    def of(cls, arm: str, path: Path) -> "ArmResult":
        """What arm's folder holds as it is now: its checkpoints, and for rft its rollouts file."""
        return cls(arm, path, checkpoints(path), path / ROLLOUTS if arm == "rft" else None)


class Callback:
    """Base of the study's Trainer callbacks: every event a subclass does not define does nothing, as on
    transformers' TrainerCallback (the Trainer calls each event by name and keeps what it returns when not None).
    Not a subclass of it: its module imports peft and the Trainer's utilities, some 3.5 s that a process that
    trains nothing (a rerun, an evaluation) would pay for building the callbacks it never uses."""

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return _no_op
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _no_op(*args, **kwargs) -> None:
    return None


class SaveAt(Callback):
    """Also save a checkpoint at the given steps (log-spaced points below an arm's plateau)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True
        return control


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


def batch_args(batch_size: int, micro_batch_size: int | None) -> dict:
    """Per-device batch and gradient accumulation so that every optimizer step sees batch_size samples over all
    processes (WORLD_SIZE, set by accelerate launch): micro_batch_size a device at once, or the whole share."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = micro_batch_size or batch_size // world
    if per_device < 1 or batch_size % (per_device * world):
        raise ConfigError(
            f"batch_size {batch_size} cannot be split into {world} process(es) x micro batches of "
            f"{micro_batch_size or 'batch_size / processes'}: set the arm's micro_batch_size to a divisor of "
            f"{batch_size // world if batch_size >= world else 'batch_size / processes'}"
        )
    accumulate = batch_size // (per_device * world)
    return {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": accumulate}


def common_args(config: StudyConfig, out: Path, arm_config) -> dict:
    """The TrainingArguments keywords every arm shares, from its section (steps, learning_rate, batch_size,
    micro_batch_size); the arm adds its trainer's own."""
    return dict(
        output_dir=str(out),
        max_steps=arm_config.steps,
        learning_rate=arm_config.learning_rate,
        **batch_args(arm_config.batch_size, arm_config.micro_batch_size),
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_steps=1,
        save_steps=config.arms.checkpoint_every,
        save_strategy="steps",
        save_total_limit=None,
        save_only_model=False,
        report_to=["none"],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        activation_checkpointing=config.arms.gradient_checkpointing,  # transformers' new name
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
            shutil.rmtree(checkpoint, ignore_errors=True)  # an arm's other processes remove it too
    return None


@torch.no_grad()
def restore_weights(model, config: StudyConfig, checkpoint: str | None) -> None:
    """Put a checkpoint's weights into the model a resumed trainer trains. transformers' Trainer loads them
    with load_state_dict, without the key mapping save_pretrained applied (Qwen2.5-VL is saved as
    `model.layers.*`, held as `model.language_model.layers.*`): it loads nothing and only warns, and the run
    goes on from the base weights with the checkpoint's optimizer state. Loading through from_pretrained maps
    the keys. (LoRA checkpoints hold adapter weights under PEFT's own names, which the Trainer loads right.)
    Called after the trainer is built, so a reference model (GRPO's KL term) stays the base. Under DeepSpeed the
    Trainer resumes from DeepSpeed's own checkpoint, under the module's own names, and ZeRO-3's parameters are
    shards this process cannot load a whole tensor into: nothing to do here."""
    if checkpoint is None or (Path(checkpoint) / "adapter_config.json").is_file() or config.arms.deepspeed:
        return
    saved, _ = load_model(config.model, checkpoint, trainable=False)
    model.load_state_dict(saved.state_dict(), strict=True)


def checkpoints(out: Path) -> tuple[str, ...]:
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return tuple(str(p) for p in sorted(found, key=lambda p: int(p.name.split("-")[-1])))


def is_main_process() -> bool:
    """Whether this process writes an arm's files: the only one, or rank 0 of an arm on several (RANK, set by
    accelerate launch and torchrun)."""
    return os.environ.get("RANK", "0") == "0"


def gathered(lines: list[str]) -> list[str] | None:
    """Every process's lines, in rank order, on the main process (None on the others); the lines themselves in
    a single process. Every process of the arm must call it at the same point."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lines
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, lines)
    return [line for part in every for line in part] if dist.get_rank() == 0 else None


def finish(trainer, processor, out: Path) -> None:
    """Save the final model (merged view not needed: LoRA saves the adapter) and processor atomically. Every
    process saves the model (DeepSpeed ZeRO-3 gathers its shards), the main process alone writes."""
    tmp = out / f".{FINAL}.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if is_main_process():
        processor.save_pretrained(str(tmp))
        (tmp / "trainer_state.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        tmp.rename(out / FINAL)
    trainer.accelerator.wait_for_everyone()


def fit(trainer, processor, config: StudyConfig, out: Path, resume: str | None, callbacks: Sequence = ()) -> None:
    """Train from resume (out's last complete checkpoint, or None: from the start), then save the final model.
    Checkpoints every arms.checkpoint_every steps and at arms.checkpoint_steps; callbacks get the Trainer's
    events and logs."""
    for callback in callbacks:
        trainer.add_callback(callback)
    if config.arms.checkpoint_steps:
        trainer.add_callback(SaveAt(config.arms.checkpoint_steps))
    restore_weights(trainer.model, config, resume)
    trainer.train(resume_from_checkpoint=resume)
    finish(trainer, processor, out)


def image_dataset(examples: list[dict]):
    """The examples as the datasets.Dataset TRL trains on; their `image` or `images` hold image file paths, decoded
    (as RGB) when a batch needs them, each file once a process (forgetting/image_files.py): GRPO's batches hold
    every puzzle's image num_generations times, and SFT's epochs come back to the same puzzles. Handing datasets
    decoded images instead made it re-encode every one as PNG bytes before the first step (some 3 s for 2,000
    puzzles on 2 cores)."""
    from datasets import Dataset

    data = Dataset.from_list(examples)
    data.set_transform(_decoded)
    return data


def _decoded(batch: dict) -> dict:
    """A batch of image_dataset's rows with their images decoded."""
    if "image" in batch:
        batch["image"] = [IMAGE_FILES.rgb(path) for path in batch["image"]]
    if "images" in batch:
        batch["images"] = [[IMAGE_FILES.rgb(path) for path in paths] for paths in batch["images"]]
    return batch


def trl_messages(prompt: str, answer: str | None = None) -> list[dict]:
    """A sample as TRL takes it: chat messages with an image placeholder, the image in a column beside them."""
    messages = chat(prompt, image=None, answer=answer)
    messages[0]["content"].insert(0, {"type": "image"})  # TRL pairs placeholders with the `images` column
    return messages

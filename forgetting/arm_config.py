"""The arms' sections of StudyConfig (forgetting/config.py, which imports them): each arm's settings, its prompt
style included, and what every arm shares (checkpoints, memory savers)."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from forgetting.schema import Section, unset_field

PromptStyle = Literal["direct", "think"]
STYLE_HELP = (
    "The puzzle prompt this arm trains on and is evaluated with. direct: `Answer with 4 numbers`; think: "
    "`Think inside <think> </think>, then give the 4 numbers ... inside <answer> </answer>`."
)


def micro_batch_field():
    return unset_field(
        "Samples one device computes at once; each step accumulates gradients over batch_size / "
        "(micro_batch_size x processes) of them, the same step in less memory. Empty: the whole batch at once "
        "(split over the processes).",
        ge=1,
        le=4096,
    )


def samples_field(description: str):
    """Fresh samples drawn per train puzzle, at most 256; empty (the default): arms.rft.num_generations."""
    return unset_field(
        description,
        ge=1,
        le=256,
    )


def check_micro_batch(section):
    """A micro batch divides the batch, so every step sees batch_size samples."""
    micro = section.micro_batch_size
    if micro is not None and section.batch_size % micro:
        raise ValueError(f"batch_size {section.batch_size} is not a multiple of micro_batch_size {micro}")
    return section


class SFTArmConfig(Section):
    enabled: bool = Field(True, description="Train this arm.")
    steps: int = Field(300, ge=1, le=1_000_000, description="Optimizer steps.")
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(16, ge=1, le=4096, description="Samples per optimizer step.")
    prompt_style: PromptStyle = Field(
        "direct",
        description=STYLE_HELP + " SFT's target under the think prompt is the answer alone, `<answer>...</answer>` "
        "(the paper's SFT without reasoning).",
    )
    micro_batch_size: int | None = micro_batch_field()

    _micro_divides = model_validator(mode="after")(check_micro_batch)


class RFTArmConfig(Section):
    enabled: bool = Field(True, description="Train this arm.")
    steps: int = Field(300, ge=1, le=1_000_000, description="GRPO optimizer steps.")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(32, ge=1, le=4096, description="Completions per step; a multiple of num_generations.")
    num_generations: int = Field(8, ge=2, le=256, description="Group size G: completions per prompt.")
    beta: float = Field(0.04, ge=0.0, le=10.0, description="KL penalty towards the base model.")
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Sampling temperature of rollouts.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage scaling: by the group's reward std (GRPO), the batch's, or none (Dr. GRPO).",
    )
    entropy_coef: float = Field(
        0.0, ge=0.0, le=1.0, description="Weight of the mean-token-entropy bonus in the loss (0: none)."
    )
    max_new_tokens: int = Field(32, ge=1, le=8192, description="Longest completion sampled.")
    prompt_style: PromptStyle = Field(
        "direct",
        description=STYLE_HELP + " Under the think prompt the format reward asks for exactly "
        "`<think>...</think><answer>...</answer>`.",
        exclude_if=lambda v: v == "direct",  # left out of dumps and hashes at its default: ids unchanged
    )
    use_vllm: bool = Field(False, description="GPU only: sample rollouts with TRL's vLLM integration (colocate).")
    micro_batch_size: int | None = micro_batch_field()

    @model_validator(mode="after")
    def _check(self) -> "RFTArmConfig":
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of num_generations {self.num_generations}"
            )
        return check_micro_batch(self)


class TeacherSFTArmConfig(SFTArmConfig):
    enabled: bool = Field(False, description="Train this arm.")
    prompt_style: Literal["think"] = Field(
        "think",
        description="Always think: the target is a scripted, always-correct explanation in a wording the base never "
        "saw, then the answer (the paper's SFT on a teacher model's reasoning).",
    )


class RolloutSFTArmConfig(SFTArmConfig):
    rollout_source: Literal["training", "final", "early"] = Field(
        "training",
        description="training: the RFT arm's recorded correct rollouts; final/early: fresh samples "
        "from the final or an early RFT checkpoint, kept when correct.",
    )
    samples_per_puzzle: int | None = samples_field(
        "final/early: fresh samples drawn per train puzzle (empty: arms.rft.num_generations). "
        "An exact answer is kept once per puzzle, so a model that is mostly right gains little from more."
    )
    early_step: int | None = unset_field(
        "early: the RFT checkpoint (its step) to sample from; one RFT saved (checkpoint_every, "
        "checkpoint_steps). Empty: the RFT arm's first checkpoint.",
        ge=1,
        le=1_000_000,
    )

    @model_validator(mode="after")
    def _early_only(self) -> "RolloutSFTArmConfig":
        if self.early_step is not None and self.rollout_source != "early":
            raise ValueError(f"early_step is read with rollout_source 'early' only, not {self.rollout_source!r}")
        return self


class IterativeSFTArmConfig(SFTArmConfig):
    enabled: bool = Field(False, description="Train this arm.")
    rounds: int = Field(
        4,
        ge=1,
        le=1000,
        description="Rounds of sampling and training: each round samples the model as it stands on every train "
        "puzzle, keeps the exact answers and trains steps / rounds steps on them (a fresh optimizer and cosine "
        "schedule each round).",
    )
    samples_per_puzzle: int | None = samples_field(
        "Samples drawn per train puzzle each round (empty: arms.rft.num_generations), at `temperature` and "
        "RFT's max_new_tokens; an exact answer is kept once per puzzle and round."
    )
    temperature: float | None = unset_field(
        "Sampling temperature of a round's samples (empty: arms.rft.temperature). At 1.0 a round "
        "samples the model's own distribution; above it, a flatter one.",
        gt=0.0,
        le=5.0,
    )
    answers_per_puzzle: int | None = unset_field(
        "Exact answers a round keeps per train puzzle, the first sampled (empty: every distinct one): "
        "with 1 every puzzle the round solves weighs the same, however often it was solved.",
        ge=1,
        le=256,
    )
    well_formed_only: bool = Field(
        False,
        description="Keep only the exact answers that are also valid and well-formed (the format bonus: in the "
        "think style one `<think>` block, then one `<answer>` block): a filter on what a round trains on; what "
        "counts as exact, the evaluation and RFT's reward stay as they are.",
        exclude_if=lambda on: not on,  # left out of dumps and hashes when off: ids unchanged
    )

    @model_validator(mode="after")
    def _rounds_divide(self) -> "IterativeSFTArmConfig":
        if self.steps % self.rounds:
            raise ValueError(f"steps {self.steps} is not a multiple of rounds {self.rounds}")
        return self


class ArmsConfig(Section):
    sft: SFTArmConfig = Field(default_factory=SFTArmConfig, description="SFT on ground-truth answers.")
    teacher_sft: TeacherSFTArmConfig = Field(
        default_factory=TeacherSFTArmConfig,
        description="SFT on a teacher's reasoning: a scripted, correct explanation plus the answer.",
        exclude_if=lambda arm: not arm.enabled,  # left out of dumps and hashes when off: ids unchanged
    )
    rft: RFTArmConfig = Field(default_factory=RFTArmConfig, description="RFT: GRPO with the puzzle reward.")
    rollout_sft: RolloutSFTArmConfig = Field(
        default_factory=RolloutSFTArmConfig, description="SFT on the RFT arm's correct rollouts."
    )
    iterative_sft: IterativeSFTArmConfig = Field(
        default_factory=IterativeSFTArmConfig,
        description="Iterative self-SFT: SFT on the model's own exact samples, drawn again from the model as it "
        "stands every round (the first round from the base).",
        exclude_if=lambda arm: not arm.enabled,  # left out of dumps and hashes when off: ids unchanged
    )
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Save a checkpoint every N steps.")
    checkpoint_steps: list[int] = Field(
        default_factory=list,
        max_length=64,
        description="Steps to save a checkpoint at besides every checkpoint_every, e.g. [5, 10, 20]: points "
        "below an arm's plateau on its learning curve. The evaluation reads them all.",
        exclude_if=lambda steps: not steps,  # left out of dumps and hashes when empty: ids unchanged
    )
    num_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes each arm trains on, one per GPU (iterative_sft: one only). Above 1 an arm runs "
        "under `accelerate launch` (DDP, or DeepSpeed with `deepspeed`) in a subprocess its task waits for; its first "
        "process alone writes rollouts and logs to MLflow. A step still sees batch_size samples in all.",
        exclude_if=lambda n: n == 1,  # left out of dumps and hashes at its default: ids unchanged
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on GPU).")
    deepspeed: str | None = Field(
        None, description="Path to a DeepSpeed JSON config passed to the trainers (ZeRO-2/3 over num_processes GPUs)."
    )

    def fresh_sampling(self, samples: int | None, temperature: float | None = None) -> dict:
        """How fresh samples are drawn (rollout-SFT's from an RFT checkpoint, iterative-SFT's every round):
        samples a puzzle (None: rft.num_generations) at temperature (None: RFT's) and RFT's max_new_tokens.
        iterative_sft, which samples afresh without learning from the RFT arm, has these in its spec
        (forgetting/arms.py:arm_spec): some are RFT's settings, not its own."""
        return {
            "samples": samples or self.rft.num_generations,
            "temperature": temperature or self.rft.temperature,
            "max_new_tokens": self.rft.max_new_tokens,
        }

    def iterative_sampling(self) -> dict:
        """How iterative_sft's rounds sample: its samples_per_puzzle and temperature, RFT's where they are empty."""
        return self.fresh_sampling(self.iterative_sft.samples_per_puzzle, self.iterative_sft.temperature)

    def rft_checkpoint_steps(self) -> list[int]:
        """The steps the RFT arm saves a checkpoint at, before its final model."""
        every = range(self.checkpoint_every, self.rft.steps, self.checkpoint_every)
        return sorted({*every, *(s for s in self.checkpoint_steps if s < self.rft.steps)})

    @model_validator(mode="after")
    def _early_step_saved(self) -> "ArmsConfig":
        step = self.rollout_sft.early_step
        if self.rollout_sft.enabled and step is not None and step not in self.rft_checkpoint_steps():
            raise ValueError(
                f"rollout_sft.early_step {step} is not a step the RFT arm saves a checkpoint at; it saves at "
                f"{self.rft_checkpoint_steps() or 'none'} (checkpoint_every, checkpoint_steps)"
            )
        return self

    @model_validator(mode="after")
    def _rollouts_in_style(self) -> "ArmsConfig":
        if self.rollout_sft.enabled and self.rollout_sft.prompt_style != self.rft.prompt_style:
            raise ValueError(
                f"rollout_sft.prompt_style {self.rollout_sft.prompt_style!r} differs from rft.prompt_style "
                f"{self.rft.prompt_style!r}: rollout-SFT learns RFT's answers to RFT's prompts"
            )
        return self

    @model_validator(mode="after")
    def _iterative_on_one_process(self) -> "ArmsConfig":
        if self.iterative_sft.enabled and self.num_processes > 1:
            raise ValueError("iterative_sft samples its rounds in one process: it needs num_processes 1")
        return self

    @model_validator(mode="after")
    def _answers_capped_below_samples(self) -> "ArmsConfig":
        arm = self.iterative_sft
        samples = self.iterative_sampling()["samples"]
        if arm.answers_per_puzzle is not None and arm.answers_per_puzzle >= samples:
            raise ValueError(
                f"iterative_sft.answers_per_puzzle {arm.answers_per_puzzle} caps nothing: a round draws "
                f"{samples} samples a puzzle (samples_per_puzzle, else rft.num_generations); leave it empty"
            )
        return self

    @field_validator("checkpoint_steps")
    @classmethod
    def _positive_steps(cls, v: list[int]) -> list[int]:
        if any(step < 1 for step in v):
            raise ValueError("checkpoint steps must be at least 1")
        return sorted(set(v))

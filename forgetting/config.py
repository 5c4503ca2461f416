"""StudyConfig: every study-level choice, typed, bounded and described; the study flow's parameter, so the
Prefect UI renders it as a form. It imports no stage: checks that need one (the base model exists, lm-eval
knows the benchmarks, MLflow answers) run in flows/preflight.py before any work. forgetting/profiles.py builds
it from a YAML profile in configs/ plus `--set dotted.key=value` overrides."""

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from forgetting.arm_config import (  # noqa: F401 - the arms' sections, imported from here like the rest
    ArmsConfig,
    IterativeSFTArmConfig,
    RFTArmConfig,
    RolloutSFTArmConfig,
    SFTArmConfig,
    TeacherSFTArmConfig,
)
from forgetting.schema import ConfigError, Section, unset_field  # noqa: F401 - ConfigError is imported from here everywhere
from forgetting.storage import stable_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "configs"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "runs"

# Qwen2.5-VL cuts images into 14 px patches and merges 2x2 of them into one token, so a tile whose side
# is a multiple of 28 px is a whole number of image tokens.
TOKEN_PX = 28


# The project's own models: a size (micro, tiny, small), optionally with a suffix naming a variant of its
# pretraining (tiny-think: the tiny base that also learned the think style; tiny-think-brief: tiny-think whose think
# answers often follow a brief reasoning, so they read the picture; tiny-think-brief-long: tiny-think-brief trained
# longer in the think style). The shipped ones lie in assets/<name>-base (models.SHIPPED); small is only built by
# pretraining.
SHIPPED_MODELS = ("micro", "tiny", "tiny-think", "tiny-think-brief", "tiny-think-brief-long")
PROJECT_MODELS = (*SHIPPED_MODELS, "small")

# What does not change a study's results: where they go, where they are tracked, when reruns happen, the sweep the
# study may be a point of, and how many processes share the work.
NOT_RESULTS = {"output", "tracking", "schedule", "sweep", "seed_processes"}
NOT_RESULTS_WITHIN = {"evaluation": {"processes"}}  # fields of a section


def not_results(keep: frozenset[str] = frozenset()) -> dict:
    """model_dump's `exclude` that leaves out what does not change results (but the top-level fields in keep)."""
    return dict.fromkeys(NOT_RESULTS - keep, True) | NOT_RESULTS_WITHIN


class PuzzleConfig(Section):
    grid: str = Field(
        "2x2",
        pattern=r"^[1-6]x[1-6]$",
        description="Rows x columns of tiles, e.g. '3x3' (each 1..6, at least 2 tiles).",
    )
    source: Literal["synthetic", "bundled", "folder"] = Field(
        "synthetic",
        description="synthetic: procedural images (see difficulty); bundled: crops of the photos that "
        "scikit-image and scikit-learn ship; folder: your own images (e.g. COCO train2014).",
    )
    folder: str | None = Field(
        None, description="Image folder, searched recursively; required when source is 'folder'."
    )
    image_size: int | None = Field(
        None,
        ge=TOKEN_PX,
        le=2016,
        description="Side of the square puzzle image in px; a multiple of 28 x rows and 28 x columns. "
        "Empty: the smallest such side of at least 112 px.",
    )
    difficulty: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="synthetic only. 0: a smooth colour gradient across the image tells each tile where "
        "it belongs; 1: no gradient, only clutter whose edges continue across tiles.",
    )
    cue: Literal["gradient", "code_colours", "new_colours"] = Field(
        "gradient",
        description="synthetic only. gradient: red grows to the right, green downwards (the corners dark, red, "
        "green, yellow: the base's colour codes mostly disagree with the tiles' positions); code_colours: "
        "corners red, green, blue, yellow, the base's colour codes 1..4, so a base that carries its codes over to "
        "the puzzle answers it right (a control for how far the ground truth sits from the base); new_colours: "
        "corners black, orange, purple, white, colours the base names but has no code for (the map is new to it "
        "and contradicts none of its codes).",
        exclude_if=lambda cue: cue == "gradient",  # left out of dumps and hashes at its default: ids unchanged
    )
    n_train: int = Field(512, ge=1, le=1_000_000, description="Puzzles in the train split.")
    n_test: int = Field(128, ge=1, le=100_000, description="Puzzles in the test split.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the puzzle generator.")
    contact_sheet: int = Field(8, ge=1, le=64, description="Puzzles drawn on the contact sheet PNG.")

    @model_validator(mode="after")
    def _check(self) -> "PuzzleConfig":
        rows, cols = self.shape
        if rows * cols < 2:
            raise ValueError("grid must have at least 2 tiles")
        if self.image_size is not None and self.image_size % self.side_unit:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of {self.side_unit} "
                f"(28 px x {rows} rows and x {cols} columns)"
            )
        if self.source == "folder" and not self.folder:
            raise ValueError("source 'folder' needs puzzles.folder")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.grid.split("x")
        return int(rows), int(cols)

    @property
    def side_unit(self) -> int:
        rows, cols = self.shape
        return TOKEN_PX * math.lcm(rows, cols)

    @property
    def side(self) -> int:
        """The image side actually used."""
        if self.image_size is not None:
            return self.image_size
        return self.side_unit * math.ceil(112 / self.side_unit)


class ModelConfig(Section):
    name_or_path: str = Field(
        "tiny",
        min_length=1,
        description="'micro', 'tiny', 'tiny-think', 'tiny-think-brief' or 'tiny-think-brief-long' (the project's own "
        "Qwen2.5-VL-architecture models; tiny-think also answers in the think style, tiny-think-brief often after a "
        "brief reasoning, tiny-think-brief-long as right as in the direct style), a hub id such as "
        "Qwen/Qwen2.5-VL-3B-Instruct, or a local directory.",
    )
    finetune: Literal["full", "lora"] = Field("full", description="Train all weights or a LoRA adapter.")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank (finetune: lora).")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha (finetune: lora).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available.")
    pretrain: bool = Field(
        False,
        description="micro/tiny only: pretrain the base in this study (see the pretrain section) instead of "
        "loading the shipped checkpoint.",
    )


class PretrainConfig(Section):
    steps: int = Field(4000, ge=1, le=1_000_000, description="Optimizer steps of base-model pretraining.")
    batch_size: int = Field(32, ge=1, le=4096, description="Prior-knowledge items per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="Peak learning rate.")
    vision_lr_multiplier: float = Field(
        1.0, gt=0, le=100.0, description="Learning rate of the vision tower and merger, as a multiple of the peak."
    )
    warmup_steps: int = Field(100, ge=0, le=100_000, description="Linear warm-up, then cosine decay to 10%.")
    vision_warmup_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Steps that train the vision tower alone first, with linear heads reading the image-only "
        "tasks' answers from its output (0: none).",
    )
    vision_aux_weight: float = Field(
        0.0,
        ge=0,
        le=100.0,
        description="Weight of an auxiliary loss during pretraining: linear heads read the image-only tasks' "
        "answers from the vision tower's output on every batch (0: none).",
        exclude_if=lambda w: w == 0.0,  # left out of dumps and hashes at its default: ids unchanged
    )
    task_draws: Literal["equal", "error"] = Field(
        "equal",
        description="How tasks are drawn into batches: equally, or by each task's error on its latest training "
        "items (scored before training on them) plus draw_floor.",
        exclude_if=lambda v: v == "equal",  # left out of dumps and hashes at its default: ids unchanged
    )
    draw_floor: float = Field(
        0.1,
        gt=0,
        le=100.0,
        description="With task_draws=error: the weight of a task it gets everything right on (an all-wrong "
        "task weighs draw_floor + 1).",
        exclude_if=lambda v: v == 0.1,
    )
    eval_every: int = Field(250, ge=1, le=1_000_000, description="Held-out accuracy per task every N steps.")
    eval_items: int = Field(200, ge=8, le=100_000, description="Held-out items per task in each evaluation.")
    vocab_size: int = Field(768, ge=300, le=65_536, description="Size of the byte-level BPE vocabulary.")
    image_position: Literal["first", "last"] = Field(
        "last",
        description="Where the chat template puts a user turn's image: before its text, or after it (a tiny "
        "model learns faster: the answer is then always the same distance from the image).",
    )
    start_from: Literal[SHIPPED_MODELS] | None = unset_field(
        "Continue from this shipped base (its weights and tokenizer; vocab_size and image_position are then its "
        "own) instead of a random initialisation. Empty: from scratch."
    )
    think_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of items asked in the think style: `<think>` what the model sees `</think><answer>` the "
        "answer `</answer>`, the four tags one token each (0: direct answers only, as the tiny base).",
        exclude_if=lambda v: v == 0.0,  # left out of dumps and hashes at its default: ids unchanged
    )
    brief_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of the think items whose reasoning is brief (`I look at the 4 cells`) instead of what the "
        "model sees, so that a think answer also learns to read the image itself, as a direct answer does.",
        exclude_if=lambda v: v == 0.0,  # left out of dumps and hashes at its default: ids unchanged
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of initialisation and data order.")


class EvaluationConfig(Section):
    benchmarks: list[str] = Field(
        default_factory=lambda: ["tiny_world"],
        description="lm-eval task or group names; 'tiny_world' is the embedded prior-knowledge suite.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many items per benchmark (empty: all).")
    batch_size: int = Field(32, ge=1, le=4096, description="Items generated per batch.")
    every: int = Field(100, ge=1, le=1_000_000, description="Evaluate intermediate checkpoints every N steps.")
    matched_accuracy: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Puzzle exact accuracy at which arms are compared: steps to reach it, forgetting there.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=16,
        description="On CPU: evaluate this many models side by side, each in a process of its own with an equal "
        "share of the study's threads, the first ones while the last arm trains (1: one after another in the "
        "study's process, after training). Changes no score; log-probabilities move in the sixth digit at most.",
    )


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Empty: $MLFLOW_TRACKING_URI, else `sqlite:///<output dir>/mlflow.db`.",
    )
    experiment: str = Field("forgetting-study", min_length=1, description="MLflow experiment name.")


class ScheduleConfig(Section):
    cron: str | None = Field(
        None,
        pattern=r"^(\S+\s+){4}\S+$",
        description="Served deployments rerun the study on this cron schedule, e.g. '0 3 * * 1' (empty: none).",
    )
    timezone: str = Field("UTC", min_length=1, description="Time zone of the cron schedule.")
    add_seeds: int = Field(
        1,
        ge=0,
        le=16,
        description="What a scheduled run does: the study over every seed the output folder already holds a report "
        "for, plus this many new ones, so each run narrows the intervals (0: an unchanged rerun, which recomputes "
        "nothing).",
    )


class SweepConfig(Section):
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="flows.sweep only: dotted config keys and the values to try; every combination is one point, "
        "e.g. {'arms.sft.learning_rate': [0.0005, 0.0001]}.",
        exclude_if=lambda grid: not grid,
    )
    extra: list[dict[str, Any]] = Field(
        default_factory=list,
        description="flows.sweep only: further points, each a mapping of dotted keys to values.",
        exclude_if=lambda extra: not extra,
    )
    deployment: str | None = unset_field(
        "flows.sweep only: run every point as its own flow run of this study deployment (e.g. 'study/tiny', served "
        "or on a work pool whose workers share the output folder), all at once; empty: one after another in the "
        "sweep's own process. Where points run changes no result.",
        pattern=r"^[^/\s]+/[^/\s]+$",
    )
    reference: str | None = unset_field(
        "flows.sweep only: a sweep's report folder (its report/, or a published block such as "
        "docs/results-think-capped-hot; relative paths from the repository) whose RFT checkpoints this sweep's arms "
        "are compared with, seed by seed, when no point trains RFT itself. Its study must be this one but for the "
        "arms (the same base, puzzles and evaluation) and hold this sweep's seeds. Empty: none.",
        max_length=1000,
    )
    compare: list[str] = Field(
        default_factory=list,
        description="flows.sweep only: sweep report folders (as for reference) whose arm families besides RFT's "
        "this sweep's frontiers include, each renamed FAMILY@NAME (NAME: that sweep's name), and with which this "
        "sweep's family of the same name is compared, seed by seed. Each study must be this one but for the arms "
        "and hold this sweep's seeds. Empty: none.",
        max_length=8,
        exclude_if=lambda compare: not compare,  # left out of dumps and hashes when empty: sweep ids unchanged
    )

    @property
    def has_points(self) -> bool:
        """Whether it names any point; a config without one is a plain study."""
        return bool(self.grid or self.extra)


class OutputConfig(Section):
    dir: str | None = Field(None, description="Where runs are written. Empty: runs/ in the repository.")

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser().resolve() if self.dir else DEFAULT_OUTPUT_DIR


class StudyConfig(Section):
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Study name; prefixes the id.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of model initialisation and training.")
    seeds: list[int] = Field(
        default_factory=list,
        max_length=16,
        description="Run the arms and evaluations once per seed (e.g. [0, 1, 2]) and report mean and 95% CI; "
        "empty: the one `seed`.",
    )
    seed_processes: int = Field(
        1,
        ge=1,
        le=16,
        description="With several seeds: how many run side by side, each in a process of its own with an equal "
        "share of the CPU cores, shared out again as seeds end (1: one after another in the study's own process). "
        "Where a seed runs changes no weight, rollout or score.",
    )
    # In the order of the run form: what a person changes most first.
    arms: ArmsConfig = Field(default_factory=ArmsConfig, description="The training arms.")
    puzzles: PuzzleConfig = Field(default_factory=PuzzleConfig, description="The novel task.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Benchmarks.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    pretrain: PretrainConfig = Field(
        default_factory=PretrainConfig, description="Pretraining of the tiny base on the tiny world."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Output location.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig,
        description="Reruns of served deployments: the cron schedule is read when `make serve` starts, add_seeds "
        "by each scheduled run; a run started here ignores the section.",
    )
    sweep: SweepConfig = Field(
        default_factory=SweepConfig,
        description="A sweep of this study over settings (flows.sweep); a study ignores it.",
        exclude_if=lambda sweep: not sweep.has_points,
    )

    @model_validator(mode="after")
    def _check_pretrain(self) -> "StudyConfig":
        if self.model.pretrain and self.model.name_or_path not in PROJECT_MODELS:
            raise ValueError(f"model.pretrain needs model.name_or_path one of {', '.join(PROJECT_MODELS)}")
        return self

    @model_validator(mode="after")
    def _check_seed_processes(self) -> "StudyConfig":
        if self.seed_processes > 1 and self.arms.num_processes > 1:
            raise ValueError("seed_processes > 1 needs arms.num_processes 1 (each arm's processes take every device)")
        return self

    @field_validator("name")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s < 0 or s > 2**31 - 1 for s in v):
            raise ValueError("seeds must be distinct integers in [0, 2^31 - 1]")
        return v

    @property
    def all_seeds(self) -> list[int]:
        """The seeds the study runs: seeds, or [seed] when seeds is empty (the seeds of per_seed's configs)."""
        return self.seeds or [self.seed]

    def per_seed(self) -> list["StudyConfig"]:
        """One single-seed config per entry of seeds (each is the study with that `seed`, sharing its outputs),
        or [self] when seeds is empty."""
        return [self.model_copy(update={"seed": s, "seeds": []}) for s in self.seeds] or [self]

    def config_hash(self) -> str:
        """Hash of everything that changes results (not where they are written or tracked, nor when rerun)."""
        return stable_hash(self.model_dump(mode="json", exclude=not_results()))

    @property
    def study_id(self) -> str:
        return f"{self.name}-{self.config_hash()[:10]}"

    @property
    def report_dir(self) -> Path:
        """Where the study's report goes: <output>/<study id>/report."""
        return self.output.path / self.study_id / "report"

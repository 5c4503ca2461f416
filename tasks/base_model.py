"""The base-model stage as Prefect tasks: resolve (or pretrain) the base, build the prior-knowledge
benchmarks. Both products are content-addressed folders (the base finishes with model_card.json, the held-out
sets appear whole): a rerun finds them and returns at once.
"""

from pathlib import Path

import mlflow
from prefect.assets import materialize

from assets import base_model, prior_benchmarks
from forgetting.base_model import build_base, heldout_dir, pretrain_base_model, resolve_base, write_heldout_sets
from forgetting.config import StudyConfig
from tasks import retried_unless
from tasks.tracking import child_run


def base_model_task(config: StudyConfig, log=lambda metrics, step: None) -> str:
    """Resolve the base model, pretraining or initialising it first when the study's is its own (build_base);
    materializes assets.base_model."""
    target = resolve_base(config)

    @materialize(base_model(target), name="resolve-base-model", retries=1, retry_condition_fn=retried_unless())
    def resolve(config: StudyConfig) -> str:
        build_base(config, Path(target), log)  # the study's own pretraining or random initialisation, if any
        return target

    return resolve(config)


def tracked_base_model(config: StudyConfig, parent_run_id: str) -> str:
    """base_model_task inside an MLflow child run `base` (pretraining curves, when the study pretrains)."""
    with child_run(parent_run_id, "base", tags={"stage": "base", "arm": "base"}):
        base = base_model_task(config, log=lambda metrics, step: mlflow.log_metrics(metrics, step=step))
        mlflow.log_param("base_model", base)
    print(f"base model: {base}")
    return base


def prior_benchmarks_task(config: StudyConfig) -> Path:
    """write_heldout_sets as a Prefect task materializing the held-out folder."""

    @materialize(
        prior_benchmarks(heldout_dir(config)),
        name="build-prior-benchmarks",
        retries=1,
        retry_condition_fn=retried_unless(),
    )
    def build(config: StudyConfig) -> Path:
        return write_heldout_sets(config)

    return build(config)


def tracked_pretraining(config: StudyConfig, parent_run_id: str, out: Path, command: str) -> dict:
    """pretrain_base_model into out inside an MLflow child run `pretrain-base`: its settings as params, the
    curves as metrics (held-out accuracy printed as it comes), the model card as an artifact."""
    with child_run(parent_run_id, "pretrain-base", tags={"stage": "pretrain", "arm": "base"}):
        mlflow.log_params({f"pretrain.{k}": v for k, v in config.pretrain.model_dump().items()})

        def log(metrics: dict, step: int) -> None:
            mlflow.log_metrics(metrics, step=step)
            if "heldout.mean" in metrics or "jigsaw.exact" in metrics:
                print(f"step {step}: " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))

        card = pretrain_base_model(config, out, log, command=command)
        mlflow.log_dict(card, "model_card.json")
    return card

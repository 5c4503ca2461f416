"""Pretrain the tiny base model on the tiny world and ship it in assets/<size>-base.

    python -m flows.pretrain_base --profile tiny                 # assets/tiny-base (about 60 min, 2 cores)
    python -m flows.pretrain_base --profile micro                # assets/micro-base (the test profile's base)
    python -m flows.pretrain_base --profile tiny-think           # assets/tiny-think-base (also thinks)
    python -m flows.pretrain_base --profile tiny-think-brief     # assets/tiny-think-brief-base (from tiny-think)
    python -m flows.pretrain_base --profile tiny-think-brief-long  # assets/tiny-think-brief-long-base
    python -m flows.pretrain_base --profile tiny --destination /tmp/base   # a try that leaves assets/ alone

Writes into the shipped base's folder, assets/<model>-base, unless `--destination DIR` names another
(`--output-dir` says where the MLflow artifacts go, not the model): model.safetensors, the processor
(tokenizer, chat template, image processor) and model_card.json (command, seed, data hash, parameter count,
held-out accuracy per task, jigsaw probe, wall time), and logs curves to an MLflow child run.
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

import sys
from pathlib import Path

from prefect import flow

from flows.cli import run
from forgetting.config import PROJECT_MODELS, ConfigError, StudyConfig
from forgetting.models import ASSETS, SHIPPED
from tasks.base_model import tracked_pretraining
from tasks.tracking import study_run


def ship_dir(config: StudyConfig) -> Path:
    name = config.model.name_or_path
    if name not in PROJECT_MODELS:
        raise ConfigError(f"model.name_or_path: pretrain_base builds one of {', '.join(PROJECT_MODELS)}, not {name!r}")
    return SHIPPED.get(name, ASSETS / f"{name}-base")


@flow(name="pretrain-base", log_prints=True)
def pretrain_base(config: StudyConfig = StudyConfig(), destination: str | None = None) -> dict:  # noqa: B008
    """Pretrain the tiny base model on the tiny world's prior-knowledge tasks."""
    out = Path(destination) if destination else ship_dir(config)
    command = " ".join(["python -m flows.pretrain_base", *sys.argv[1:]])
    with study_run(config, run_name=f"pretrain {config.model.name_or_path}") as run_id:
        card = tracked_pretraining(config, run_id, out, command)
    print(f"base model written to {out} ({card['parameters']} parameters, {card['wall_time_s']} s)")
    print("held-out accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in card["heldout_accuracy"].items()))
    for key in ("jigsaw", "jigsaw_think"):
        if key in card:
            print(f"{key} probe: " + ", ".join(f"{k} {v:.3f}" for k, v in card[key].items()))
    if "heldout_answered_think" in card:
        print("held-out, think: " + ", ".join(f"{k} {v:.2f}" for k, v in card["heldout_answered_think"].items()))
    return card


def _arguments(parser) -> None:
    parser.add_argument(
        "--destination", default=None, help="where the base model is written (default: assets/<model>-base)"
    )


def main(argv: list[str] | None = None) -> None:
    """The command line (argv, default sys.argv[1:]); the model card records sys.argv as the command."""
    run(pretrain_base, argv, base_model=False, benchmarks=False, extend=_arguments)


if __name__ == "__main__":
    main()

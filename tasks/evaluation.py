"""The evaluation stage as Prefect tasks: one per model evaluated, materializing its results folder with the
model as its upstream asset; each arm's evaluations logged to an MLflow child run.
"""

from pathlib import Path

import mlflow
from prefect.assets import materialize

from assets import evaluation
from forgetting.benchmarks import BenchmarkData
from forgetting.config import StudyConfig
from forgetting.evaluation import EVAL_VERSION, EvalTarget, eval_dir, evaluate_target
from forgetting.metrics import is_puzzle, read_evaluation
from tasks import retried_unless
from tasks.tracking import child_run, flat_params


def evaluation_task(config, target: EvalTarget, data: BenchmarkData, base: str) -> Path:
    """evaluate_target as a Prefect task materializing the evaluation folder (lineage: the model evaluated)."""
    out = eval_dir(config, target, data, base)
    task = materialize(
        evaluation(out, target.arm, target.step),
        name=f"evaluate-{target.arm}",
        task_run_name=f"evaluate-{target.arm}-{target.step}",
        asset_deps=[Path(target.path).resolve().as_uri()] if Path(target.path).exists() else None,
        retries=1,
        retry_delay_seconds=5,
        retry_condition_fn=retried_unless(),
    )(evaluate_target)
    return task(config, target, data, base)


def eval_metrics(record: dict) -> dict[str, float]:
    """One evaluation as flat MLflow metrics: per benchmark its score and format-ok rate, plus the predictors."""
    metrics = {}
    for row in record["benchmarks"]:
        name = row["benchmark"]
        metrics[f"{name}.{row['metric']}"] = row["value"]
        if row["format_failures"] is not None:
            metrics[f"{name}.format_ok"] = 1 - row["format_failures"] / row["n"]
    prior = [r["value"] for r in record["benchmarks"] if not is_puzzle(record, r["benchmark"])]
    puzzle = [r["value"] for r in record["benchmarks"] if r["benchmark"] == record["puzzle_benchmark"]]
    metrics["puzzle_exact"] = puzzle[0] if puzzle else float("nan")
    metrics["prior_mean"] = sum(prior) / len(prior) if prior else float("nan")
    for key, value in (record.get("param_distance") or {}).items():
        metrics[f"param_distance.{key}"] = value
    for key in ("forward", "reverse"):
        if key in (record.get("policy_kl") or {}):
            metrics[f"{key}_kl"] = record["policy_kl"][key]
    for name, value in record["answer_logprob"].items():
        metrics[f"{name}.answer_logprob"] = value
    return metrics


def eval_params(config: StudyConfig, arm: str, targets: list[EvalTarget], data: BenchmarkData, base: str) -> dict:
    """An arm's evaluation run's parameters: the arm, the steps evaluated, the benchmark settings, what it read."""
    return {
        "arm": arm,
        "steps": ",".join(str(t.step) for t in targets),
        "model_path": targets[-1].path,
        "base_model": base,
        "prior_benchmarks": data.tiny_world_dir,
        "puzzles": data.puzzles_dir,
        "prompt_style": ",".join(targets[0].styles),
        "eval_version": EVAL_VERSION,
    } | flat_params(config.evaluation.model_dump(mode="json"), "evaluation.")


def evaluate_targets(
    config: StudyConfig, run_id: str, targets: list[EvalTarget], data: BenchmarkData, base: str, progress
) -> list[Path]:
    """Evaluate every target, the base first, each arm in an MLflow child run `eval-<arm>` whose metrics sit at
    each checkpoint's step (so MLflow draws the curves), its final evaluation as an artifact. Returns the
    evaluation folders; progress(share done, what) after each."""
    folders = []
    for arm in dict.fromkeys(t.arm for t in targets):
        mine = [t for t in targets if t.arm == arm]
        with child_run(run_id, f"eval-{arm}", tags={"stage": "evaluate", "arm": arm}):
            mlflow.log_params(eval_params(config, arm, mine, data, base))
            for target in mine:
                folder = evaluation_task(config, target, data, base)
                record, _ = read_evaluation(folder)
                metrics = eval_metrics(record)
                mlflow.log_metrics(metrics, step=target.step)
                folders.append(folder)
                progress(len(folders) / (len(targets) + 1), f"evaluated {arm} step {target.step}")
                print(
                    f"evaluated {arm} step {target.step}: puzzle {metrics['puzzle_exact']:.3f}, "
                    f"prior mean {metrics['prior_mean']:.3f} ({record['seconds']} s)"
                )
            mlflow.log_artifacts(str(folder), "final_evaluation")
    return folders

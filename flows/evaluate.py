"""Evaluate the base model and every trained arm (final model and checkpoints) through lm-eval, then
compute forgetting and learning dynamics and write the report. Runs alone after flows.train, or as the
study's last stages.

    python -m flows.evaluate --profile tiny       # arms not trained yet for this config are left out
"""

import functools
from pathlib import Path

import mlflow
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.cli import run
from flows.preflight import check_inputs
from flows.puzzles import make_puzzles
from forgetting.arms import finished_arms, training_data
from forgetting.benchmarks import BenchmarkData
from forgetting.config import StudyConfig
from forgetting.evaluation import data_nll, eval_targets
from forgetting.metrics import read_evaluation
from forgetting.models import load_model
from forgetting.puzzle_data import PuzzleDataset
from forgetting.report import forgetting_pivot, summary_frame, without_nan
from forgetting.trainer import ArmResult
from tasks.base_model import prior_benchmarks_task, tracked_base_model
from tasks.evaluation import evaluation_task
from tasks.report import aggregate_task, report_task
from tasks.tracking import child_run, seed_run, study_run, tracking_uri


def eval_metrics(record: dict) -> dict[str, float]:
    """One evaluation as flat MLflow metrics: per benchmark its score and format-ok rate, plus dynamics."""
    metrics = {}
    for row in record["benchmarks"]:
        name = row["benchmark"]
        metrics[f"{name}.{row['metric']}"] = row["value"]
        if row["format_failures"] is not None:
            metrics[f"{name}.format_ok"] = 1 - row["format_failures"] / row["n"]
    prior = [r["value"] for r in record["benchmarks"] if r["benchmark"] != record["puzzle_benchmark"]]
    puzzle = [r["value"] for r in record["benchmarks"] if r["benchmark"] == record["puzzle_benchmark"]]
    metrics["puzzle_exact"] = puzzle[0] if puzzle else float("nan")
    metrics["prior_mean"] = sum(prior) / len(prior) if prior else float("nan")
    for key, value in (record.get("param_distance") or {}).items():
        metrics[f"param_distance.{key}"] = value
    for name, value in record["answer_logprob"].items():
        metrics[f"{name}.answer_logprob"] = value
    return metrics


def evaluate_and_report(
    config: StudyConfig,
    run_id: str,
    base: str,
    dataset: PuzzleDataset,
    heldout,
    arms: dict[str, ArmResult],
    progress=lambda done, what: None,
) -> dict:
    """Evaluate every target (child run per arm, metrics at each checkpoint's step), score each arm's
    training data under the base, write <output>/<study-id>/report/, log it, print the forgetting table.
    progress(share done, what) after each evaluation."""
    data = BenchmarkData(str(heldout), str(dataset.path), config.arms.sft.prompt_style)
    targets = eval_targets(config, base, arms)
    folders = []
    for arm in ["base", *arms]:
        with child_run(run_id, f"eval-{arm}", tags={"stage": "evaluate", "arm": arm}):
            for target in [t for t in targets if t.arm == arm]:
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
    load_base = functools.cache(lambda: load_model(config.model, base, trainable=False))  # once, if at all
    nll = {arm: data_nll(config, base, arm, training_data(result), dataset, load_base) for arm, result in arms.items()}
    out = config.report_dir
    final_steps = {arm: getattr(config.arms, arm).steps for arm in arms}
    summary = report_task(out, config.study_id, folders, nll, final_steps, config.evaluation.matched_accuracy)
    progress(1, "report written")
    mlflow.log_metrics(
        {f"{arm}.{k}": v for arm, values in summary["arms"].items() for k, v in values.items() if k != "step"},
        run_id=run_id,
    )
    mlflow.log_artifacts(str(out), "report", run_id=run_id)
    table = summary_frame(summary)
    create_table_artifact(
        without_nan(table.round(4).to_dict("records")), key="study-summary", description=config.study_id
    )
    create_markdown_artifact((out / "report.md").read_text(), key="study-report", description=str(out))
    print(f"\nstudy {config.study_id}: {out}\n{table.round(3).to_string(index=False)}")
    print("\nforgetting (score - base; negative = forgotten):")
    print(forgetting_pivot_text(out))
    print(summary["dynamics"]["statement"])
    return summary


def aggregate_and_report(config: StudyConfig, run_id: str, reports: dict[int, str]) -> dict:
    """The several-seed report from each seed's report (mean and 95% CI), logged on the parent run, shown
    in Prefect, printed."""
    out = config.report_dir
    summary = aggregate_task(out, config.study_id, {seed: Path(path) for seed, path in reports.items()})
    mlflow.log_metrics(
        {
            f"{arm}.{metric}{suffix}": stats[key]
            for arm, values in summary["arms"].items()
            for metric, stats in values.items()
            for key, suffix in (("mean", ""), ("ci95", ".ci95"))
            if stats[key] is not None
        },
        run_id=run_id,
    )
    mlflow.log_artifacts(str(out), "report", run_id=run_id)
    markdown = (out / "report.md").read_text()
    create_markdown_artifact(markdown, key="study-report", description=str(out))
    print(f"\nstudy {config.study_id} over seeds {config.seeds}: {out}\n{markdown}")
    return summary


def forgetting_pivot_text(report_dir) -> str:
    import pandas as pd

    return forgetting_pivot(pd.read_csv(report_dir / "forgetting.csv")).round(3).to_string(index=False)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: StudyConfig = StudyConfig()) -> dict:  # noqa: B008 - the UI form needs a default
    """Evaluate the base model and the trained arms on every benchmark; write the forgetting report."""
    check_inputs(config)
    with study_run(config, run_name=f"{config.study_id} evaluate") as run_id:
        reports = {}
        for one in config.per_seed():  # with `seeds`, each seed in turn, then the mean and CI over seeds
            with seed_run(run_id, config, one.seed) as one_run:
                base = tracked_base_model(one, one_run)
                dataset = make_puzzles(one, one_run)
                heldout = prior_benchmarks_task(one)
                arms = finished_arms(one, base, dataset)
                print(f"seed {one.seed}: trained arms found: {', '.join(arms) or 'none (evaluating the base only)'}")
                summary = evaluate_and_report(one, one_run, base, dataset, heldout, arms)
                reports[one.seed] = str(one.report_dir)
        if config.seeds:
            summary = aggregate_and_report(config, run_id, reports)
    print(f"MLflow: {tracking_uri(config)} (run {run_id})")
    return summary


if __name__ == "__main__":
    run(evaluate_flow)

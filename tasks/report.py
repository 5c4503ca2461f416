"""The report stage as Prefect tasks: each materializes the report folder, with the evaluations (or each
seed's report) as its upstream assets; the tracked_ versions also log it to MLflow and show it in Prefect.
"""

import base64
from pathlib import Path

import mlflow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.assets import materialize

from assets import report
from forgetting.config import StudyConfig
from forgetting.report import aggregate_reports, summary_frame, without_nan
from forgetting.report_cache import current_report
from forgetting.sweep_report import write_sweep_report
from tasks import retried_unless


def report_markdown(folder: Path) -> str:
    """A report folder's report.md with its plots inlined as data URIs: a Prefect artifact has no folder beside
    it for relative image links to reach."""
    text = (folder / "report.md").read_text()
    for plot in sorted(folder.glob("*.png")):
        text = text.replace(
            f"]({plot.name})", f"](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})"
        )
    return text


def report_task(out: Path, study_id: str, evaluations: list[Path], data_nll: dict, final_steps: dict, *args) -> dict:
    """current_report (the report made from the evaluations, or kept from a run with the same) as a Prefect task
    materializing the report folder, the evaluations upstream."""
    task = materialize(
        report(out),
        name="report",
        asset_deps=[Path(p).resolve().as_uri() for p in evaluations],
        retries=1,
        retry_condition_fn=retried_unless(),
    )
    return task(current_report)(out, study_id, evaluations, data_nll, final_steps, *args)


def aggregate_task(out: Path, study_id: str, reports: dict[int, Path]) -> dict:
    """aggregate_reports as a Prefect task materializing the several-seed report, lineage from each seed's."""
    deps = [Path(p).resolve().as_uri() for p in reports.values()]
    return materialize(report(out), name="aggregate-seeds", asset_deps=deps)(aggregate_reports)(out, study_id, reports)


def tracked_report(
    config: StudyConfig, run_id: str, evaluations: list[Path], data_nll: dict, skipped: dict[str, str]
) -> dict:
    """report_task into config.report_dir; its summary as metrics and the folder as an artifact of the MLflow
    run run_id, and as Prefect artifacts (a table and the markdown report)."""
    out = config.report_dir
    final_steps = {arm: getattr(config.arms, arm).steps for arm in data_nll}
    level = config.evaluation.matched_accuracy
    summary = report_task(out, config.study_id, evaluations, data_nll, final_steps, level, skipped)
    mlflow.log_metrics(
        {f"{arm}.{k}": v for arm, values in summary["arms"].items() for k, v in values.items() if k != "step"},
        run_id=run_id,
    )
    mlflow.log_artifacts(str(out), "report", run_id=run_id)
    rows = without_nan(summary_frame(summary).round(4).to_dict("records"))
    create_table_artifact(rows, key="study-summary", description=config.study_id)
    create_markdown_artifact(report_markdown(out), key="study-report", description=str(out))
    return summary


def tracked_aggregate(config: StudyConfig, run_id: str, reports: dict[int, Path]) -> dict:
    """aggregate_task into config.report_dir; mean and CI as metrics and the folder as an artifact of run_id,
    the markdown report as a Prefect artifact."""
    out = config.report_dir
    summary = aggregate_task(out, config.study_id, reports)
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
    create_markdown_artifact(report_markdown(out), key="study-report", description=str(out))
    return summary


def tracked_sweep_report(out: Path, sweep: str, run_id: str, *args) -> dict:
    """write_sweep_report(out, sweep, *args) as a Prefect task materializing the sweep's report folder; the folder
    as an artifact of the sweep's MLflow run, the markdown as a Prefect artifact."""
    task = materialize(report(out), name="sweep-report", retries=1, retry_condition_fn=retried_unless())
    summary = task(write_sweep_report)(out, sweep, *args)
    mlflow.log_artifacts(str(out), "report", run_id=run_id)
    create_markdown_artifact(report_markdown(out), key="sweep-report", description=str(out))
    return summary

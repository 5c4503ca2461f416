"""The report stage as Prefect tasks: each materializes the report folder, with the evaluations (or each
seed's report) as its upstream assets.
"""

from pathlib import Path

from prefect.assets import materialize

from assets import report
from forgetting.report import aggregate_reports, report_from_evaluations


def report_task(
    out: Path, study_id: str, evaluations: list[Path], data_nll: dict, final_steps: dict, matched_accuracy: float
) -> dict:
    """report_from_evaluations as a Prefect task materializing the report folder, the evaluations upstream."""
    task = materialize(
        report(out), name="report", asset_deps=[Path(p).resolve().as_uri() for p in evaluations], retries=1
    )
    return task(report_from_evaluations)(out, study_id, evaluations, data_nll, final_steps, matched_accuracy)


def aggregate_task(out: Path, study_id: str, reports: dict[int, Path]) -> dict:
    """aggregate_reports as a Prefect task materializing the several-seed report, lineage from each seed's."""
    deps = [Path(p).resolve().as_uri() for p in reports.values()]
    return materialize(report(out), name="aggregate-seeds", asset_deps=deps)(aggregate_reports)(out, study_id, reports)

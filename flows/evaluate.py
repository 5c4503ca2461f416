"""Evaluate the base model and every trained arm (final model and checkpoints) through lm-eval, then
compute forgetting and learning dynamics and write the report. Runs alone after flows.train, or as the
study's last stages.

    python -m flows.evaluate --profile tiny       # arms not trained yet for this config are left out
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

from pathlib import Path

from prefect import flow

from flows.cli import outcome, run
from flows.preflight import check_inputs
from forgetting.arms import ARMS, finished_arms, training_data
from forgetting.benchmarks import BenchmarkData
from forgetting.config import StudyConfig
from forgetting.evaluation import data_nll, eval_targets
from forgetting.puzzle_data import PuzzleDataset
from forgetting.report import forgetting_pivot, summary_frame
from forgetting.rollout_sft import rollout_provenance
from forgetting.trainer import ArmResult
from tasks.base_model import prior_benchmarks_task, tracked_base_model
from tasks.evaluation import evaluate_targets
from tasks.evaluation_processes import Helpers
from tasks.puzzles import tracked_puzzles
from tasks.report import tracked_aggregate, tracked_report
from tasks.tracking import print_links, seed_run, study_run


def training_of(arms: dict[str, ArmResult]) -> dict[str, Path]:
    """Each arm's training data (what data_nll scores under the base)."""
    return {arm: training_data(result) for arm, result in arms.items()}


def evaluate_and_report(
    config: StudyConfig,
    run_id: str,
    base: str,
    dataset: PuzzleDataset,
    heldout,
    arms: dict[str, ArmResult],
    skipped: dict[str, str],
    progress=lambda done, what: None,
    helping: Helpers | None = None,
) -> dict:
    """Evaluate every target (child run per arm, metrics at each checkpoint's step), score each arm's
    training data under the base, write <output>/<study-id>/report/ (skipped: the arms asked for and not
    there, with the reason), log it, print the forgetting table. progress(share done, what) after each
    evaluation. helping: the evaluation helpers already at work, on heldout's data (else started here if
    evaluation.processes asks)."""
    helping = helping or Helpers(config, BenchmarkData(str(heldout), str(dataset.path)), base, dataset)
    data = helping.data  # each target sets its arm's prompt style
    targets = eval_targets(config, base, arms)
    training = training_of(arms)
    with helping as helpers:  # evaluation.processes
        helpers.give(targets, training, final=True)
        folders = evaluate_targets(config, run_id, targets, data, base, progress)
        nll = {
            arm: data_nll(config, base, arm, training[arm], dataset) | {"rollout_source": rollout_provenance(result)}
            for arm, result in arms.items()
        }
    summary = tracked_report(config, run_id, folders, nll, skipped)
    progress(1, "report written")
    out, table = config.report_dir, summary_frame(summary)
    print(f"\nstudy {config.study_id}: {out}\n{table.round(3).to_string(index=False)}")
    print("\nforgetting (score - base; negative = forgotten):")
    print(forgetting_pivot_text(out))
    print(summary["dynamics"]["statement"])
    for arm, reason in skipped.items():
        print(f"arm {arm} skipped: {reason}")
    return summary


def aggregate_and_report(config: StudyConfig, run_id: str, reports: dict[int, str]) -> dict:
    """The several-seed report from each seed's report (mean and 95% CI), logged on the parent run, shown
    in Prefect, printed."""
    out = config.report_dir
    summary = tracked_aggregate(config, run_id, {seed: Path(path) for seed, path in reports.items()})
    markdown = (out / "report.md").read_text()
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
                dataset = tracked_puzzles(one, one_run)
                heldout = prior_benchmarks_task(one)
                arms = finished_arms(one, base, dataset)
                print(f"seed {one.seed}: trained arms found: {', '.join(arms) or 'none (evaluating the base only)'}")
                skipped = {
                    arm: "not trained for this config (flows.train trains it)"
                    for arm in ARMS
                    if getattr(one.arms, arm).enabled and arm not in arms
                }
                summary = evaluate_and_report(one, one_run, base, dataset, heldout, arms, skipped)
                reports[one.seed] = str(one.report_dir)
        if config.seeds:
            summary = aggregate_and_report(config, run_id, reports)
    print_links(config, run_id)
    return outcome(summary, summary["skipped"])


if __name__ == "__main__":
    run(evaluate_flow)

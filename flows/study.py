"""The whole study as one Prefect flow; it reads top to bottom like the DAG in docs/design.md.

    python -m flows.study --profile tiny            # what `make study` runs

  1. resolve the base model (shipped checkpoint, or pretrain it)   (forgetting/base_model.py)
  2. generate the jigsaw puzzles                                   (forgetting/puzzle_data.py)
  3. build the prior-knowledge benchmarks (held-out sets)          (forgetting/world.py)
  4. train the arms: sft, rft, rollout_sft on rft's rollouts, iterative_sft (forgetting/arms.py)
  5. evaluate the base, every arm and its checkpoints with lm-eval (forgetting/evaluation.py)
  6. forgetting, learning dynamics, plots: the report              (forgetting/report.py)
With `seeds: [0, 1, 2]` stages 1-6 run once per seed and a last stage reports mean and 95% CI over seeds; with
`seed_processes: 2` two seeds at a time, side by side in processes of their own (tasks/seed_processes.py).
Each stage's Prefect task (assets, retries, MLflow logging) is in tasks/.
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.cli import outcome, record_run, run
from flows.evaluate import aggregate_and_report, evaluate_and_report, training_of
from flows.preflight import check_inputs
from flows.train import train_arms
from forgetting.benchmarks import BenchmarkData
from forgetting.config import StudyConfig
from forgetting.evaluation import eval_targets
from forgetting.profiles import with_next_seeds
from tasks.base_model import prior_benchmarks_task, tracked_base_model
from tasks.evaluation_processes import Helpers
from tasks.puzzles import tracked_puzzles
from tasks.seed_processes import run_seeds
from tasks.tracking import print_links, seed_run, study_run


class Progress:
    """The study's progress as one Prefect progress artifact (the flow run's Artifacts tab): call it with
    the percent done and what was just finished."""

    def __init__(self) -> None:
        self.artifact = create_progress_artifact(0.0, key="study-progress", description="starting")

    def __call__(self, percent: float, what: str) -> None:
        update_progress_artifact(self.artifact, min(100.0, percent), description=what)


@flow(name="study", log_prints=True)
def study(
    config: StudyConfig = StudyConfig(),  # noqa: B008 - the UI form needs a default
    parent_run_id: str | None = None,
    scheduled: bool = False,
) -> dict:
    """Run the forgetting study: base model, puzzles, training arms, evaluation, report.

    parent_run_id: the MLflow run to log under (a sweep's; empty: a run of its own). scheduled: a run of the
    profile's cron schedule, which runs the study with schedule.add_seeds more seeds than the output folder holds."""
    if scheduled and config.schedule.add_seeds:
        config = with_next_seeds(config, config.schedule.add_seeds)
        print(f"scheduled run: the study over seeds {config.seeds} ({config.schedule.add_seeds} new)")
    check_inputs(config)
    progress, started = Progress(), time.perf_counter()
    with study_run(config, parent_run_id=parent_run_id) as run_id:
        if not config.seeds:
            result = one_seed(config, run_id, progress)
        else:  # the same study once per seed (each a child run), then mean and 95% CI over seeds
            side_by_side = config.seed_processes > 1  # in processes of their own (flows/seed.py)
            seeds = (run_seeds if side_by_side else each_seed)(config, run_id, progress)
            result = {
                "study_id": config.study_id,
                "seeds": seeds,
                "report": str(config.report_dir),
            }
            result["summary"] = aggregate_and_report(config, run_id, {s: r["report"] for s, r in seeds.items()})
        result["mlflow_run_id"] = run_id
    record_run(config, "study", Path(result["report"]), time.perf_counter() - started)
    print(f"study {config.study_id} done.")
    print_links(config, run_id)
    return outcome(result, result["summary"]["skipped"])


def each_seed(config: StudyConfig, run_id: str, progress) -> dict[int, dict]:
    """The study for each seed of config in turn, in this process; seed -> what one_seed returned."""
    seeds, share = {}, 100 / len(config.seeds)
    for i, one in enumerate(config.per_seed()):
        with seed_run(run_id, config, one.seed) as one_run:
            seeds[one.seed] = one_seed(one, one_run, lambda p, w, i=i: progress((i + p / 100) * share, w))
    return seeds


def one_seed(config: StudyConfig, run_id: str, progress) -> dict:
    """The study for config.seed, its stages logged as child runs of run_id."""
    base = tracked_base_model(config, run_id)
    progress(5, "base model")
    dataset = tracked_puzzles(config, run_id)
    benchmarks = prior_benchmarks_task(config)
    print(f"prior-knowledge benchmarks: {benchmarks}")
    progress(10, "puzzles and prior-knowledge benchmarks")
    data = BenchmarkData(str(benchmarks), str(dataset.path))
    with Helpers(config, data, base, dataset) as helping:  # the last arm trains beside evaluations of the others
        arms, skipped = train_arms(
            config,
            run_id,
            base,
            dataset,
            lambda done, what: progress(10 + 50 * done, what),
            lambda trained: helping.give(eval_targets(config, base, trained), training_of(trained)),
        )
        for arm, result in arms.items():
            print(f"arm {arm}: {result.final}")
        summary = evaluate_and_report(
            config,
            run_id,
            base,
            dataset,
            benchmarks,
            arms,
            skipped,
            lambda done, what: progress(60 + 40 * done, what),
            helping,
        )
    return {
        "study_id": config.study_id,
        "base_model": base,
        "puzzles": str(dataset.path),
        "prior_benchmarks": str(benchmarks),
        "arms": {arm: str(result.final) for arm, result in arms.items()},
        "report": str(config.report_dir),
        "summary": summary,
    }


if __name__ == "__main__":
    run(study)

"""Sweep the study over settings and compare the arms' Pareto frontiers at matched puzzle accuracy.

    python -m flows.sweep --profile tiny-sweep
    python -m flows.sweep --profile micro --set 'sweep.grid={arms.sft.learning_rate: [0.001, 0.0001]}'

Every point (a combination of `sweep.grid`, or one of `sweep.extra`) runs as the study flow, one after another,
each an MLflow child run of the sweep's run; points share every cached product they have in common. Then
<output>/<sweep-id>/report/ holds every checkpoint with its frontier flag and the comparison along the
frontiers (forgetting/sweep.py).
"""

import time

from prefect import flow

from flows.cli import record_run, run
from flows.preflight import check_inputs
from flows.study import study
from forgetting.config import StudyConfig
from forgetting.sweep import frontier_frame, points, sweep_dir, sweep_id
from tasks.report import tracked_sweep_report
from tasks.tracking import study_run, tracking_uri


@flow(name="sweep", log_prints=True)
def sweep(config: StudyConfig = StudyConfig()) -> dict:  # noqa: B008 - the UI form needs a default
    """Run the study at every point of the sweep, then compare the arms' Pareto frontiers."""
    studies = points(config)  # a bad key or value names its point, before any work
    for _, _, one in studies:
        check_inputs(one)
    name, started = sweep_id(config), time.perf_counter()
    print(f"sweep {name}: {len(studies)} points x seeds {config.seeds or [config.seed]}")
    with study_run(config, run_name=name) as run_id:
        for point, overrides, one in studies:
            print(f"point {point} {overrides or '(the profile as it is)'}: study {one.study_id}")
            study(one, parent_run_id=run_id)
        frame = frontier_frame([(point, one) for point, _, one in studies])
        summary = tracked_sweep_report(sweep_dir(config) / "report", name, frame, {p: o for p, o, _ in studies}, run_id)
    record_run(config, "sweep", sweep_dir(config) / "report", time.perf_counter() - started)
    print(f"sweep {name} done: {sweep_dir(config) / 'report'}. MLflow: {tracking_uri(config)} (run {run_id})")
    return summary


if __name__ == "__main__":
    run(sweep)

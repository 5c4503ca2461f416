"""Sweep the study over settings and compare the arms' Pareto frontiers at matched puzzle accuracy.

    python -m flows.sweep --profile tiny-sweep
    python -m flows.sweep --profile micro --set 'sweep.grid={arms.sft.learning_rate: [0.001, 0.0001]}'

Every point (a combination of `sweep.grid`, or one of `sweep.extra`) runs as the study flow, one after another,
each an MLflow child run of the sweep's run; points share every cached product they have in common. With
`sweep.deployment` (e.g. study/tiny) every point is launched at once as its own flow run of that deployment, so
a work pool with one worker per GPU runs them side by side (the workers must share the output folder):

    python -m flows.sweep --profile tiny-sweep --set sweep.deployment=study/tiny-sweep

Then <output>/<sweep-id>/report/ holds every checkpoint with its frontier flag and the comparison along the
frontiers (forgetting/sweep.py).
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

import time

from prefect import flow, get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from flows.cli import outcome, record_run, run
from flows.preflight import check_inputs
from flows.study import study
from forgetting.borrowed import compared_frames, reference_frame
from forgetting.config import ConfigError, StudyConfig
from forgetting.sweep import by_point_and_arm, frontier_frame, noted_arms, points, sweep_dir, sweep_id
from tasks.report import tracked_sweep_report
from tasks.tracking import run_link, study_run


@flow(name="sweep", log_prints=True)
def sweep(config: StudyConfig = StudyConfig()) -> dict:  # noqa: B008 - the UI form needs a default
    """Run the study at every point of the sweep, then compare the arms' Pareto frontiers."""
    studies = points(config)  # a bad key or value names its point, before any work
    for _, _, one in studies:
        check_inputs(one)
    if config.sweep.deployment:
        check_deployment(config.sweep.deployment)
    reference = reference_frame(config, studies)  # RFT trained by another sweep: checked before any work
    compared = compared_frames(config)  # arm families trained by other sweeps: the same
    name, started = sweep_id(config), time.perf_counter()
    print(f"sweep {name}: {len(studies)} points x seeds {config.all_seeds}")
    with study_run(config, run_name=name) as run_id:
        for point, overrides, one in studies:
            print(f"point {point} {overrides or '(the profile as it is)'}: study {one.study_id}")
        if config.sweep.deployment:
            launch_points(config.sweep.deployment, studies, run_id)
        else:
            for _, _, one in studies:
                study(one, parent_run_id=run_id)
        done = [(point, one) for point, _, one in studies]
        out, overrides = sweep_dir(config) / "report", {p: o for p, o, _ in studies}
        frame = frontier_frame(done, [reference, *compared] if reference else compared)
        notes = reference and reference.note, [other.note for other in compared]
        summary = tracked_sweep_report(out, name, run_id, frame, overrides, *noted_arms(done), *notes)
    record_run(config, "sweep", out, time.perf_counter() - started)
    print(f"sweep {name} done: {out}. MLflow: {run_link(config, run_id)}")
    return outcome(summary, by_point_and_arm(summary["skipped"]))


def check_deployment(deployment: str) -> None:
    """A ConfigError unless the Prefect API knows a deployment of the study flow by that name."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(f"sweep.deployment: no deployment {deployment!r} (serve or deploy it first)") from None
        flow_name = client.read_flow(found.flow_id).name
    if flow_name != "study":
        raise ConfigError(f"sweep.deployment: {deployment!r} deploys the {flow_name} flow, not the study")


def launch_points(deployment: str, studies: list, run_id: str, poll_s: float = 5.0) -> None:
    """Every point as a flow run of the study deployment at once (its work pool's workers, or the process that
    serves it, decide how many run side by side), each logging under the sweep's MLflow run; returns when all
    have finished, and raises naming every point that did not complete."""
    with get_client(sync_client=True) as client:
        runs = {
            point: run_deployment(
                deployment, parameters={"config": one.model_dump(mode="json"), "parent_run_id": run_id}, timeout=0
            )
            for point, _, one in studies
        }
        print(f"{len(runs)} flow runs of {deployment}: " + ", ".join(f"{p} {r.name}" for p, r in runs.items()))
        states = {}
        while len(states) < len(runs):
            time.sleep(poll_s)
            for point, flow_run in runs.items():
                state = client.read_flow_run(flow_run.id).state
                if point not in states and state is not None and state.is_final():
                    states[point] = state
                    print(f"point {point} ({flow_run.name}): {state.name}")
    failed = [f"{p} ({runs[p].name}: {s.name}: {s.message})" for p, s in states.items() if not s.is_completed()]
    if failed:
        raise RuntimeError(f"sweep points did not complete: {'; '.join(failed)}")


if __name__ == "__main__":
    run(sweep)

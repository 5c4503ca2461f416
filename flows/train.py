"""Train the study's arms alone: sft, rft, then rollout_sft on rft's correct rollouts, and iterative_sft.

python -m flows.train --profile micro
python -m flows.train --profile tiny --set arms.rft.enabled=false
"""

from flows.launch import start_temporary_server

start_temporary_server(__name__)  # before the imports below, which take seconds

from prefect import flow

from flows.cli import outcome, run
from flows.preflight import check_inputs
from forgetting.arms import ARMS, finished_arms
from forgetting.config import StudyConfig
from forgetting.puzzle_data import PuzzleDataset
from forgetting.rollout_sft import NoCorrectRollouts
from forgetting.trainer import ArmResult, preload
from tasks.base_model import tracked_base_model
from tasks.puzzles import tracked_puzzles
from tasks.tracking import print_links, seed_run, study_run
from tasks.training import arm_task


def train_arms(
    config: StudyConfig,
    run_id: str,
    base: str,
    dataset: PuzzleDataset,
    progress=lambda done, what: None,
    before_last=lambda results: None,
) -> tuple[dict[str, ArmResult], dict[str, str]]:
    """SFT, teacher-SFT, then RFT, then rollout-SFT on RFT's rollouts, then iterative self-SFT. Returns the
    enabled arms' results and the arms skipped, with the reason (rollout-SFT when RFT left no correct rollout,
    iterative-SFT when a round's model solved no puzzle); progress(share done, what) after each arm;
    before_last(the arms trained so far) before the last arm trains (the study starts evaluating them there:
    tasks/evaluation_processes.py).

    One after the other, not side by side: the HF Trainer keeps process-global accelerate state
    (TrainingArguments resets AcceleratorState when it sets up its device), and two trainers in one process
    raced on it ("AcceleratorState object has no attribute distributed_type"). Arms run concurrently only as
    separate processes (separate flow runs)."""
    arms = config.arms
    results, skipped = {}, {}

    def asked(trained: dict) -> dict:  # rft trains for rollout-SFT's sake alone when it is not asked for
        return {a: r for a, r in trained.items() if a != "rft" or arms.rft.enabled}

    order = [a for a in ARMS if getattr(arms, a).enabled or (a == "rft" and arms.rollout_sft.enabled)]
    if set(order) - set(finished_arms(config, base, dataset)):  # TRL's imports (seconds) only to train
        preload()
    for i, arm in enumerate(order, 1):
        if i == len(order) and i > 1:
            before_last(asked(results))
        upstream = results["rft"] if arm == "rollout_sft" else None
        task = arm_task(config, arm, base, dataset, upstream=upstream)
        try:
            results[arm] = task(config, arm, base, dataset, run_id, *([upstream] if upstream else []))
        except NoCorrectRollouts as err:  # a finding about the base and RFT, not a crash: say so and go on
            print(f"{arm} skipped: {err}")
            skipped[arm] = str(err)
        progress(i / len(order), f"{arm} arm trained")
    return asked(results), skipped


@flow(name="train", log_prints=True)
def train_flow(config: StudyConfig = StudyConfig()) -> dict:  # noqa: B008 - the UI form needs a default
    """Train the enabled arms (SFT, teacher-SFT, RFT, rollout-SFT, iterative-SFT) on the puzzle train split."""
    check_inputs(config, benchmarks=False)
    paths, missing = {}, {}
    with study_run(config, run_name=f"{config.study_id} train") as run_id:
        for one in config.per_seed():  # with `seeds`, each seed in turn
            with seed_run(run_id, config, one.seed) as one_run:
                base = tracked_base_model(one, one_run)
                dataset = tracked_puzzles(one, one_run)
                results, skipped = train_arms(one, one_run, base, dataset)
            for arm, reason in skipped.items():
                print(f"seed {one.seed} {arm}: skipped ({reason})")
                missing.setdefault(arm, {})[one.seed] = reason
            for arm, result in results.items():
                print(f"seed {one.seed} {arm}: {result.final} ({len(result.checkpoints)} checkpoints)")
                paths[f"{arm}" if not config.seeds else f"{arm}/seed-{one.seed}"] = str(result.path)
    print_links(config, run_id)
    return outcome(paths, missing)


if __name__ == "__main__":
    run(train_flow, benchmarks=False)

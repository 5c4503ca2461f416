"""One command-line shape for every flow:

    python -m flows.<name> --profile NAME|PATH.yaml [--set dotted.key=value ...] [--output-dir DIR]

A bad profile, key or value is reported by field name with exit code 2, before any work starts; bad input a stage
finds on its way (a damaged stored model) ends the command with exit code 2 and one line naming it too.
"""

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prefect.states import Completed

from flows.launch import end_quickly, server_ready
from flows.preflight import check_inputs
from forgetting.config import REPO_ROOT, ConfigError, StudyConfig, not_results
from forgetting.environment import environment, training_differences
from forgetting.profiles import load_config, write_profile
from forgetting.puzzle_data import PuzzleError
from forgetting.report import skipped_reasons
from forgetting.sweep import sweep_spec


def parse_args(
    argv: list[str] | None, description: str, extend: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The shared arguments; extend(parser) adds a flow's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default="tiny", help="profile in configs/ (micro, tiny, ...) or a YAML path")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set puzzles.grid=3x3 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--output-dir", default=None, help="where runs are written (default: runs/)")
    if extend is not None:
        extend(parser)
    return parser.parse_args(argv)


def run(
    flow: Callable[..., object],
    argv: list[str] | None = None,
    base_model: bool = True,
    benchmarks: bool = True,
    extend: Callable[[argparse.ArgumentParser], object] | None = None,
) -> None:
    """Build the config from the command line, check it (base_model: that the base model can be found;
    benchmarks: that lm-eval knows the benchmarks), then run flow(config, **the arguments extend added)."""
    args = parse_args(argv, (flow.__doc__ or "").strip().splitlines()[0] if flow.__doc__ else None, extend)
    shared = vars(parse_args([], None))  # the shared arguments' names, as parse_args defines them
    own = {key: value for key, value in vars(args).items() if key not in shared}
    try:
        config = load_config(args.profile, args.overrides, args.output_dir)
        check_inputs(config, base_model, benchmarks)
        note_recorded_environment(Path(args.profile))
        server_ready()
        flow(config, **own)  # bad input a stage finds (a damaged file) ends it the same way; its log has the rest
    except (ConfigError, PuzzleError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    end_quickly()


def note_recorded_environment(profile: Path) -> None:
    """For a profile that is a report's config (docs/<block>/config.yaml), a note on stderr when that report's
    arms were trained by other libraries or code than this process has: they count as other arms here and are
    trained anew, and the note says how to install what they ran with."""
    recorded = profile.parent / "environment.json"
    if profile.suffix not in (".yaml", ".yml") or not recorded.is_file():
        return
    try:
        record = json.loads(recorded.read_text())
        differences, commit = training_differences(record), (record.get("code") or {}).get("commit")
    except (ValueError, AttributeError):
        return  # not an environment record: nothing to compare
    if differences:
        print(
            f"note: {profile.parent} ran with {'; '.join(differences)}: its arms are other arms here and are trained "
            f"anew. make install PINS={profile.parent} installs the libraries it ran with"
            + (f"; its code was commit {commit[:10]}" if commit else ""),
            file=sys.stderr,
        )


def outcome(result, skipped: dict):
    """What a flow returns: result, or when arms were skipped (arm -> reason, or -> {seed: reason}) a Completed
    state named for it, its message naming each arm and reason: the flow run page says so, a caller still gets
    result."""
    if not skipped:
        return result
    reasons = "; ".join(f"{arm}: {why}" for arm, why in skipped_reasons(skipped).items())
    return Completed(data=result, name="Completed, arms skipped", message=reasons)


def record_run(config: StudyConfig, flow: str, report: Path, seconds: float) -> None:
    """How to reproduce a report (flow: study or sweep): its config as a profile, the command, how long this run
    took (work already on disk from earlier runs is not counted again) and the environment it ran in."""
    profile = sweep_spec(config) if flow == "sweep" else config.model_dump(mode="json", exclude=not_results())
    write_profile(profile, report / "config.yaml")
    (report / "environment.json").write_text(json.dumps(environment(), indent=1) + "\n")
    run_info = {
        "command": f"python -m flows.{flow} --profile {_shown(report / 'config.yaml')}",
        "wall_time_s": round(seconds, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (report / "run.json").write_text(json.dumps(run_info, indent=1) + "\n")


def _shown(path: Path) -> str:
    """path relative to the repository when it lies inside it (runs/...), else absolute."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)

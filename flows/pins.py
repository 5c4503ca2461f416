"""The package versions a report ran with (its environment.json), as pip constraints: with them pip installs those
versions of whatever the project needs, so that a published result runs again on the libraries that made it.

    python -m flows.pins docs/results-think-rft-kl > pins.txt
    make install PINS=docs/results-think-rft-kl           # the same, installed into .venv

Library versions are part of an arm's cache key (forgetting/arms.py:arm_spec), so only with them do a report's arms
count as on disk on a machine that has them. The code is the other half: the header names the commit the run was
made on (where the report recorded one), to check out first.
"""

import argparse
import json
import sys
from pathlib import Path

from forgetting.environment import pins
from forgetting.errors import ConfigError


def recorded_environment(path: Path) -> dict:
    """The environment.json of a report folder (or that file itself); ConfigError naming the path when it is
    missing, unreadable or lists no packages."""
    file = path / "environment.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no environment.json (a report folder, or its environment.json)")
    try:
        recorded = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file} is not JSON: {err}") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("packages"), dict) or not recorded["packages"]:
        raise ConfigError(f"{file} lists no packages (an environment.json names each installed one and its version)")
    return recorded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a report folder (docs/<block>, runs/<id>/report) or its environment.json")
    args = parser.parse_args(argv)
    try:
        recorded = recorded_environment(Path(args.report))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    theirs, ours = recorded.get("python", ""), ".".join(map(str, sys.version_info[:2]))
    if theirs.rsplit(".", 1)[0] != ours:
        print(
            f"warning: the report ran on Python {theirs}, this is {ours}: some pins may have no wheel", file=sys.stderr
        )
    print(pins(recorded), end="")


if __name__ == "__main__":
    main()

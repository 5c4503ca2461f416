"""Put a study's report into the README's Results section, untouched by hand: the report's markdown tables,
its plots (copied to docs/<block>/, docs/results/ by default), the command that reproduces it and the wall
time of the run that wrote it.

    python -m flows.study --profile tiny --set seeds=[0,1,2]
    python -m flows.publish --profile tiny --set seeds=[0,1,2]     # the same config: finds that study's report

--block NAME fills the README's `<!-- NAME:begin -->` ... `<!-- NAME:end -->` block instead and copies the files
to docs/NAME/ (default: results), so the README can show more than one study (e.g. a control beside the main one).
"""

import json
import re
import shutil
import sys
from pathlib import Path

from flows.cli import parse_args
from tasks.config import REPO_ROOT, ConfigError, StudyConfig, load_config

DEFAULT_BLOCK = "results"
PUBLISHED = ("report.md", "summary.json", "forgetting.csv", "curves.csv", "dynamics.csv", "config.yaml", "run.json")
PLOTS = ("tradeoff.png", "forgetting.png", "dynamics.png")


def results_block(report: Path, link_prefix: str) -> str:
    """The README text for a report folder: provenance line, then report.md with its image links moved."""
    run = json.loads((report / "run.json").read_text())
    markdown = (report / "report.md").read_text()
    for plot in PLOTS:
        markdown = markdown.replace(f"({plot})", f"({link_prefix}{plot})")
    return (
        f"Reproduce: `python -m flows.study --profile {link_prefix}config.yaml` (the study's own config, saved with "
        f"its report). The run that wrote this finished {run['finished']} after {run['wall_time_s'] / 60:.1f} min "
        "on 2 CPU cores (outputs already on disk are reused, not recomputed).\n\n"
        + "".join(f"##{line}" if line.startswith("#") else line for line in markdown.splitlines(keepends=True))
    )  # the report's headings two levels down, under the README's "## Results"


def markers(block: str) -> tuple[str, str]:
    """The README comments that open and close a named results block."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,40}", block):
        raise ConfigError(f"--block must be a short lower-case name (letters, digits, - and _), got {block!r}")
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


def publish(
    config: StudyConfig, readme: Path = REPO_ROOT / "README.md", out: Path | None = None, block: str = DEFAULT_BLOCK
) -> Path:
    """Copy the study's report files to out (default docs/<block>/ beside the README) and replace the README's
    block of that name with them."""
    begin, end = markers(block)
    out = readme.parent / "docs" / block if out is None else out
    report = config.report_dir
    if not (report / "run.json").is_file():
        raise ConfigError(f"no finished report for study {config.study_id} at {report}: run flows.study first")
    text = readme.read_text()
    if begin not in text or end not in text:
        raise ConfigError(f"{readme}: no {begin} ... {end} block to fill")
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED + PLOTS:
        shutil.copy(report / name, out / name)
    markdown = results_block(out, f"{out.relative_to(readme.parent)}/")
    head, rest = text.split(begin, 1)
    readme.write_text(f"{head}{begin}\n{markdown}{end}{rest.split(end, 1)[1]}")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv,
        __doc__.splitlines()[0],
        lambda parser: parser.add_argument(
            "--block", default=DEFAULT_BLOCK, help="README block to fill, docs/ folder to write (default: results)"
        ),
    )
    try:
        out = publish(load_config(args.profile, args.overrides, args.output_dir), block=args.block)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"README results updated from {out}")


if __name__ == "__main__":
    main()

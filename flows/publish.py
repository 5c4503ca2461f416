"""Put a study's or a sweep's report into a results block of docs/results.md, untouched by hand: the report's markdown
tables, its plots (copied to docs/<block>/, docs/results/ by default), the command that reproduces it, the commit and
package versions it ran on, and the wall time of the run that wrote it.

    python -m flows.study --profile tiny --set seeds=[0,1,2]
    python -m flows.publish --profile tiny --set seeds=[0,1,2]     # the same config: finds that study's report
    python -m flows.publish --profile tiny-sweep                   # a profile with a sweep: the sweep's report

--block NAME fills the `<!-- NAME:begin -->` ... `<!-- NAME:end -->` block instead and copies the files to
docs/NAME/ (default: results); --page PATH fills that block in another markdown file than docs/results.md
(e.g. docs/experiments.md); --report DIR publishes that report folder (a study's, or one published before) instead
of the one the profile names; --rewrite with --report writes that sweep report folder again from its frontier.csv
by the current code first (a report published before a change of the sweep report gets what the change adds,
without the sweep running again); --compare REPORT... with --rewrite also compares the sweep's families with
those of other sweep reports, as sweep.compare would have (the report's config.yaml gains them):

    python -m flows.publish --report docs/results-sweep --block results-sweep --rewrite
    python -m flows.publish --report docs/results-think-capped-cool --block results-think-capped-cool --rewrite \
        --compare docs/results-think-rft-hot
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

from flows.cli import parse_args
from forgetting.config import REPO_ROOT, ConfigError, StudyConfig
from forgetting.profiles import load_config
from forgetting.sweep import sweep_dir
from forgetting.sweep_report import REPORT_TABLES, rewrite_sweep_report

DEFAULT_BLOCK = "results"
RESULTS_PAGE = REPO_ROOT / "docs" / "results.md"
PUBLISHED = (  # a study's report files, then a sweep's; each report folder holds those of its kind
    ("report.md", "summary.json", "config.yaml", "run.json", "environment.json")
    + ("forgetting.csv", "curves.csv", "dynamics.csv", "tradeoff.png", "forgetting.png", "dynamics.png")
    + ("frontier.csv", *(f"{name}.csv" for name in REPORT_TABLES))
    + ("frontier.png", "predictors.png", "causes.png")
)


def results_block(report: Path, link_prefix: str, folder: str) -> str:
    """The page text for a published report folder: provenance line, then report.md with its image links moved
    (link_prefix: the folder as the page links it; folder: as a command names it, from the repository)."""
    run = json.loads((report / "run.json").read_text())
    environment = report / "environment.json"  # reports have it; a few published early on do not
    recorded = json.loads(environment.read_text()) if environment.is_file() else {}
    pinned = f", on the package versions it ran with (`make install PINS={folder}`)" if recorded else ""
    markdown = (report / "report.md").read_text()
    for plot in report.glob("*.png"):
        markdown = markdown.replace(f"({plot.name})", f"({link_prefix}{plot.name})")
    flow = run["command"].split()[2]  # python -m flows.study|flows.sweep --profile ...
    return (
        f"Reproduce: `python -m {flow} --profile {folder}/config.yaml` (the run's own config, saved with its "
        f"report){code_shown(recorded.get('code'))}{pinned}. The run that wrote this finished {run['finished']} "
        f"after {run['wall_time_s'] / 60:.1f} min on {machine_shown(recorded)} (outputs already on disk are reused, "
        "not recomputed).\n\n"
        + "".join(f"##{line}" if line.startswith("#") else line for line in markdown.splitlines(keepends=True))
    )  # the report's headings two levels down, under a section ("### ...") of the page


def code_shown(code: dict | None, named: int = 4) -> str:
    """The commit a run's code was (environment.json's code), with the files that differed from it; nothing for a
    report from before the commit was recorded, or made outside a git checkout."""
    if not code or not code.get("commit"):
        return ""
    changed = code.get("changed") or []
    files = ", ".join(f"`{name}`" for name in changed[:named]) + (
        f" and {len(changed) - named} more" if changed[named:] else ""
    )
    return f" on the code of commit `{code['commit'][:10]}`" + (f" with changes to {files}" if changed else "")


def machine_shown(recorded: dict) -> str:
    """What a run ran on, from its environment.json: its GPU, else its CPU cores and model (2 cores for a report
    from before the count was recorded: every one published then ran on 2 cores)."""
    cpu = f" ({recorded['cpu']})" if recorded.get("cpu") else ""
    return recorded.get("gpu") or f"{recorded.get('cpus', 2)} CPU cores{cpu}"


BLOCK_NAME = r"[a-z0-9][a-z0-9_-]{0,40}"  # a results block's name, and its docs/ folder's


def markers(block: str) -> tuple[str, str]:
    """The page's comments that open and close a named results block."""
    if not re.fullmatch(BLOCK_NAME, block):
        raise ConfigError(f"--block must be a short lower-case name (letters, digits, - and _), got {block!r}")
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


def publish(
    config: StudyConfig, page: Path = RESULTS_PAGE, block: str = DEFAULT_BLOCK, root: Path | None = None
) -> Path:
    """publish_report of the config's own report folder: its sweep's when the config has a sweep, else its
    study's."""
    swept = config.sweep.has_points
    report = sweep_dir(config) / "report" if swept else config.report_dir
    if not (report / "run.json").is_file():
        flow = "flows.sweep" if swept else "flows.study"
        raise ConfigError(f"no finished report for {config.name} at {report}: run {flow} first")
    return publish_report(report, page, block, root)


def publish_report(report: Path, page: Path, block: str = DEFAULT_BLOCK, root: Path | None = None) -> Path:
    """Copy a report folder's files to <root>/docs/<block>/ (root: the repository, or the page's folder when the
    page lies outside it) and replace the page's block of that name with them. Returns the docs folder."""
    page = Path(page).resolve()
    root = root or (REPO_ROOT if page.is_relative_to(REPO_ROOT) else page.parent)
    out = root / "docs" / block
    if not (report / "run.json").is_file():
        raise ConfigError(f"--report: {report} holds no finished report (no run.json)")
    block_parts(page, block)  # the page has the block: checked before any file is copied
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED:  # a block that held a study's report and now a sweep's keeps none of the study's
        if not (report / name).is_file():
            (out / name).unlink(missing_ok=True)
        elif (report / name).resolve() != (out / name).resolve():
            shutil.copy(report / name, out / name)
    link = os.path.relpath(out, page.parent)
    fill_block(page, block, results_block(out, f"{link}/", str(out.relative_to(root))))
    return out


def block_parts(page: Path, block: str) -> tuple[str, str]:
    """The page's text up to the block's opening marker (included) and from its closing one (included); ConfigError
    when the page has no such block."""
    begin, end = markers(block)
    text = page.read_text()
    if begin not in text or end not in text:
        raise ConfigError(f"{page}: no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n", f"{end}{rest.split(end, 1)[1]}"


def fill_block(page: Path, block: str, markdown: str) -> None:
    """Replace what the page holds between the block's markers with the markdown; ConfigError when it has none."""
    head, tail = block_parts(page, block)
    page.write_text(f"{head}{markdown}{tail}")


def _arguments(parser) -> None:
    parser.add_argument(
        "--block", default=DEFAULT_BLOCK, help="block to fill, docs/ folder to write (default: results)"
    )
    parser.add_argument("--page", default=str(RESULTS_PAGE), help="markdown file to fill (default: docs/results.md)")
    parser.add_argument("--report", default=None, help="report folder to publish (default: the profile's study's)")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="with --report: write that sweep report again from its frontier.csv by the current code first",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="REPORT",
        help="with --rewrite: also compare the sweep's families with those of these sweep reports (sweep.compare)",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0], _arguments)
    try:
        if args.rewrite and not args.report:
            raise ConfigError("--rewrite needs --report: the sweep report folder to write again")
        if args.compare and not args.rewrite:
            raise ConfigError("--compare needs --rewrite: the sweep report is written again to compare")
        if args.report:
            report = Path(args.report).resolve()
            if args.rewrite:
                rewrite_sweep_report(report, tuple(args.compare))
            out = publish_report(report, Path(args.page), args.block)
        else:
            out = publish(load_config(args.profile, args.overrides, args.output_dir), Path(args.page), args.block)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{args.page}: block {args.block} filled from {out}")


if __name__ == "__main__":
    main()

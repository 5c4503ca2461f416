"""Put a study's report into the README's Results section, untouched by hand: the report's markdown tables,
its plots (copied to docs/results/), the command that reproduces it and the wall time of the run that wrote it.

    python -m flows.study --profile tiny --set seeds=[0,1,2]
    python -m flows.publish --profile tiny --set seeds=[0,1,2]     # the same config: finds that study's report
"""

import json
import shutil
import sys
from pathlib import Path

from flows.cli import parse_args
from tasks.config import REPO_ROOT, ConfigError, StudyConfig, load_config

RESULTS_DIR = REPO_ROOT / "docs" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
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


def publish(config: StudyConfig, readme: Path = REPO_ROOT / "README.md", out: Path = RESULTS_DIR) -> Path:
    """Copy the study's report files to out and replace the README's results block with them."""
    report = config.report_dir
    if not (report / "run.json").is_file():
        raise ConfigError(f"no finished report for study {config.study_id} at {report}: run flows.study first")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ConfigError(f"{readme}: no {BEGIN} ... {END} block to fill")
    out.mkdir(parents=True, exist_ok=True)
    for name in PUBLISHED + PLOTS:
        shutil.copy(report / name, out / name)
    block = results_block(out, f"{out.relative_to(readme.parent)}/")
    head, rest = text.split(BEGIN, 1)
    readme.write_text(f"{head}{BEGIN}\n{block}{END}{rest.split(END, 1)[1]}")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__.splitlines()[0])
    try:
        out = publish(load_config(args.profile, args.overrides, args.output_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"README results updated from {out}")


if __name__ == "__main__":
    main()

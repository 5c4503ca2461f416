"""A study's report made again only when something it is made from changed, so that a rerun of a finished study
does not redraw it (about 2 s of a 15 s rerun on two cores).

What a report is made from: the content of every evaluation folder it reads, the other arguments (data NLL, final
steps, matched accuracy, skipped arms), the syntax of the code that computes and draws it (as the process imported
it), and the versions of the libraries that do. report-cache.json beside the report folder
(<output>/<study id>/report-cache.json) keeps their hash, the hash of the report's files as written, and the summary
the report returned. A rerun whose inputs hash the same, and whose report files are there as written, returns the
kept summary; anything else makes the report again. The summary is kept as JSON with NaN (Python's json writes and
reads it), and both ways return it as read back from that JSON, so a fresh report and a kept one give the caller the
same object.
"""

import json
from pathlib import Path

from forgetting.environment import code_fingerprint, installed, read_sources
from forgetting.report import report_from_evaluations
from forgetting.storage import files_sha256, stable_hash, write_text_once

REPORT_CODE = ("report", "metrics", "predictors", "data_report", "tables")
# read as this process imports the code it runs (above): a file edited while it runs is not the code that writes its
# reports, so it must not name them
SOURCES = read_sources(REPORT_CODE)
REPORT_LIBRARIES = ("numpy", "pandas", "scipy", "matplotlib")
REPORT_FILES = (
    "summary.json", "forgetting.csv", "curves.csv", "dynamics.csv", "report.md",
    "tradeoff.png", "forgetting.png", "dynamics.png",
)  # fmt: skip


def report_inputs(evaluations: list[Path], *args) -> str:
    """The hash of everything report_from_evaluations(out, study_id, evaluations, *args) reads besides out."""
    return stable_hash(
        {
            "evaluations": [files_sha256(folder) for folder in sorted(map(Path, evaluations))],
            "arguments": args,
            "code": code_fingerprint(SOURCES),
            "libraries": {name: installed(name) for name in REPORT_LIBRARIES},
        }
    )


def current_report(out: Path, study_id: str, evaluations: list[Path], *args) -> dict:
    """report_from_evaluations(out, study_id, evaluations, *args), unless the report in out was made from the same
    and is as it was written: then its kept summary."""
    out, inputs = Path(out), report_inputs(evaluations, study_id, *args)
    kept, report = out.parent / "report-cache.json", [out / name for name in REPORT_FILES]
    if kept.is_file() and all(path.is_file() for path in report):
        try:
            cached = json.loads(kept.read_text())
        except ValueError:  # a damaged record keeps nothing: the report is made again
            cached = {}
        if cached.get("inputs") == inputs and cached.get("report") == files_sha256(out, report):
            return cached["summary"]
    kept.unlink(missing_ok=True)  # a report that fails half-way leaves no claim to be whole
    summary = report_from_evaluations(out, study_id, evaluations, *args)
    text = json.dumps({"inputs": inputs, "report": files_sha256(out, report), "summary": summary})
    write_text_once(kept, text + "\n")
    return json.loads(text)["summary"]

"""The repository's pages link only to what it holds: in README.md and docs/*.md every relative link and image
names a file here, and every link to a heading of the same page (#anchor) names one of its headings."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgetting.config import REPO_ROOT as ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def targets(page: Path) -> list[str]:
    """The page's markdown link and image targets and <img> sources, as written."""
    return [a or b for a, b in LINK.findall(page.read_text())]


def anchors(page: Path) -> Iterator[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation but - and _ dropped, spaces as -;
    a repeated heading's second anchor ends in -1, its third in -2."""
    seen: dict[str, int] = {}
    for line in page.read_text().splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_or_heading_here(page):
    found = [t for t in targets(page) if not re.match(r"[a-z]+:", t)]
    missing = [t for t in found if not t.startswith("#") and not (page.parent / t.split("#")[0]).exists()]
    headings = set(anchors(page))
    unknown = [t for t in found if t.startswith("#") and t[1:] not in headings]
    assert not missing, f"{page.relative_to(ROOT)} links to files that are not there: {missing}"
    assert not unknown, f"{page.relative_to(ROOT)} links to headings it does not have: {unknown}"


def test_the_links_are_found():
    assert {"docs/results.md", "docs/results-think-sweep/frontier.png"} <= set(targets(ROOT / "README.md"))
    results = targets(ROOT / "docs" / "results.md")
    assert "results-think-sweep/frontier.png" in results and "#how-these-blocks-were-made" in results
    repeated = "what-predicts-forgetting-over-every-distinct-checkpoint-of-the-sweep"
    assert {repeated, f"{repeated}-1", f"{repeated}-7"} <= set(anchors(ROOT / "docs" / "results.md"))

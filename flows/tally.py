"""Over every published sweep block, how often each candidate cause of forgetting orders a family and RFT as their
forgetting does, where the two clearly differ: the count the README's findings cite.

    python -m flows.tally                                  # print the table
    python -m flows.tally --block results-causes-tally     # and fill that block of docs/results.md

A block counts where its report compares a family with RFT (`against_rft.csv`): at each puzzle level whose 95%
interval of the forgetting difference is clear of zero, every seed compared there, and for each cause the seeds in
which its difference has the sign of the forgetting difference (`at_frontier_against_rft.csv`'s `agree`). Blocks
are taken in the order the page holds them; blocks that share arms count them again.
"""

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from flows.publish import BLOCK_NAME, RESULTS_PAGE, fill_block
from forgetting.config import ConfigError
from forgetting.report import markdown_table
from forgetting.sweep import CAUSES, causes_tally


def sweep_blocks(page: Path) -> list[Path]:
    """The page's blocks (in its order) whose folder, beside the page, holds a sweep report's comparison with RFT."""
    names = re.findall(rf"<!-- ({BLOCK_NAME}):begin -->", page.read_text())
    return [page.parent / name for name in names if (page.parent / name / "at_frontier_against_rft.csv").is_file()]


def read_table(path: Path) -> pd.DataFrame:
    """A report's CSV table; empty where the report had none to write (a sweep without an RFT family)."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def tally(page: Path) -> pd.DataFrame:
    """causes_tally of every sweep block of the page: a row per block and cause (`block`, `predictor`, `agree`,
    `compared`)."""
    return pd.concat(
        [
            causes_tally(
                read_table(folder / "against_rft.csv"), read_table(folder / "at_frontier_against_rft.csv")
            ).assign(block=folder.name)
            for folder in sweep_blocks(page)
        ],
        ignore_index=True,
    )


def tally_markdown(table: pd.DataFrame) -> str:
    """The tally as a table: a row per block that compares a family with RFT anywhere clearly, `agree/compared` per
    cause, and the total over them."""
    cells = table.assign(cell=table.agree.astype(str) + "/" + table.compared.astype(str))
    wide = cells.pivot(index="block", columns="predictor", values="cell")[list(CAUSES)]
    counted = table.groupby("block", sort=False).compared.max()
    wide = wide.loc[[block for block in dict.fromkeys(table.block) if counted[block] > 0]]
    total = table.groupby("predictor")[["agree", "compared"]].sum()
    wide.loc["total"] = [f"{total.agree[name]}/{total.compared[name]}" for name in CAUSES]
    return (
        f"{len(wide) - 1} sweep blocks with a level where a family forgets clearly more or less than RFT; in each "
        "cell, agree/compared: the seed comparisons at those levels in which the cause's difference from RFT has "
        "the sign of the forgetting difference, of all seed comparisons there.\n\n" + markdown_table(wide.reset_index())
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default=str(RESULTS_PAGE), help="results page (default: docs/results.md)")
    parser.add_argument("--block", default=None, help="fill this block of the page with the table")
    args = parser.parse_args(argv)
    page = Path(args.page)
    try:
        if not page.is_file():
            raise ConfigError(f"--page: no such page {page}")
        text = tally_markdown(tally(page))
        if args.block:
            fill_block(page, args.block, text)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)


if __name__ == "__main__":
    main()

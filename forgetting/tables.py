"""Markdown tables, as every report writes them (a study's, a sweep's, the results page's blocks)."""

import math

import pandas as pd


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(v, column: str) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return ""
            if column.endswith("tokens"):
                return f"{v:.1f}"
            return f"{v:.0f}" if column.startswith("step") else f"{v:.{digits}f}"  # steps: NaN made them floats
        return "" if v is None else str(v)

    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join(
        "| " + " | ".join(cell(v, c) for v, c in zip(row, frame.columns, strict=True)) + " |\n"
        for row in frame.itertuples(index=False)
    )

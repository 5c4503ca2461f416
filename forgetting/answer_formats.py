"""Whether an answer to one of lm-eval's own benchmarks is in the form the benchmark asks for: format collapse (a
model that stops answering in the asked form) as opposed to wrong answers. The shipped tiny-world and puzzle tasks
check their own (their process_results report format_ok, forgetting/world.py:grade); for lm-eval's tasks the study
checks here, by task family, the way the task's own scorer finds an answer in a response. A task no family here
knows has no format check: its format_failures stay empty and format collapse is taken over the others.
"""

import ast
import re
from collections.abc import Callable

OPTION_LETTERS = "ABCDEFGHI"


def mmmu(doc: dict, response: str) -> bool:
    """MMMU: a multiple-choice answer names an option as lm-eval's parser looks for one, "(B)" or a bare "B", or,
    in a longer answer, an option's text (else the parser guesses at random); an open answer is not empty."""
    if doc.get("question_type") != "multiple-choice":
        return bool(response.strip())
    options = [str(o) for o in ast.literal_eval(doc["options"])]
    padded = " " + response.strip(",.!?;:'") + " "
    if any(f"({letter})" in padded or f" {letter} " in padded for letter in OPTION_LETTERS[: len(options)]):
        return True
    return len(padded.split()) > 5 and any(o.lower() in padded.lower() for o in options)


def chartqa(doc: dict, response: str) -> bool:
    """ChartQA: the prompt asks to end with "Final Answer: <answer>", the line its scorers read."""
    return re.search(r"final answer: (.+)$", response, re.IGNORECASE) is not None


FAMILIES: dict[str, Callable[[dict, str], bool]] = {"mmmu": mmmu, "chartqa": chartqa}


def format_check(task: str) -> Callable[[dict, str], bool] | None:
    """The check for an lm-eval task (a family's name or a name that starts with it and '_'), or None."""
    for family, check in FAMILIES.items():
        if task == family or task.startswith(f"{family}_"):
            return check
    return None

"""The novel task: jigsaw puzzles, their prompts, the answer parser and the reward.

Semantics, exactly: positions are numbered 1..m*n row-major. The answer lists, for each position of the
SHUFFLED image in row-major order, the original position of the tile now there, so tile k of the shuffled
image belongs at position answer[k]. The identity permutation is never used.

The images and the dataset on disk are forgetting/puzzle_data.py. Run alone:

    python -m flows.puzzles --profile micro --set puzzles.grid=3x3 --output-dir /tmp/run
"""

import random
import re
from dataclasses import dataclass

from PIL import Image

# ---------------------------------------------------------------------------------------------------------
# Tiles, permutations, prompts


def tile_boxes(side: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes of positions 1..rows*cols, row-major (index 0 is position 1)."""
    h, w = side // rows, side // cols
    return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in range(rows) for c in range(cols)]


def random_answer(rng: random.Random, n_tiles: int) -> list[int]:
    """A uniformly random non-identity permutation of 1..n_tiles."""
    identity = list(range(1, n_tiles + 1))
    while True:
        answer = rng.sample(identity, n_tiles)
        if answer != identity:
            return answer


def shuffle_image(image: Image.Image, answer: list[int], rows: int, cols: int) -> Image.Image:
    """The puzzle: tile k of the result is the original tile at position answer[k]."""
    boxes = tile_boxes(image.width, rows, cols)
    out = Image.new(image.mode, image.size)
    for k, original in enumerate(answer):
        out.paste(image.crop(boxes[original - 1]), boxes[k][:2])
    return out


def restore_image(shuffled: Image.Image, answer: list[int], rows: int, cols: int) -> Image.Image:
    """The inverse of shuffle_image: tile k of the shuffled image goes back to position answer[k]."""
    boxes = tile_boxes(shuffled.width, rows, cols)
    out = Image.new(shuffled.mode, shuffled.size)
    for k, original in enumerate(answer):
        out.paste(shuffled.crop(boxes[k]), boxes[original - 1][:2])
    return out


def format_answer(answer: list[int]) -> str:
    return " ".join(str(a) for a in answer)


def _layout(rows: int, cols: int) -> str:
    return "\n".join(" ".join(str(r * cols + c + 1) for c in range(cols)) for r in range(rows))


def make_prompt(rows: int, cols: int, style: str) -> str:
    """The user's text; the image goes before it in the chat message."""
    n = rows * cols
    intro = (
        f"The image is a {rows}x{cols} grid of shuffled tiles. Positions are numbered row by row:\n"
        f"{_layout(rows, cols)}\n"
        "For each position in order, give the original position of the tile now there."
    )
    if style == "direct":
        return f"{intro} Answer with {n} numbers separated by spaces."
    if style == "think":
        return f"{intro} {think_instruction(f'the {n} numbers separated by spaces')}"
    raise ValueError(f"prompt style must be 'direct' or 'think', got {style!r}")


def think_instruction(what: str) -> str:
    """The think prompt's last sentence, for the jigsaw and the tiny world's tasks alike."""
    return f"Think inside <think> </think>, then give {what} inside <answer> </answer>."


def think_completion(reasoning: str, answer: str) -> str:
    return f"<think>{reasoning}</think>{_OPEN}{answer}{_CLOSE}"


def make_target(answer: list[int], style: str, reasoning: str | None = None) -> str:
    """A ground-truth completion: the bare answer (direct); under the think prompt the answer alone in its
    tags when there is no reasoning (the paper's answer-only SFT), else the reasoning and the answer."""
    if style == "direct":
        return format_answer(answer)
    if reasoning is None:
        return f"{_OPEN}{format_answer(answer)}{_CLOSE}"
    return think_completion(reasoning, format_answer(answer))


def teacher_reasoning(answer: list[int], rows: int, cols: int, corners: tuple[str, ...] | None = None) -> str:
    """A scripted explanation that is always right, in words the tiny world never uses (the teacher_sft arm's:
    the paper's reasoning written by a stronger model). With a corner cue (corners: the colours of the four
    corners, 2x2 only) it names the corner colour each piece shows and where that colour belongs; otherwise
    where each piece belongs by row and column."""
    where = {1: "top left", 2: "top right", 3: "bottom left", 4: "bottom right"}
    steps = []
    for slot, home in enumerate(answer, 1):
        if corners is not None and rows * cols == 4:
            seen = f"holds the {corners[home - 1]} corner, which belongs {where[home]}"
        else:
            r, c = divmod(home - 1, cols)
            seen = f"continues the picture at row {r + 1}, column {c + 1}"
        steps.append(f"Slot {slot} {seen}: {home}.")
    return "Examining the pieces. " + " ".join(steps)


# ---------------------------------------------------------------------------------------------------------
# Parser and reward. Model output is untrusted: never raise, stay linear in the input's length.

_INT = re.compile(r"-?[0-9]+")
_OPEN, _CLOSE = "<answer>", "</answer>"


def answer_text(text: str) -> str:
    """The content of the last complete <answer>...</answer> block, else the whole text."""
    end = text.rfind(_CLOSE)
    if end >= 0:
        start = text.rfind(_OPEN, 0, end)
        if start >= 0:
            return text[start + len(_OPEN) : end]
    return text


def parse_answer(text: object, n_tiles: int) -> list[int] | None:
    """The permutation of 1..n_tiles the text answers, or None when it does not answer one."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return None
    numbers = []
    for match in _INT.finditer(answer_text(text)):
        token = match.group()
        # More numbers than tiles, or a number too long to be a position: not an answer. Stopping here
        # also keeps a megabyte of digits cheap.
        if len(numbers) == n_tiles or len(token) > 3:
            return None
        numbers.append(int(token))
    if sorted(numbers) != list(range(1, n_tiles + 1)):
        return None
    return numbers


def well_formed_think(text: str) -> bool:
    """Exactly `<think>...</think><answer>...</answer>`, whitespace allowed around and between."""
    s = text.strip()
    tags = ("<think>", "</think>", _OPEN, _CLOSE)
    if any(s.count(t) != 1 for t in tags):
        return False
    i_think, i_think_end, i_open, i_close = (s.index(t) for t in tags)
    return (
        i_think == 0
        and i_think < i_think_end < i_open < i_close
        and s[i_think_end + len("</think>") : i_open].strip() == ""
        and s.endswith(_CLOSE)
    )


@dataclass(frozen=True)
class Reward:
    accuracy: float  # fraction of positions right (valid answers only)
    exact: float  # 1.0 for an exact match
    format: float  # 0.5 when valid (and, in think style, well-formed)

    @property
    def total(self) -> float:
        return self.accuracy + self.exact + self.format


EXACT_BONUS, FORMAT_BONUS = 1.0, 0.5


def score_answer(text: object, answer: list[int], style: str = "direct") -> Reward:
    """The reward of one completion against the true answer."""
    guess = parse_answer(text, len(answer))
    if guess is None:
        return Reward(0.0, 0.0, 0.0)
    right = sum(g == a for g, a in zip(guess, answer, strict=True))
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    formatted = style != "think" or well_formed_think(text)
    return Reward(
        accuracy=right / len(answer),
        exact=EXACT_BONUS if guess == answer else 0.0,
        format=FORMAT_BONUS if formatted else 0.0,
    )

"""The tiny world: the prior-knowledge tasks the project's tiny base model learns in pretraining
(tokenizer, processor and model configs live in forgetting/models.py, the training loop in
forgetting/pretrain.py; colours, shapes and the canvas in forgetting/drawing.py).

The held-out split of each task is one of the tiny world's "general benchmarks": what a fine-tuned arm may
forget. None of them is a jigsaw. The list-answer tasks ask about a numbered grid of positions in the same
words the jigsaw prompt uses, so the base model answers a list prompt it has never seen with a list.

    python -m flows.pretrain_base --profile tiny      # builds and pretrains the shipped base model
"""

import dataclasses
import hashlib
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from forgetting.drawing import CELL_COLOURS, COLOURS, SHAPES, SIDE, canvas, draw_shape, pick, scatter
from forgetting.puzzles import (  # one list format and one think format for the jigsaw and the tiny world
    format_answer,
    think_completion,
    think_instruction,
)
from forgetting.storage import package_path

# ---------------------------------------------------------------------------------------------------------
# Prior-knowledge tasks. A generator draws one item from rng; `key` identifies the item, and its hash
# decides the split, so the held-out split never shares an item with the train split.


@dataclass
class Item:
    task: str
    key: str
    prompt: str
    answer: str
    image: Image.Image | None = None
    # What the base writes inside <think> </think> under the think prompt: what it sees, in the words it has (the
    # colour of a small shape, not its outline, which the tiny base cannot read below 50 px); for a list task what
    # each cell holds ("1 blue, 2 green, 3 red, 4 yellow"), which the answer then turns into numbers.
    reasoning: str = ""
    style: str = "direct"  # how the prompt asks: direct, or think (forgetting.world.in_style)

    @property
    def completion(self) -> str:
        """What the model learns to write: the answer, or in think style its reasoning and answer in tags."""
        return self.answer if self.style == "direct" else think_completion(self.reasoning, self.answer)


GRID_INTRO = "The image is a 2x2 grid of {what}. Positions are numbered row by row:\n1 2\n3 4\n"


def colour_item(rng: random.Random) -> Item:
    colour = pick(rng, COLOURS)
    shape = pick(rng, SHAPES)
    size, cx, cy = rng.uniform(30, 50), rng.uniform(30, 82), rng.uniform(30, 82)
    background = pick(rng, [(128, 128, 128), (90, 90, 90), (170, 170, 170)])
    image, draw = canvas(background)
    draw_shape(draw, shape, cx, cy, size, COLOURS[colour])
    prompt = rng.choice(
        ["What colour is the shape?", "Name the colour of the shape in the image.", "Which colour is the shape?"]
    )
    key = f"{colour}{shape}{size:.3f}{cx:.3f}{cy:.3f}{background}{prompt}"
    return Item("colour", key, prompt, colour, image, f"{article(colour)} {colour} shape")


def shape_item(rng: random.Random) -> Item:
    """Shapes 50-80 px: several patches wide, so the outline shows in which patches are filled. Measured on
    the tiny vision tower alone (a linear head on its output, 1000 steps of 16): 30-50 px shapes stayed near
    chance (0.33 at 400 steps), 50-80 px reached 0.60; in the base pretrained on 30-50 px shape sat at 0.28."""
    colour, shape = pick(rng, COLOURS, exclude=("black",)), pick(rng, SHAPES)
    size = rng.uniform(50, 80)
    cx, cy = rng.uniform(size / 2 + 2, SIDE - size / 2 - 2), rng.uniform(size / 2 + 2, SIDE - size / 2 - 2)
    image, draw = canvas()
    draw_shape(draw, shape, cx, cy, size, COLOURS[colour])
    prompt = rng.choice(["What shape is in the image?", "Name the shape.", "Which shape do you see?"])
    return Item(
        "shape",
        f"{colour}{shape}{size:.3f}{cx:.3f}{cy:.3f}{prompt}",
        prompt,
        shape,
        image,
        f"{article(colour)} {colour} {shape}",
    )


def count_item(rng: random.Random) -> Item:
    n = rng.randint(1, 6)
    colour, shape = pick(rng, COLOURS, exclude=("black",)), pick(rng, SHAPES)
    image, draw = canvas()
    points = scatter(rng, n, 16)
    for cx, cy in points:
        draw_shape(draw, shape, cx, cy, 16, COLOURS[colour])
    prompt = rng.choice(
        ["How many shapes are in the image?", "Count the shapes.", "How many shapes do you see? Answer with a number."]
    )
    counted = f"{colour} shapes: " + " ".join(str(i) for i in range(1, n + 1))
    return Item("count", f"{n}{colour}{shape}{points}{prompt}", prompt, str(n), image, counted)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's load_digits() images and targets, parsed from the file it parses, as it does."""
    data = np.loadtxt(package_path("sklearn", "datasets", "data", "digits.csv.gz"), delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digit_item(rng: random.Random) -> Item:
    """scikit-learn's 8x8 digits, one digit pixel per 14 px patch."""
    images, targets = _digits()
    index = rng.randrange(len(images))
    ink_name = rng.choice(["white", "yellow", "orange"])
    ink = np.array(COLOURS[ink_name])
    level = (images[index] / 16.0)[..., None]
    pixels = (level * ink + (1 - level) * np.array([20, 20, 20])).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").resize((SIDE, SIDE), Image.Resampling.NEAREST)
    prompt = rng.choice(["Which digit is written in the image?", "Read the digit.", "What digit is this?"])
    return Item(
        "digit", f"digit{index}", prompt, str(targets[index]), image, f"{article(ink_name)} {ink_name} {targets[index]}"
    )


SIDES = {"x": ("left", "right"), "y": ("top", "bottom")}


def spatial_item(rng: random.Random) -> Item:
    """Two shapes of different colours apart along one axis; the question names a side, the answer is the
    colour of the shape there. The model reads it by where image tokens sit, as it reads a cell of a grid.
    Measured: the form before (`Is the red circle left or right of the blue cross?`), which asks where a shape
    named by its content is, stayed at chance in the tiny base (0.56 after 6000 steps; 'left' to every
    left/right question): rotary positions steer which tokens attention reads, but what it reads carries no
    position, so a small model finds "the red one is on the left" much harder than "the left one is red"."""
    c1, c2 = rng.sample([c for c in COLOURS if c != "black"], 2)
    s1, s2 = pick(rng, SHAPES), pick(rng, SHAPES)
    axis = rng.choice(["x", "y"])
    near, far = rng.uniform(20, 44), rng.uniform(68, 92)
    other1, other2 = rng.uniform(20, 92), rng.uniform(20, 92)
    p1, p2 = ((near, other1), (far, other2)) if axis == "x" else ((other1, near), (other2, far))
    image, draw = canvas()
    draw_shape(draw, s1, *p1, 26, COLOURS[c1])  # the shape on the low side (left or top)
    draw_shape(draw, s2, *p2, 26, COLOURS[c2])
    low = rng.random() < 0.5
    side = SIDES[axis][0 if low else 1]
    where = "on the" if axis == "x" else "at the"
    prompt = rng.choice(
        [
            f"What colour is the shape {where} {side}?",
            f"Of the two shapes, which colour is the one {where} {side}?",
            f"Name the colour of the {side} shape.",
        ]
    )
    seen = f"{SIDES[axis][0]}: {c1}, {SIDES[axis][1]}: {c2}"
    return Item("spatial", f"{prompt}{p1}{p2}{c1}{c2}{s1}{s2}", prompt, c1 if low else c2, image, seen)


def arithmetic_item(rng: random.Random) -> Item:
    """Text only. The held-out split tests remembered facts under held-out (problem, wording) pairs."""
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    value = a + b if op == "+" else a - b
    expression = f"{a} {op} {b}"
    prompt = rng.choice(
        [
            f"What is {expression}?",
            f"Compute {expression}.",
            f"{expression} = ? Answer with a number.",
            f"Work out {expression} and give the result.",
            f"Give the value of {expression}.",
            f"Calculate {expression}.",
        ]
    )
    return Item("arithmetic", prompt, prompt, str(value), None, f"{expression} = {value}")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def cell_list(seen: Iterable[str]) -> str:
    """What each cell of a 2x2 grid holds, by position: '1 red, 2 blue, 3 yellow, 4 green'."""
    return ", ".join(f"{pos} {what}" for pos, what in enumerate(seen, 1))


def code_table(names: Iterable[str]) -> str:
    return ", ".join(f"{name} {i}" for i, name in enumerate(names, 1))


# The list tasks map what is in each cell to a number by a FIXED table, as a jigsaw maps a tile's content
# to its original position. Measured: with a table drawn afresh per item (an in-context look-up on top of
# reading the cells) the tiny model stayed at chance on every list task after 4000 pretraining steps.
# Every list answer is a permutation of 1..4, as a jigsaw's is: measured on the base before this rule (colour
# codes drawn with repeats), the jigsaw prompt got list answers with repeated numbers, a valid permutation
# only 14% of the time, and RFT had almost nothing to reward; the base built with this rule: 53%. The colour
# table is forgetting/drawing.py:CELL_COLOURS (red 1, green 2, blue 3, yellow 4), which a puzzle cue shares.


def _shade(rng: random.Random, colour: tuple[int, int, int], spread: int = 30) -> tuple[int, ...]:
    return tuple(min(255, max(0, v + rng.randint(-spread, spread))) for v in colour)


def quadrant_colours_item(rng: random.Random) -> Item:
    """The four colours, one per cell, each in a shade of its own."""
    cells = rng.sample(range(4), 4)
    shades = [_shade(rng, COLOURS[CELL_COLOURS[code]]) for code in cells]
    image, draw = canvas()
    for pos, shade in enumerate(shades):
        r, c = divmod(pos, 2)
        draw.rectangle([c * 56, r * 56, c * 56 + 55, r * 56 + 55], fill=shade)
    prompt = GRID_INTRO.format(what=rng.choice(["coloured cells", "coloured tiles"])) + rng.choice(
        [
            f"Colour codes: {code_table(CELL_COLOURS)}. For each position in order, give the code of the colour "
            "there. Answer with 4 numbers separated by spaces.",
            f"For each position in order, give the colour code of the tile there ({code_table(CELL_COLOURS)}). "
            "Answer with 4 numbers.",
        ]
    )
    answer = format_answer([code + 1 for code in cells])
    seen = cell_list(CELL_COLOURS[code] for code in cells)
    return Item("quadrant_colours", f"{shades}{prompt}", prompt, answer, image, seen)


def quadrant_shapes_item(rng: random.Random) -> Item:
    """The four shapes, one per cell; for each position, the code of the shape there: a permutation."""
    placement = rng.sample(range(4), 4)  # placement[pos] = index in SHAPES of the shape at pos
    colour = pick(rng, COLOURS, exclude=("black",))
    image, draw = canvas()
    jitter = [(rng.uniform(-6, 6), rng.uniform(-6, 6)) for _ in range(4)]
    for pos, (shape, (dx, dy)) in enumerate(zip(placement, jitter, strict=True)):
        r, c = divmod(pos, 2)
        draw_shape(draw, SHAPES[shape], c * 56 + 28 + dx, r * 56 + 28 + dy, 30, COLOURS[colour])
    prompt = GRID_INTRO.format(what="cells with one shape each") + rng.choice(
        [
            f"Shape codes: {code_table(SHAPES)}. For each position in order, give the code of the shape there. "
            "Answer with 4 numbers separated by spaces.",
            f"For each position in order, give the code of the shape there ({code_table(SHAPES)}). "
            "Answer with 4 numbers.",
        ]
    )
    answer = format_answer([shape + 1 for shape in placement])
    seen = cell_list(SHAPES[shape] for shape in placement)
    return Item("quadrant_shapes", f"{placement}{colour}{jitter}{prompt}", prompt, answer, image, seen)


def quadrant_counts_item(rng: random.Random) -> Item:
    """One to four shapes per cell, each count in one cell."""
    counts = rng.sample(range(1, 5), 4)
    colour, shape = pick(rng, COLOURS, exclude=("black",)), pick(rng, SHAPES)
    image, draw = canvas()
    for pos, n in enumerate(counts):
        r, c = divmod(pos, 2)
        for cx, cy in scatter(rng, n, 12, (c * 56, r * 56, c * 56 + 56, r * 56 + 56)):
            draw_shape(draw, shape, cx, cy, 12, COLOURS[colour])
    draw.line([(56, 0), (56, SIDE)], fill=(255, 255, 255))
    draw.line([(0, 56), (SIDE, 56)], fill=(255, 255, 255))
    prompt = GRID_INTRO.format(what="cells holding 1, 2, 3 and 4 shapes") + rng.choice(
        [
            "For each position in order, give the number of shapes there. Answer with 4 numbers separated by spaces.",
            "Count the shapes at each position, in order. Answer with 4 numbers.",
        ]
    )
    key = f"{counts}{colour}{shape}{prompt}{rng.random()}"
    seen = cell_list(f"has {n}" for n in counts)
    return Item("quadrant_counts", key, prompt, format_answer(counts), image, seen)


PRIOR_TASKS: dict[str, Callable[[random.Random], Item]] = {
    "colour": colour_item,
    "shape": shape_item,
    "count": count_item,
    "digit": digit_item,
    "spatial": spatial_item,
    "arithmetic": arithmetic_item,
    "quadrant_colours": quadrant_colours_item,
    "quadrant_shapes": quadrant_shapes_item,
    "quadrant_counts": quadrant_counts_item,
}
HELD_OUT_SHARE = 0.25

# The answer format of each task, for the format check of evaluation: an answer outside its task's format
# (a list of numbers to a colour question) is format collapse, not ignorance.
ANSWER_FORMATS: dict[str, str] = {
    "colour": "one_of:" + ",".join(COLOURS),
    "shape": "one_of:" + ",".join(SHAPES),
    "count": "number",
    "digit": "number",
    "spatial": "one_of:" + ",".join(COLOURS),
    "arithmetic": "number",
    "quadrant_colours": "numbers:4",
    "quadrant_shapes": "numbers:4",
    "quadrant_counts": "numbers:4",
}


STYLES = ("direct", "think")
_ANSWER_WITH = re.compile(r"\s*Answer with [^.]*\.$")


# What a think item says with brief reasoning (pretrain.brief_share): its answer must then read the image itself.
BRIEF_REASONING = {"list": "I look at the 4 cells", "image": "I look at the image", "text": "I work it out"}


def answers_a_list(item: Item) -> bool:
    """Whether the item's answer is a list of numbers, one per grid position (as a jigsaw's is)."""
    return ANSWER_FORMATS[item.task].startswith("numbers")


def brief_reasoning(item: Item) -> str:
    return BRIEF_REASONING["list" if answers_a_list(item) else "image" if item.image is not None else "text"]


def in_style(item: Item, style: str, brief: bool = False) -> Item:
    """The item as asked in a prompt style: direct as generated; think with the direct prompt's answer
    instruction replaced by the think instruction the jigsaw's think prompt ends with, and the completion
    `<think>reasoning</think><answer>answer</answer>` as its completion (brief: brief_reasoning instead of what the
    item's reasoning spells out)."""
    if style == "direct":
        return item
    if style != "think":
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    what = "the 4 numbers separated by spaces" if answers_a_list(item) else "the answer"
    prompt = f"{_ANSWER_WITH.sub('', item.prompt)} {think_instruction(what)}"
    reasoning = brief_reasoning(item) if brief else item.reasoning
    return dataclasses.replace(item, prompt=prompt, style=style, reasoning=reasoning)


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def grade(text: str, answer: str, fmt: str) -> tuple[bool, bool]:
    """(correct, in_format) of a model's answer under fmt: `one_of:a,b,...` (one of these words), `number`
    (one integer) or `numbers:K` (K integers separated by spaces or commas). Case and a final full stop are
    ignored; never raises."""
    text = str(text).strip().lower().removesuffix(".").strip()
    kind, _, arg = fmt.partition(":")
    if kind == "one_of":
        return text == answer.lower(), text in arg.split(",")
    if kind == "number":
        ok = text.removeprefix("-").isdigit()
        return ok and int(text) == int(answer), ok
    if kind == "numbers":
        words = _words(text)
        ok = len(words) == int(arg) and all(w.isdigit() for w in words)
        return ok and [int(w) for w in words] == [int(w) for w in _words(answer)], ok
    raise ValueError(f"unknown answer format {fmt!r}")


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < HELD_OUT_SHARE else "train"


def item_stream(task: str, split: str, seed: int = 0) -> Iterator[Item]:
    """Endless items of task whose key hashes into split; deterministic in (task, split, seed)."""
    generator = PRIOR_TASKS[task]
    rng = random.Random(f"{seed}-{task}-{split}")
    misses = 0
    while True:
        item = generator(rng)
        if split_of(f"{task}|{item.key}") == split:
            misses = 0
            yield item
        else:
            misses += 1
            if misses > 1000:
                raise RuntimeError(f"{task}: the {split} split is empty")


def make_split(task: str, split: str, n: int, seed: int = 0) -> list[Item]:
    """The first n distinct items (by key) of item_stream(task, split, seed)."""
    items, keys = [], set()
    for tries, item in enumerate(item_stream(task, split, seed)):
        if tries > 100 * n:
            raise RuntimeError(f"{task}: the {split} split has fewer than {n} distinct items")
        if item.key not in keys:
            keys.add(item.key)
            items.append(item)
            if len(items) == n:
                return items
    raise AssertionError("unreachable")


@cache
def fingerprint(split: str, seed: int = 0, n: int = 20) -> str:
    """sha256 over the first n items of every task's split (key, prompt, answer, image bytes): it changes
    when a task's items do, so folders and cards named by it never mix two versions of the world."""
    digest = hashlib.sha256()
    for task in PRIOR_TASKS:
        for item in make_split(task, split, n, seed):
            digest.update(f"{task}|{item.key}|{item.prompt}|{item.answer}|".encode())
            if item.image is not None:
                digest.update(item.image.tobytes())
    return digest.hexdigest()

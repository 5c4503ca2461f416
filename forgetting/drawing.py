"""How the tiny world draws: its named colours (RGB), shapes and canvas. Shared by the prior-knowledge tasks
(forgetting/world.py) and the synthetic puzzles' corner cues (forgetting/puzzle_data.py), which must be the
very colours the base model learned to name.
"""

import random
from collections.abc import Iterable

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 180),
    "orange": (250, 140, 0),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

# The colour codes 1..4 of the colour-code-per-cell task, which the code_colours puzzle cue paints in its corners.
CELL_COLOURS = ("red", "green", "blue", "yellow")

SIDE = 112  # 8x8 patches of 14 px -> 16 image tokens after the 2x2 merge
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = (128, 128, 128)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, colour) -> None:
    r = size / 2
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def canvas(background=BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIDE, SIDE), background)
    return image, ImageDraw.Draw(image)


def pick(rng: random.Random, options: Iterable, exclude=()) -> object:
    return rng.choice([o for o in options if o not in exclude])


# ---------------------------------------------------------------------------------------------------------
def scatter(rng: random.Random, n: int, size: float, box=(0, 0, SIDE, SIDE)) -> list[tuple[float, float]]:
    """n centres inside box whose shapes of this size do not touch: distinct cells of a grid, jittered."""
    x0, y0, x1, y1 = box
    per_row = int((x1 - x0) // (1.35 * size))
    if per_row * per_row < n:
        raise ValueError(f"cannot place {n} shapes of size {size} in {box}")
    cell = (x1 - x0) / per_row
    slack = (cell - size) / 2
    points = []
    for index in rng.sample(range(per_row * per_row), n):
        r, c = divmod(index, per_row)
        points.append(
            (
                x0 + c * cell + cell / 2 + rng.uniform(-slack, slack) * 0.8,
                y0 + r * cell + cell / 2 + rng.uniform(-slack, slack) * 0.8,
            )
        )
    return points

"""The tiny world's named colours (RGB), shared by its tasks (tasks/world.py) and the synthetic puzzles'
corner cues (tasks/puzzles.py), which must be the very colours the base model learned to name."""

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

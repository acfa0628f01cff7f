"""The closed vocabulary of the synthetic world: shapes, colours, sizes, positions, numbers.

Everything that draws, describes or corrupts a scene reads its words from here, so a caption
can only ever name things the renderer knows how to draw (and a checker can parse it back).
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}

# Object colours are kept far apart in RGB so a colour word is never ambiguous after jitter.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 225),
    "yellow": (240, 225, 40),
    "orange": (245, 135, 15),
    "purple": (135, 50, 185),
    "pink": (250, 135, 200),
    "cyan": (40, 210, 225),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Backgrounds are neutral so that no object colour disappears into them.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "gray": (110, 110, 110),
    "white": (242, 242, 242),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)

# Side of the (square) bounding box in pixels. Small shapes stay big enough (16 px on a 64 px
# image) that a star and a cross still differ in more than a handful of pixels.
SIZES: dict[str, int] = {"small": 16, "large": 26}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

IMAGE_SIZE = 64
MAX_OBJECTS = 4

# Region names and the phrase a caption uses for them.
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_COUNT = 4

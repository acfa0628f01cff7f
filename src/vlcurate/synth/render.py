"""Draw a layout with Pillow: one mask per object, then the colours pasted through the masks.

Drawing each object into its own mask first is what makes the ground truth exact: the mask
is the set of pixels that carry the object's colour, and its box is the mask's tight box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlcurate.synth.layout import Layout, ObjectSpec
from vlcurate.synth.vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE

_JITTER = 12  # +- per channel, so colour names cover a small range, not one exact value


@dataclass(frozen=True)
class Rendered:
    """Pixels and per-object truth for one layout."""

    image: Image.Image
    masks: np.ndarray  # (n_objects, H, W) bool
    boxes: tuple[tuple[int, int, int, int], ...]  # (x0, y0, x1, y1), x1/y1 exclusive


def _star(x: float, y: float, s: float) -> list[tuple[float, float]]:
    cx, cy, ro = x + s / 2, y + s / 2 + s * 0.04, s / 2
    ri = ro * 0.45
    pts = []
    for k in range(10):
        r = ro if k % 2 == 0 else ri
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, obj: ObjectSpec) -> None:
    """Draw `obj` filled with 255 into an 'L' mask."""
    x, y, s = obj.x, obj.y, obj.side
    x1, y1 = x + s - 1, y + s - 1
    if obj.shape == "circle":
        draw.ellipse((x, y, x1, y1), fill=255)
    elif obj.shape == "square":
        m = max(1, s // 10)  # inset a little: a full square would dwarf the other shapes
        draw.rectangle((x + m, y + m, x1 - m, y1 - m), fill=255)
    elif obj.shape == "triangle":
        draw.polygon([(x + (s - 1) / 2, y), (x, y1), (x1, y1)], fill=255)
    elif obj.shape == "star":
        draw.polygon(_star(x, y, s - 1), fill=255)
    elif obj.shape == "cross":
        t = s / 3
        draw.rectangle((x + t, y, x1 - t, y1), fill=255)
        draw.rectangle((x, y + t, x1, y1 - t), fill=255)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    r, g, b = (int(min(255, max(0, c + int(v)))) for c, v in zip(rgb, d, strict=True))
    return (r, g, b)


def render(layout: Layout, rng: np.random.Generator) -> Rendered:
    """Draw the layout on a 64x64 RGB canvas; colours are jittered with `rng`."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    image = Image.new("RGB", size, _jitter(BACKGROUNDS[layout.background], rng, 6))
    masks = np.zeros((len(layout.objects), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    boxes = []
    for i, obj in enumerate(layout.objects):
        mask = Image.new("L", size, 0)
        draw_shape(ImageDraw.Draw(mask), obj)
        image.paste(_jitter(COLOURS[obj.colour], rng, _JITTER), (0, 0), mask)
        bbox = mask.getbbox()
        if bbox is None:  # pragma: no cover - every shape covers pixels at the sizes we use
            raise RuntimeError(f"empty mask for {obj}")
        boxes.append((int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])))
        masks[i] = np.asarray(mask, dtype=np.uint8) > 0
    return Rendered(image=image, masks=masks, boxes=tuple(boxes))

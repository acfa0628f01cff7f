"""A scene: the rendered image plus its exact ground truth, generated from a numpy Generator.

`generate_scene(rng)` is the single entry point: layout, pixels, caption and QA pairs all
come from the same generator in a fixed order, so a seed fixes every byte.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlcurate.synth.caption import Caption, describe
from vlcurate.synth.layout import Layout, object_positions, sample_layout
from vlcurate.synth.qa import QA, make_qa
from vlcurate.synth.render import render
from vlcurate.synth.rle import mask_to_rle
from vlcurate.synth.vocab import SHAPES


@dataclass(frozen=True)
class SceneObject:
    """Ground truth for one drawn object; `label` indexes `SHAPES` (the class label)."""

    shape: str
    colour: str
    size: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the mask's pixels
    positions: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Scene:
    """An image with everything that is true about it."""

    layout: Layout
    image: Image.Image
    masks: np.ndarray  # (n_objects, 64, 64) bool, one per object in `objects` order
    objects: tuple[SceneObject, ...]
    caption: Caption
    qa: tuple[QA, ...]

    @property
    def caption_text(self) -> str:
        return self.caption.text

    @property
    def background(self) -> str:
        return self.layout.background

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.bbox for o in self.objects]

    @property
    def labels(self) -> list[int]:
        return [o.label for o in self.objects]

    def encode(self, image_format: str = "jpg") -> bytes:
        """The image as JPEG (quality 95) or PNG bytes; deterministic for a given Pillow build."""
        buf = io.BytesIO()
        if image_format in ("jpg", "jpeg"):
            self.image.save(buf, format="JPEG", quality=95)
        elif image_format == "png":
            self.image.save(buf, format="PNG")
        else:
            raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
        return buf.getvalue()

    def to_json(self, *, masks: bool = True) -> dict[str, Any]:
        """Plain-JSON ground truth (masks as COCO uncompressed RLE) for people and other tools."""
        objects = []
        for i, o in enumerate(self.objects):
            d: dict[str, Any] = {
                "shape": o.shape,
                "colour": o.colour,
                "size": o.size,
                "bbox": list(o.bbox),
                "positions": list(o.positions),
                "label": o.label,
            }
            if masks:
                d["mask_rle"] = mask_to_rle(self.masks[i])
            objects.append(d)
        return {
            "caption": self.caption_text,
            "background": self.background,
            "n_objects": self.n_objects,
            "objects": objects,
            "boxes": [list(b) for b in self.boxes],
            "labels": self.labels,
            "label_names": list(SHAPES),
            "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind} for q in self.qa],
        }


def generate_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Sample, draw and describe one scene."""
    layout = sample_layout(rng, n_objects)
    drawn = render(layout, rng)
    objects = tuple(
        SceneObject(o.shape, o.colour, o.size, box, object_positions(o), SHAPES.index(o.shape))
        for o, box in zip(layout.objects, drawn.boxes, strict=True)
    )
    caption = describe(layout, rng)
    return Scene(layout, drawn.image, drawn.masks, objects, caption, make_qa(layout, rng))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene `index` of stream `seed` (independent of every other index)."""
    return np.random.default_rng([seed, index])


def scene_from_seed(seed: int, index: int = 0) -> Scene:
    """Scene `index` of the stream `seed`; the same arguments give the same scene anywhere."""
    return generate_scene(scene_rng(seed, index))


def iter_scenes(n: int, seed: int = 0, start: int = 0) -> Iterator[Scene]:
    """Scenes `start` .. `start + n - 1` of stream `seed`."""
    for i in range(start, start + n):
        yield scene_from_seed(seed, i)

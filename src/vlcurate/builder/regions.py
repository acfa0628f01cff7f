"""Offline stand-ins for a detector's proposals and SAM: colour segmentation of plain backgrounds.

The background is the median colour of the image border; pixels far from it are foreground;
connected components of foreground pixels are regions. Exact on the synthetic
scenes (flat shapes on a flat background), meaningless on photos: there the transformers models
(`hf_models`) take the same place.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, x1/y1 exclusive


def background_colour(a: np.ndarray) -> np.ndarray:
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.float32)
    return np.asarray(np.median(border, axis=0), dtype=np.float32)


def foreground(a: np.ndarray, tol: float = 48.0) -> np.ndarray:
    """Pixels whose largest channel difference from the background exceeds `tol`."""
    return np.asarray(np.abs(a.astype(np.float32) - background_colour(a)).max(axis=-1) > tol)


def propose_regions(
    a: np.ndarray, *, min_pixels: int = 12, tol: float = 48.0
) -> list[tuple[Box, np.ndarray]]:
    """Foreground regions: (box, full-size bool mask), largest first."""
    fg = foreground(a, tol)
    comps, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    out: list[tuple[Box, np.ndarray]] = []
    for c in range(1, n + 1):
        mask = comps == c
        if mask.sum() >= min_pixels:
            out.append((mask_box(mask), mask))
    out.sort(key=lambda r: -int(r[1].sum()))
    return out


def mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def segment_in_box(a: np.ndarray, box: Box, tol: float = 48.0) -> np.ndarray:
    """The stand-in for SAM prompted with a box: the largest foreground component inside it."""
    x0, y0, x1, y1 = box
    fg = foreground(a, tol)
    inside = np.zeros_like(fg)
    inside[y0:y1, x0:x1] = fg[y0:y1, x0:x1]
    comps, n = ndimage.label(inside, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return inside
    sizes = ndimage.sum(inside, comps, index=range(1, n + 1))
    return np.asarray(comps == int(np.argmax(sizes)) + 1)

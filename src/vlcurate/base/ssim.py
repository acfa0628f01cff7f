"""Structural similarity (SSIM, Wang et al. 2004) of two images on luminance, 7x7 uniform window.

Used for enhancement fidelity (an optimised image against its original) and to confirm
near-duplicates. Images of different sizes are compared at the smaller one's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float32 luminance in [0, 255]; a 2-D array is returned as float32."""
    a = np.asarray(rgb)
    return a.astype(np.float32) if a.ndim == 2 else a.astype(np.float32) @ _LUMA


def gray_at(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float32 luminance of `image` resized to `size` (width, height)."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return to_gray(np.asarray(img, dtype=np.uint8))


def ssim_gray(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of two same-shape luminance arrays in [0, 255]."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    mx, my = uniform_filter(x, window), uniform_filter(y, window)
    vx = uniform_filter(x * x, window) - mx * mx
    vy = uniform_filter(y * y, window) - my * my
    cxy = uniform_filter(x * y, window) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    pad = window // 2
    inner = s[pad:-pad, pad:-pad] if min(s.shape) > 2 * pad else s
    return float(inner.mean())


def ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, max_side: int = 256) -> float:
    """SSIM of two images at a common size (the smaller one's, at most `max_side`)."""
    ia = Image.fromarray(a) if isinstance(a, np.ndarray) else a
    ib = Image.fromarray(b) if isinstance(b, np.ndarray) else b
    w, h = min(ia.size[0], ib.size[0]), min(ia.size[1], ib.size[1])
    scale = min(1.0, max_side / max(w, h))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return ssim_gray(gray_at(ia, size), gray_at(ib, size))

"""Is an image a copy of one in a reference set (a test split, an existing dataset)?

Exact bytes (sha256) first. Then pHash against each reference image and its crops (centre and
corners at 95, 90, 85 and 80%) finds candidates, so resized, re-encoded and slightly cropped copies
come within a few bits. A candidate is confirmed on blurred 64 px colour views (the blur absorbs
the pixel or two by which a crop misses the nearest view): the pair is a copy when no 8x8 tile
differs much (two simple images that differ only where an object sits are not copies) and their
SSIM is high.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from vlcurate.base.images import hamming, phash
from vlcurate.base.ssim import ssim_gray, to_gray

CROP_SCALES = (0.95, 0.9, 0.85, 0.8)
_SIDE = 64  # views compared at this size
_BLUR = 2.0
_KEEP_SIDE = 256


def crop_windows(w: int, h: int) -> list[tuple[float, float, float, float]]:
    """The whole image, then centre and corner crops at each of CROP_SCALES, as fractions (x, y, sx, sy)."""
    out = [(0.0, 0.0, 1.0, 1.0)]
    for s in CROP_SCALES:
        for fx, fy in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1)):
            out.append(((1 - s) * fx, (1 - s) * fy, s, s))
    return out


def _cut(img: Image.Image, win: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    x, y, sx, sy = win
    box = (round(x * w), round(y * h), round((x + sx) * w), round((y + sy) * h))
    return img.crop(box) if box != (0, 0, w, h) else img


def crop_views(img: Image.Image) -> list[Image.Image]:
    """The image and its crops (see `crop_windows`)."""
    return [_cut(img, win) for win in crop_windows(*img.size)]


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def block_difference(a: np.ndarray, b: np.ndarray, block: int = 8) -> float:
    """The largest mean absolute difference (per channel) over `block` x `block` tiles: small for a re-encoded
    or resized copy, large where two images differ locally (an object elsewhere) even if mostly alike."""
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
    if diff.ndim == 2:
        diff = diff[:, :, None]
    h, w, c = diff.shape
    cut = diff[: h - h % block, : w - w % block]
    return float(cut.reshape(h // block, block, w // block, block, c).mean(axis=(1, 3)).max())


@dataclass
class Match:
    kind: str  # "exact" or "near"
    ref: str
    distance: int
    ssim: float | None = None


@dataclass
class ReferenceIndex:
    """Reference images by sha256 and by the pHash of every crop view."""

    max_hamming: int = 16  # pHash distance that makes a pair a candidate
    max_block_diff: float = 30.0  # then no 8x8 tile of the 64 px views may differ more than this
    min_ssim: float = 0.7  # and their SSIM must reach this
    sha: dict[str, str] = field(default_factory=dict)
    hashes: list[int] = field(default_factory=list)
    view_of: list[tuple[int, int]] = field(default_factory=list)  # (reference number, window number)
    refs: list[str] = field(default_factory=list)
    smalls: list[Image.Image] = field(default_factory=list, repr=False)  # each reference at <= 256 px
    _thumbs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # views compared so far
    _array: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.sha)

    def add(self, ref_id: str, data: bytes) -> None:
        self.sha[hashlib.sha256(data).hexdigest()] = ref_id
        try:
            img = _open(data)
        except Exception:
            return
        small = img.copy()
        small.thumbnail((_KEEP_SIDE, _KEEP_SIDE), Image.Resampling.BILINEAR)  # pHash looks at 32 px anyway
        r = len(self.refs)
        self.refs.append(ref_id)
        self.smalls.append(small)
        for j, view in enumerate(crop_views(small)):
            self.hashes.append(phash(view))
            self.view_of.append((r, j))

    def _thumb(self, i: int) -> np.ndarray:
        """The blurred view behind hash i, made the first time a candidate needs it."""
        if i not in self._thumbs:
            r, j = self.view_of[i]
            small = self.smalls[r]
            self._thumbs[i] = thumbnail(_cut(small, crop_windows(*small.size)[j]))
        return self._thumbs[i]

    def add_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        for ref_id, data in items:
            self.add(ref_id, data)

    def match(self, data: bytes) -> Match | None:
        """The reference this image copies, or None."""
        ref = self.sha.get(hashlib.sha256(data).hexdigest())
        if ref is not None:
            return Match("exact", ref, 0, 1.0)
        if not self.hashes:
            return None
        try:
            img = _open(data)
        except Exception:
            return None
        if self._array is None or len(self._array) != len(self.hashes):
            self._array = np.asarray(self.hashes, dtype=np.uint64)
        d = hamming(self._array, np.uint64(phash(img)))
        close = np.flatnonzero(d <= self.max_hamming)
        thumb = thumbnail(img)
        for i in close[np.argsort(d[close], kind="stable")][:16]:
            view = self._thumb(int(i))
            if block_difference(thumb, view) > self.max_block_diff:
                continue
            s = ssim_gray(to_gray(thumb), to_gray(view))
            if s >= self.min_ssim:
                return Match("near", self.refs[self.view_of[int(i)][0]], int(d[int(i)]), round(s, 4))
        return None


def thumbnail(img: Image.Image) -> np.ndarray:
    """64 px RGB, blurred so that a misalignment of a pixel or two (a crop not on a view's grid) fades;
    colour kept, so two objects of equal brightness but different colour do not look alike."""
    small = img.resize((_SIDE, _SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small.filter(ImageFilter.GaussianBlur(_BLUR)), dtype=np.float32)


__all__ = ["CROP_SCALES", "Match", "ReferenceIndex", "block_difference", "crop_views", "thumbnail"]

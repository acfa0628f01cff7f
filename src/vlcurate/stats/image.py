"""Image statistics for the image operators: decodability, size, bytes per pixel, blur, exposure, phash.

Decoding goes through `vlcurate.base.images.decode_image`, the same code the scorer uses,
so an image gets the same status everywhere: "ok", "missing_image" (None), "decode_error"
(empty, not an image, corrupt, truncated) or "too_large" (more pixels than the limit: a
decompression bomb). Size comes from the header alone (Pillow opens lazily), so the size,
aspect and bytes-per-pixel filters cost almost nothing. Pixel statistics are measured on the
centre square that CLIP-style models see, at a fixed analysis size so scores are comparable
between images of different resolutions. Unreadable images get NaN statistics and no hash,
never an exception; only an argument of the wrong type (e.g. str) raises TypeError.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlcurate.base.images import DEFAULT_MAX_PIXELS, decode_image, phash

ANALYSIS_SIZE = 256
"""Side of the square that blur, exposure and phash are measured on (smaller images: their own side)."""
DARK_LEVEL = 16  # luminance below this (of 255) is "near black"
BRIGHT_LEVEL = 240  # luminance at or above this is "near white"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L" mode

ImageBytes = bytes | bytearray | memoryview


def _as_bytes(data: object) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"expected encoded image bytes or None, got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------
# header: size, aspect ratio, bytes per pixel


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, without decoding pixels.

    status is "ok", "missing_image", "decode_error" (header unreadable) or "too_large"; a
    truncated file with a good header is "ok" here and fails `decodability`.
    """

    status: str
    error: str | None
    width: int | None
    height: int | None
    format: str | None
    num_bytes: int

    @property
    def aspect_ratio(self) -> float:
        """Longer side over shorter side, in [1, inf); DataComp's basic filter keeps <= 3. NaN if unknown."""
        if not self.width or not self.height:
            return math.nan
        return max(self.width, self.height) / min(self.width, self.height)

    @property
    def bytes_per_pixel(self) -> float:
        """File size / pixel count, in (0, inf): JPEG photos ~0.1-0.6, PNG photos ~1.5-3; NaN if unknown."""
        if not self.width or not self.height:
            return math.nan
        return self.num_bytes / (self.width * self.height)


def read_header(data: ImageBytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Width, height and format from the header only (Pillow's lazy open reads a few hundred bytes)."""
    raw = _as_bytes(data)
    if raw is None:
        return ImageHeader("missing_image", "no image bytes", None, None, None, 0)
    n = len(raw)
    if n == 0:
        return ImageHeader("decode_error", "empty image file (0 bytes)", None, None, None, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:
                w, h = img.size
                fmt = img.format
    except UnidentifiedImageError:
        return ImageHeader("decode_error", "not an image (unrecognised format)", None, None, None, n)
    except Image.DecompressionBombError as exc:
        return ImageHeader("too_large", f"decompression bomb: {exc}", None, None, None, n)
    except Exception as exc:  # a parser bug must not take the worker down
        return ImageHeader(
            "decode_error", f"unreadable header: {type(exc).__name__}: {exc}", None, None, None, n
        )
    if w <= 0 or h <= 0:
        return ImageHeader("decode_error", f"invalid image size {w}x{h}", w, h, fmt, n)
    if w * h > max_pixels:
        msg = f"{w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
        return ImageHeader("too_large", msg, w, h, fmt, n)
    return ImageHeader("ok", None, w, h, fmt, n)


def decodability(data: ImageBytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, str | None]:
    """(status, error) of a full decode by the scorer's own decoder; ("ok", None) if usable.

    Decodes at a tiny size (JPEG DCT scaling), which still reads every byte of the image.
    """
    d = decode_image(_as_bytes(data), size=16, max_pixels=max_pixels, fast=True)
    return d.status, d.error


# ---------------------------------------------------------------------------------------------
# pixel statistics on a decoded array


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 luminance in [0, 255] (ITU-R 601 weights, as Pillow)."""
    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    return rgb.astype(np.float32) @ _LUMA


def blur_score(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a luminance image (0-255 scale), in [0, inf).

    Higher is sharper. At the 256 px analysis size sharp photos score in the hundreds to
    thousands, visibly blurred ones below ~50, a flat image 0. It also falls with little
    texture (sky, studio backdrops), so use it as a low-end filter. Images under 3x3: 0.0.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2:
        raise ValueError(f"expected a 2-D luminance image, got shape {g.shape}")
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


@dataclass(frozen=True)
class Exposure:
    """Brightness in [0, 1] (mean luminance / 255) and the shares in [0, 1] of near-black/white pixels."""

    brightness: float
    dark_fraction: float
    bright_fraction: float


def exposure(gray: np.ndarray, dark_level: int = DARK_LEVEL, bright_level: int = BRIGHT_LEVEL) -> Exposure:
    """Under/over-exposure: black frame (0, 1, 0), white frame (1, 0, 1), photos ~(0.3-0.6, <0.1, <0.1)."""
    g = np.asarray(gray, dtype=np.float32)
    if g.size == 0:
        return Exposure(math.nan, math.nan, math.nan)
    return Exposure(
        brightness=float(g.mean(dtype=np.float64) / 255.0),
        dark_fraction=float(np.count_nonzero(g < dark_level) / g.size),
        bright_fraction=float(np.count_nonzero(g >= bright_level) / g.size),
    )


# ---------------------------------------------------------------------------------------------
# everything at once, one decode


@dataclass(frozen=True)
class ImageStats:
    """All image statistics of one encoded image; NaN / None where the image could not be read."""

    status: str
    error: str | None
    width: int | None
    height: int | None
    format: str | None
    num_bytes: int
    aspect_ratio: float
    bytes_per_pixel: float
    blur: float
    brightness: float
    dark_fraction: float
    bright_fraction: float
    phash: int | None


def image_stats(
    data: ImageBytes | None, analysis_size: int = ANALYSIS_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageStats:
    """Header, decodability and pixel statistics of one image with a single decode.

    Pixels are the centre square at min(analysis_size, shorter side) px, as decoded by the
    scorer's `decode_image` (so no upscaling of small images blurs them); a header that reads
    but pixels that do not keep width/height/bytes per pixel and get the decoder's status.
    """
    header = read_header(data, max_pixels)
    if header.status != "ok" or header.width is None or header.height is None:
        return _unreadable(header, header.status, header.error)
    size = max(1, min(analysis_size, header.width, header.height))
    d = decode_image(_as_bytes(data), size=size, max_pixels=max_pixels, fast=True)
    if d.array is None:
        return _unreadable(header, d.status, d.error)
    gray = to_gray(d.array)
    exp = exposure(gray)
    return ImageStats(
        status="ok",
        error=None,
        width=header.width,
        height=header.height,
        format=header.format,
        num_bytes=header.num_bytes,
        aspect_ratio=header.aspect_ratio,
        bytes_per_pixel=header.bytes_per_pixel,
        blur=blur_score(gray),
        brightness=exp.brightness,
        dark_fraction=exp.dark_fraction,
        bright_fraction=exp.bright_fraction,
        phash=phash(d.array),
    )


def _unreadable(header: ImageHeader, status: str, error: str | None) -> ImageStats:
    """What the header told (if anything) with NaN pixel statistics and no hash."""
    return ImageStats(
        status=status,
        error=error,
        width=header.width,
        height=header.height,
        format=header.format,
        num_bytes=header.num_bytes,
        aspect_ratio=header.aspect_ratio,
        bytes_per_pixel=header.bytes_per_pixel,
        blur=math.nan,
        brightness=math.nan,
        dark_fraction=math.nan,
        bright_fraction=math.nan,
        phash=None,
    )


def stats_columns(stats: Sequence[ImageStats]) -> dict[str, np.ndarray]:
    """A batch of `ImageStats` as NumPy columns: unknown sizes are -1, phash uint64 with `phash_valid`."""
    rows = [asdict(s) for s in stats]
    cols: dict[str, np.ndarray] = {
        "status": np.array([r["status"] for r in rows], dtype=object),
        "error": np.array([r["error"] for r in rows], dtype=object),
        "format": np.array([r["format"] for r in rows], dtype=object),
        "num_bytes": np.array([r["num_bytes"] for r in rows], dtype=np.int64),
    }
    for key in ("width", "height"):
        cols[key] = np.array([-1 if r[key] is None else r[key] for r in rows], dtype=np.int64)
    for key in ("aspect_ratio", "bytes_per_pixel", "blur", "brightness", "dark_fraction", "bright_fraction"):
        cols[key] = np.array([r[key] for r in rows], dtype=np.float64)
    cols["phash"] = np.array([0 if r["phash"] is None else r["phash"] for r in rows], dtype=np.uint64)
    cols["phash_valid"] = np.array([r["phash"] is not None for r in rows], dtype=bool)
    return cols

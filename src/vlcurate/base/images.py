"""Decode encoded images into model-ready uint8 arrays, safely, fast, and in worker processes.

Matches open_clip's eval transform (resize the shorter side to the model size with bicubic
filtering, centre crop); normalisation happens later on the batch, on the model's device.
JPEGs go through simplejpeg with DCT-domain downscaling (libjpeg-turbo) and everything else
through Pillow. This module imports no torch so that decode workers start fast and stay small.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

from vlcurate.base.byte_range import TarRange

DEFAULT_MAX_PIXELS = 1 << 27  # ~134 MP; a larger image is a decompression bomb for our purposes
# JPEG decoders can downscale by 1/2, 1/4, 1/8 while decoding (DCT scaling), which is fast but
# averages pixels differently from a bicubic resize. Scaling only while the result stays at least
# EXACT_MARGIN times the model size keeps pixels within ~0.1/255 of open_clip's own transform;
# `fast=True` scales down to the model size itself (about 1.5x faster, ~3/255 mean difference).
EXACT_MARGIN = 2
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeFailure(Exception):
    """An image that cannot be used, with the status it gets in the score table."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Decoded:
    """One decode result: the array (None on failure) and the original size."""

    array: np.ndarray | None
    width: int | None
    height: int | None
    status: str = "ok"
    error: str | None = None


def _resize_crop(img: Image.Image, size: int) -> np.ndarray:
    # The same arithmetic as torchvision's Resize(size) + CenterCrop(size), which open_clip uses.
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, int(size * h / w))
    else:
        nw, nh = max(size, int(size * w / h)), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = round((nw - size) / 2.0), round((nh - size) / 2.0)
    if (nw, nh) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha composited on white, 16/32-bit scaled, CMYK/palette converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode in ("I", "F") and arr.max() <= 255:
            hi = 255.0
        arr8 = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def decode_image(
    data: bytes | None, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, fast: bool = False
) -> Decoded:
    """Decode `data` to a (size, size, 3) uint8 array, or a failure with its status and reason."""
    try:
        if data is None:
            raise DecodeFailure("missing_image", "no image bytes")
        if len(data) == 0:
            raise DecodeFailure("decode_error", "empty image file (0 bytes)")
        if _is_jpeg(data):
            decoded = _decode_jpeg_fast(data, size, max_pixels, fast)
            if decoded is not None:
                return decoded
        return _decode_pillow(data, size, max_pixels, fast)
    except DecodeFailure as exc:
        return Decoded(None, None, None, exc.status, exc.message)
    except Exception as exc:  # a decoder bug must not take the worker down
        return Decoded(None, None, None, "decode_error", f"{type(exc).__name__}: {exc}")


def _decode_jpeg_fast(data: bytes, size: int, max_pixels: int, fast: bool) -> Decoded | None:
    """simplejpeg path; None means 'let Pillow try' (e.g. CMYK or odd JPEGs)."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if w * h > max_pixels:
        raise DecodeFailure(
            "too_large", f"{w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
        )
    if colorspace not in ("Gray", "YCbCr", "RGB"):
        return None
    try:
        floor = size if fast else EXACT_MARGIN * size
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_height=floor, min_width=floor)
    except ValueError as exc:
        raise DecodeFailure("decode_error", f"corrupt or truncated JPEG: {exc}") from exc
    return Decoded(_resize_crop(Image.fromarray(arr), size), w, h)


def _decode_pillow(data: bytes, size: int, max_pixels: int, fast: bool) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise DecodeFailure("decode_error", "not an image (unrecognised format)") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeFailure("too_large", f"decompression bomb: {exc}") from exc
        w, h = img.size
        if w <= 0 or h <= 0:
            raise DecodeFailure("decode_error", f"invalid image size {w}x{h}")
        if w * h > max_pixels:
            raise DecodeFailure(
                "too_large", f"{w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
            )
        try:
            if getattr(img, "is_animated", False):
                img.seek(0)  # first frame of an animated GIF/WebP/PNG
            floor = size if fast else EXACT_MARGIN * size
            img.draft("RGB", (floor, floor))
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DecodeFailure("decode_error", f"corrupt or truncated image: {exc}") from exc
        rgb = _to_rgb(img)
    return Decoded(_resize_crop(rgb, size), w, h)


def decode_chunk(
    images: Sequence[bytes | TarRange | None],
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fast: bool = False,
) -> tuple[np.ndarray, list[tuple[int, str, str | None, int | None, int | None]]]:
    """Decode many images in one worker call.

    An image is its encoded bytes, or a `TarRange` that this call reads from disk itself (so the
    bytes never pass through the job's main process). Returns the stacked arrays of the successes
    and, per input, (row in that stack or -1, status, error, width, height). One stacked array
    pickles far faster than many small ones.
    """
    arrays: list[np.ndarray] = []
    meta: list[tuple[int, str, str | None, int | None, int | None]] = []
    with _RangeReader() as reader:
        for item in images:
            if isinstance(item, TarRange):
                try:
                    data: bytes | None = reader.read(item)
                except OSError as exc:
                    meta.append((-1, "read_error", f"cannot read the image bytes: {exc}", None, None))
                    continue
            else:
                data = item
            d = decode_image(data, size, max_pixels, fast)
            if d.array is not None:
                meta.append((len(arrays), d.status, d.error, d.width, d.height))
                arrays.append(d.array)
            else:
                meta.append((-1, d.status, d.error, d.width, d.height))
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)
    return stacked, meta


class _RangeReader:
    """Reads `TarRange`s with `pread`, keeping each file open for the rest of the chunk."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read(self, rng: TarRange) -> bytes:
        fd = self._fds.get(rng.path)
        if fd is None:
            fd = self._fds[rng.path] = os.open(rng.path, os.O_RDONLY)
        data = os.pread(fd, rng.size, rng.offset)
        if len(data) != rng.size:
            raise OSError(f"{rng.path} holds {len(data)} of {rng.size} bytes at offset {rng.offset}")
        return data


# ---------------------------------------------------------------------------------------------
# perceptual hash: near-duplicates are within a few bits of each other

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash(image: Image.Image | np.ndarray) -> int:
    """imagehash's 64-bit DCT perceptual hash packed into an int in [0, 2**64) (fits uint64).

    Bit order is imagehash's (row-major, first bit most significant), so `f"{h:016x}"` equals
    `str(imagehash.phash(image))`. Near-duplicates are within a few bits (Hamming distance).
    """
    import imagehash

    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    bits = np.asarray(imagehash.phash(img, hash_size=8).hash, dtype=bool).reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: Any, b: Any) -> np.ndarray:
    """Elementwise Hamming distance between uint64 hashes (NumPy broadcasting, any strides)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    octets = np.ascontiguousarray(x).reshape(-1).view(np.uint8).reshape(-1, 8)
    return np.asarray(_POPCOUNT8[octets].sum(axis=1, dtype=np.int64).reshape(x.shape))


def sniff_image_ext(data: bytes) -> str | None:
    """The image format from magic bytes, for naming members when the source did not say."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def thumbnail_png(data: bytes, side: int) -> bytes | None:
    """A small PNG of an encoded image (longer side `side`), or None when it cannot be decoded: the
    one thumbnail that reports (build, diagnose) show."""
    try:
        with Image.open(io.BytesIO(data)) as src:
            im = src.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except Exception:  # any decoder failure: a corrupt image has no thumbnail
        return None

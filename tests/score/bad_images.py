"""Encoded images of every awkward kind a web pool contains, built from a real COCO photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def awkward_images(photo: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, extension, expected status)."""
    im = Image.open(io.BytesIO(photo)).convert("RGB")
    small = im.resize((160, 120))
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pal = small.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    bomb = _save(Image.new("L", (20000, 20000)), "PNG")
    rng = np.random.default_rng(0)
    return {
        "ok_jpeg": (photo, "jpg", "ok"),
        "zero_byte": (b"", "jpg", "decode_error"),
        "truncated_jpeg": (photo[: len(photo) // 3], "jpg", "decode_error"),
        "not_an_image": (b"<html><body>404 not found</body></html>", "jpg", "decode_error"),
        "decompression_bomb": (bomb, "png", "too_large"),
        "cmyk_jpeg": (_save(im.convert("CMYK"), "JPEG"), "jpg", "ok"),
        "png16": (
            _save(Image.fromarray((rng.random((90, 120)) * 65535).astype(np.uint16)), "PNG"),
            "png",
            "ok",
        ),
        "palette_transparent": (_save(pal, "PNG"), "png", "ok"),
        "animated_gif": (gif.getvalue(), "gif", "ok"),
        "webp": (_save(small, "WEBP"), "webp", "ok"),
        "rgba_png": (_save(small.convert("RGBA"), "PNG"), "png", "ok"),
        "grayscale": (_save(small.convert("L"), "JPEG"), "jpg", "ok"),
    }

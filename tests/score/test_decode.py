"""The decoder turns every awkward image into a model-ready array or a clear status."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tests.score.bad_images import awkward_images

from vlcurate.base.images import decode_chunk, decode_image


@pytest.fixture(scope="module")
def photo(coco_pairs: list) -> bytes:
    return coco_pairs[0].path.read_bytes()


def test_every_awkward_image_gets_its_status(photo: bytes) -> None:
    for name, (data, _ext, expected) in awkward_images(photo).items():
        d = decode_image(data, 64)
        assert d.status == expected, f"{name}: {d.status} {d.error}"
        if expected == "ok":
            assert d.array is not None and d.array.shape == (64, 64, 3) and d.array.dtype == np.uint8
            assert d.width and d.height
        else:
            assert d.array is None and d.error, name


def _open_clip_reference(data: bytes, size: int) -> np.ndarray:
    """open_clip's own eval transform on the fully decoded image, as uint8-scale floats (HWC)."""
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()
    from open_clip.transform import image_transform

    pre = image_transform(size, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    tensor = pre(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.asarray(tensor.numpy().transpose(1, 2, 0) * 255.0)


@pytest.mark.parametrize("size", [64, 224])
def test_matches_open_clip_transform(photo: bytes, size: int) -> None:
    """By default (JPEG and PNG alike) our decode equals open_clip's transform up to rounding."""
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").save(png, "PNG")
    for data in (photo, png.getvalue()):
        ours = decode_image(data, size).array
        assert ours is not None
        diff = np.abs(_open_clip_reference(data, size) - ours.astype(np.float64)).mean()
        assert diff < (1.0 if size == 64 else 0.5), (size, diff)


def test_fast_decode_trades_a_little_fidelity(photo: bytes) -> None:
    exact = decode_image(photo, 64).array
    fast = decode_image(photo, 64, fast=True).array
    assert exact is not None and fast is not None
    ref = _open_clip_reference(photo, 64)
    assert np.abs(ref - exact).mean() < np.abs(ref - fast).mean() < 6


def test_decode_chunk_stacks_successes_and_keeps_order(photo: bytes) -> None:
    stack, meta = decode_chunk([photo, b"", None, photo], 32)
    assert stack.shape == (2, 32, 32, 3)
    assert [m[0] for m in meta] == [0, -1, -1, 1]
    assert [m[1] for m in meta] == ["ok", "decode_error", "missing_image", "ok"]

"""The decoder turns every awkward image into a model-ready array or a clear status."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tests.pipeline.bad_images import awkward_images

from vlcurate.pipeline.decode import decode_chunk, decode_image


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


def test_matches_open_clip_transform_on_png(photo: bytes) -> None:
    """On a lossless image our resize+crop equals open_clip's eval transform (up to rounding)."""
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    img = Image.open(io.BytesIO(photo)).convert("RGB")
    png = io.BytesIO()
    img.save(png, "PNG")
    ours = decode_image(png.getvalue(), 224).array
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    theirs = pre(img)  # normalised tensor; undo the normalisation
    mean = np.array(pre.transforms[-1].mean).reshape(3, 1, 1)
    std = np.array(pre.transforms[-1].std).reshape(3, 1, 1)
    back = ((theirs.numpy() * std + mean) * 255).transpose(1, 2, 0)
    assert ours is not None
    assert np.abs(back - ours.astype(np.float64)).mean() < 1.5


def test_jpeg_fast_path_close_to_pillow(photo: bytes) -> None:
    fast = decode_image(photo, 224).array
    pil = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    ref = decode_image(Image.fromarray(pil).tobytes() and _png(pil), 224).array
    assert fast is not None and ref is not None
    assert np.abs(fast.astype(int) - ref.astype(int)).mean() < 6


def _png(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


def test_decode_chunk_stacks_successes_and_keeps_order(photo: bytes) -> None:
    stack, meta = decode_chunk([photo, b"", None, photo], 32)
    assert stack.shape == (2, 32, 32, 3)
    assert [m[0] for m in meta] == [0, -1, -1, 1]
    assert [m[1] for m in meta] == ["ok", "decode_error", "missing_image", "ok"]

"""The image tools: copies of a reference set (COCO photos, planted resized/re-encoded/cropped), the
operators on their own, SSIM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.base.ssim import ssim
from vlcurate.dedup.reference import ReferenceIndex
from vlcurate.ops.builder_ops import (
    Enhance,
    EnhanceParams,
    InfoParams,
    LowInformation,
    ReferenceDedup,
    ReferenceParams,
)


def _jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def planted_copies(path: Path) -> dict[str, bytes]:
    """A resized, a re-encoded, a slightly cropped and a cropped-and-resized copy of one photo."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    return {
        "resized": _jpeg(im.resize((w // 2, h // 2))),
        "reencoded": _jpeg(im, 40),
        "cropped": _jpeg(im.crop((int(w * 0.05), int(h * 0.07), int(w * 0.97), int(h * 0.95)))),
        "crop+resize": _jpeg(im.crop((int(w * 0.1), int(h * 0.1), w, h)).resize((300, 240))),
    }


def test_every_planted_copy_of_a_test_photo_is_caught_and_no_other_photo(coco_dir: Path) -> None:
    test = sorted((coco_dir / "val2017").glob("*.jpg"))[:25]
    index = ReferenceIndex()
    for f in test:
        index.add(f.name, f.read_bytes())
    missed = []
    for f in test:
        assert index.match(f.read_bytes()) is not None  # the same bytes
        for kind, data in planted_copies(f).items():
            m = index.match(data)
            if m is None or m.ref != f.name:
                missed.append((f.name, kind))
    assert not missed
    others = (
        sorted((coco_dir / "train2017").glob("*.jpg"))[:40]
        + sorted((coco_dir / "val2017").glob("*.jpg"))[25:45]
    )
    assert [f.name for f in others if index.match(f.read_bytes())] == []


def test_reference_dedup_operator_on_its_own(coco_dir: Path, tmp_path: Path) -> None:
    ref = tmp_path / "test_split"
    ref.mkdir()
    photos = sorted((coco_dir / "val2017").glob("*.jpg"))
    for f in photos[:3]:
        (ref / f.name).write_bytes(f.read_bytes())
    copy = planted_copies(photos[0])["cropped"]
    batch = pa.table(
        {"uid": ["a", "b", "c"], "image": [copy, photos[10].read_bytes(), photos[1].read_bytes()]}
    )
    out = ReferenceDedup(ReferenceParams(reference=[str(ref)])).process(batch)
    assert out.column("keep").to_pylist() == [False, True, False]
    assert out.column("reference_match").to_pylist()[1] is None
    assert "copy of" in out.column("reason").to_pylist()[0]


def test_low_information_and_enhance_record_ssim() -> None:
    flat = Image.new("RGB", (64, 64), (90, 90, 90))
    rng = np.random.default_rng(0)
    noisy = Image.fromarray((rng.normal(128, 20, (64, 64, 3)).clip(0, 255)).astype(np.uint8))
    dot = flat.copy()
    dot.paste((40, 165, 55), (20, 20, 36, 36))  # a green square as bright as the grey: colour spread counts
    batch = pa.table({"uid": ["flat", "noisy", "dot"], "image": [_jpeg(flat), _jpeg(noisy), _jpeg(dot)]})
    out = LowInformation(InfoParams()).process(batch)
    assert out.column("keep").to_pylist() == [False, True, True]
    enh = Enhance(EnhanceParams(denoise=True, contrast=True, max_side=32)).process(batch)
    scores = enh.column("ssim_to_original").to_pylist()
    assert all(0 < s <= 1 for s in scores)
    assert Image.open(io.BytesIO(enh.column("image").to_pylist()[1])).size == (32, 32)
    assert ssim(noisy, noisy) == 1.0 and ssim(noisy, flat) < 0.5

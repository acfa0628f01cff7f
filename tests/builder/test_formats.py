"""Formats: every writer reads back what it wrote; corrupt datasets are refused clearly; COCO-mini reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.builder.conftest import scene_of

from vlcurate.builder.formats import (
    Ann,
    Dataset,
    FormatError,
    Item,
    _decode_compressed,
    mask_to_rle,
    read_dataset,
    rle_to_mask,
    write_dataset,
)
from vlcurate.synth.vocab import SHAPES


def _synthetic(n: int = 12) -> Dataset:
    items = []
    for i in range(n):
        s = scene_of(str(i), single=False)
        anns = [Ann(SHAPES[o.label], o.bbox, s.masks[k]) for k, o in enumerate(s.objects)]
        items.append(
            Item(f"{i:05d}.png", "test" if i % 4 == 0 else "train", 64, 64, anns, data=s.encode("png"))
        )
    return Dataset(list(SHAPES), items)


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc", "hf"])
def test_detection_formats_round_trip(tmp_path: Path, fmt: str) -> None:
    ds = _synthetic()
    write_dataset(ds, fmt, tmp_path / fmt)
    back = read_dataset(tmp_path / fmt)  # format detected from the layout
    assert back.counts()["per_class"] == ds.counts()["per_class"]
    assert back.counts()["per_split"] == ds.counts()["per_split"]
    by_name = {it.name: it for it in back.items}
    for it in ds.items:
        got = by_name[it.name]
        assert [(a.cls, a.box) for a in got.anns] == [(a.cls, a.box) for a in it.anns] or fmt == "yolo"
        for a, b in zip(it.anns, got.anns, strict=True):
            assert a.cls == b.cls and b.box is not None and a.box is not None
            assert max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) <= 1
            if fmt in ("coco", "hf"):
                assert b.mask is not None and a.mask is not None and np.array_equal(a.mask, b.mask)
            if fmt == "yolo":
                assert b.mask is not None and a.mask is not None
                iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
                assert iou > 0.99


def test_imagefolder_round_trip_and_rle(tmp_path: Path) -> None:
    ds = _synthetic()
    single = Dataset(
        ds.classes, [Item(it.name, it.split, 64, 64, [Ann(it.anns[0].cls)], data=it.data) for it in ds.items]
    )
    write_dataset(single, "imagefolder", tmp_path / "f")
    assert read_dataset(tmp_path / "f", "imagefolder").counts() == single.counts()
    with pytest.raises(FormatError, match="exactly one class per image"):
        write_dataset(ds, "imagefolder", tmp_path / "g")
    m = np.zeros((5, 4), dtype=bool)
    m[0, 0] = m[2:4, 1:3] = True
    assert np.array_equal(rle_to_mask(mask_to_rle(m)), m)
    for counts in ([1, 2, 3, 4], [5, 300, 2, 1, 7000, 40], [0, 64 * 64]):
        assert _decode_compressed(_encode_compressed(counts)) == counts


def _encode_compressed(counts: list[int]) -> str:
    """pycocotools' rleToString, to check the decoder against."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_corrupt_datasets_are_refused_with_their_problems(tmp_path: Path) -> None:
    ds = _synthetic(6)
    write_dataset(ds, "yolo", tmp_path / "y")
    (tmp_path / "y" / "images" / "train" / "00001.png").unlink()  # labels now for an absent image
    (tmp_path / "y" / "labels" / "train" / "00002.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError) as exc:
        read_dataset(tmp_path / "y")
    assert "00001.txt are for an absent image" in str(exc.value) and "unknown class id 9" in str(exc.value)

    write_dataset(ds, "coco", tmp_path / "c")
    ann_file = tmp_path / "c" / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["image_id"] = 12345
    ann_file.write_text(json.dumps(data))
    (tmp_path / "c" / "images" / "train" / data["images"][-1]["file_name"]).unlink()
    with pytest.raises(FormatError) as exc:
        read_dataset(tmp_path / "c")
    msg = str(exc.value)
    assert "unknown category id 99" in msg and "absent image 12345" in msg and "missing image" in msg
    with pytest.raises(FormatError, match="does not exist"):
        read_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a dataset folder"):
        read_dataset(tmp_path / "empty")


def test_coco_mini_reads_and_round_trips_as_yolo(coco_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(coco_dir / "annotations" / "instances_val2017.json", root / "annotations")
    (root / "val2017").symlink_to(coco_dir / "val2017")
    ds = read_dataset(root, masks=False)  # polygon masks are covered on synthetic scenes; photos are slow
    raw = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    assert len(ds.items) == len(raw["images"])
    assert ds.counts()["annotations"] == len(raw["annotations"])
    write_dataset(ds, "yolo", tmp_path / "y")
    back = read_dataset(tmp_path / "y")
    assert back.counts()["images"] == len(ds.items)
    assert back.counts()["per_class"] == ds.counts()["per_class"]

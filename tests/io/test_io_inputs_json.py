"""COCO captions JSON, JSON arrays of records and caption lists: one pair per caption with a
stable uid per (image, caption index), or the first caption only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.base.records import Status, derive_uid
from vlcurate.io.sources import open_source


def _read(spec: Any, **opts: Any) -> list[Any]:
    src = open_source(spec, **opts)
    return [s for shard in src.shards() for s in src.iter_samples(shard)]


@pytest.fixture
def coco_copy(tmp_path: Path, coco_dir: Path) -> Path:
    """COCO's own layout: annotations/captions_val2017.json beside val2017/ (a copy, 12 photos)."""
    doc = json.loads((coco_dir / "annotations" / "captions_val2017.json").read_text())
    images = sorted(doc["images"], key=lambda im: im["file_name"])[:12]
    ids = {im["id"] for im in images}
    doc = {**doc, "images": images, "annotations": [a for a in doc["annotations"] if a["image_id"] in ids]}
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    for im in images:
        shutil.copy(coco_dir / "val2017" / im["file_name"], tmp_path / "coco" / "val2017" / im["file_name"])
    path = tmp_path / "coco" / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_captions_one_pair_per_caption(coco_dir: Path) -> None:
    """The real COCO-mini val captions file, read where it lies: 395 captions of 79 images."""
    path = coco_dir / "annotations" / "captions_val2017.json"
    doc = json.loads(path.read_text())
    src = open_source(str(path))
    [shard] = src.shards()
    assert (shard.kind, shard.name) == ("manifest", "captions_val2017")
    samples = list(src.iter_samples(shard))
    assert len(samples) == len(doc["annotations"]) == 395
    assert len({s.uid for s in samples}) == 395 and len({s.key for s in samples}) == 395
    by_image: dict[int, list[str]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    first = doc["images"][0]
    mine = [s for s in samples if s.meta["image_id"] == first["id"]]
    assert [s.text for s in mine] == by_image[first["id"]]
    stem = first["file_name"].rsplit(".", 1)[0]
    for i, s in enumerate(mine):
        assert s.key == f"{stem}_{i}" and s.meta["caption_index"] == i
        assert s.uid == derive_uid(f"{first['file_name']}#caption={i}", s.text)
        assert s.image_ref == str(coco_dir / "val2017" / first["file_name"])
        assert s.source == f"{path}#annotation={s.meta['annotation_id']}"
        assert s.status is Status.OK and s.image_ext == "jpg"
    assert all(Path(s.image_ref).exists() for s in samples)
    # Stable: a second open gives the same uids in the same order.
    assert [s.uid for s in _read(str(path))] == [s.uid for s in samples]


def test_coco_first_caption_only_and_row_shards(coco_copy: Path) -> None:
    every = _read(str(coco_copy))
    first = _read(str(coco_copy), captions="first")
    assert len(first) == 12 and len(every) > 12
    firsts = {s.uid for s in every if s.meta["caption_index"] == 0}
    assert {s.uid for s in first} == firsts  # caption 0 has the same uid in both modes
    src = open_source(str(coco_copy), rows_per_shard=5)  # rows are images
    names = [s.name for s in src.shards()]
    assert names == [
        "captions_val2017-r000000000-000000005",
        "captions_val2017-r000000005-000000010",
        "captions_val2017-r000000010-000000012",
    ]
    sharded = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert [(s.uid, s.key, s.text) for s in sharded] == [(s.uid, s.key, s.text) for s in every]
    with pytest.raises(ValueError, match="captions must be one of all, first"):
        open_source(str(coco_copy), captions="some")


def test_coco_image_root_and_missing_folder(coco_copy: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(str(coco_copy.parent.parent / "val2017"), moved)
    # No split folder beside annotations/: the images' coco_url is used.
    s = _read(str(coco_copy), captions="first")
    assert all(x.image_ref.startswith("http://images.cocodataset.org/val2017/") for x in s)
    s2 = _read(str(coco_copy), captions="first", image_root=str(moved))
    assert all(Path(x.image_ref).exists() and x.image_ref.startswith(str(moved)) for x in s2)
    assert [x.uid for x in s2] == [x.uid for x in s]  # the uid names the file as written, not where


def test_json_object_that_is_not_coco(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"data": [1, 2]}))
    src = open_source(str(tmp_path / "x.json"))
    with pytest.raises(Exception, match=r"must be COCO captions .*found keys \['data'\]"):
        list(src.iter_samples(src.shards()[0]))


def test_json_array_of_records(tmp_path: Path, coco_pairs: list[Any]) -> None:
    (tmp_path / "imgs").mkdir()
    recs: list[Any] = []
    for p in coco_pairs[:6]:
        shutil.copy(p.path, tmp_path / "imgs" / p.path.name)
        recs.append({"image": f"imgs/{p.path.name}", "caption": p.caption})
    recs.insert(3, ["not", "a", "record"])
    (tmp_path / "pairs.json").write_text(json.dumps(recs, indent=1))
    samples = _read(str(tmp_path / "pairs.json"))
    assert len(samples) == 7
    assert samples[3].status is Status.READ_ERROR and "element 3: expected a JSON object" in (
        samples[3].error or ""
    )
    ok = [s for s in samples if s.status is Status.OK]
    assert [s.text for s in ok] == [p.caption for p in coco_pairs[:6]]
    assert ok[0].image_ref == str(tmp_path / "imgs" / coco_pairs[0].path.name)
    assert ok[0].uid == derive_uid(f"imgs/{coco_pairs[0].path.name}", coco_pairs[0].caption)
    assert ok[0].source == f"{tmp_path / 'pairs.json'}#row=0" and ok[0].key == "pairs_00000000"
    src = open_source(str(tmp_path / "pairs.json"), rows_per_shard=3)
    assert len(src.shards()) == 3
    again = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert [(s.uid, s.key, s.status) for s in again] == [(s.uid, s.key, s.status) for s in samples]


def test_caption_lists_in_jsonl_and_parquet(tmp_path: Path, coco_dir: Path, coco_pairs: list[Any]) -> None:
    doc = json.loads((coco_dir / "annotations" / "captions_val2017.json").read_text())
    caps: dict[str, list[str]] = {}
    by_id = {im["id"]: im["file_name"] for im in doc["images"]}
    for a in doc["annotations"]:
        caps.setdefault(by_id[a["image_id"]], []).append(a["caption"].strip())
    pairs = [p for p in coco_pairs if p.path.name in caps][:4]
    lines = [{"image": str(p.path), "captions": caps[p.path.name]} for p in pairs]
    lines.append({"image": str(pairs[0].path), "captions": []})
    (tmp_path / "lists.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    every = _read(str(tmp_path / "lists.jsonl"))
    n = sum(len(caps[p.path.name]) for p in pairs)
    assert len(every) == n + 1 and every[-1].status is Status.MISSING_TEXT
    assert len({s.uid for s in every}) == len(every)
    zero = every[: len(caps[pairs[0].path.name])]
    assert [s.text for s in zero] == caps[pairs[0].path.name]
    assert [s.key for s in zero] == [f"lists_00000000_{i}" for i in range(len(zero))]
    assert zero[1].source == f"{tmp_path / 'lists.jsonl'}#row=0&caption=1"
    first = _read(str(tmp_path / "lists.jsonl"), captions="first")
    assert [s.uid for s in first[:4]] == [s.uid for s in every if s.meta.get("caption_index") == 0]
    # The same lists in a Parquet list<string> column.
    table = pa.table(
        {"jpg": [p.path.read_bytes() for p in pairs], "captions": [caps[p.path.name] for p in pairs]}
    )
    pq.write_table(table, tmp_path / "lists.parquet")
    pq_every = _read(str(tmp_path / "lists.parquet"))
    assert [s.text for s in pq_every] == [s.text for s in every[:-1]]
    assert len({s.uid for s in pq_every}) == n
    assert len(_read(str(tmp_path / "lists.parquet"), captions="first")) == 4

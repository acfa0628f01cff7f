"""Parquet, image-folder and CSV/JSONL manifest input through `open_source`, with bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from io_testkit import datacomp_uid

from vlcurate.base.records import Status, derive_uid
from vlcurate.io.sources import ShardReadError, open_source


def _read_all(spec: Any, **opts: Any) -> list[Any]:
    src = open_source(spec, **opts)
    return [s for shard in src.shards() for s in src.iter_samples(shard)]


# --- parquet -------------------------------------------------------------------------------------


def test_parquet_image_bytes_streamed_by_row_group(tmp_path: Path, coco_pairs: list[Any]) -> None:
    pairs = coco_pairs[:10]
    table = pa.table(
        {
            "uid": [datacomp_uid(i) if i % 2 == 0 else None for i in range(10)],
            "jpg": [p.path.read_bytes() for p in pairs],
            "caption": [p.caption for p in pairs],
            "original_width": [p.width for p in pairs],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=3)
    src = open_source(str(tmp_path / "part-0.parquet"), batch_size=2)
    [shard] = src.shards()
    assert (shard.kind, shard.name) == ("parquet", "part-0")
    samples = list(src.iter_samples(shard))
    assert len(samples) == 10
    assert samples[0].uid == datacomp_uid(0)
    assert samples[1].uid == derive_uid(pairs[1].path.read_bytes(), pairs[1].caption)
    assert samples[3].image == pairs[3].path.read_bytes() and samples[3].image_ext == "jpg"
    assert samples[3].text == pairs[3].caption and samples[3].meta["original_width"] == pairs[3].width
    assert samples[4].key == "part-0_00000004"
    assert all(s.status is Status.OK for s in samples)


def test_parquet_hf_image_struct(tmp_path: Path, coco_pairs: list[Any]) -> None:
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": p.path.read_bytes(), "path": p.path.name} for p in coco_pairs[:3]], img_type)
    texts = [p.caption for p in coco_pairs[:3]]
    pq.write_table(pa.table({"image": images, "text": texts}), tmp_path / "hf.parquet")
    samples = _read_all(str(tmp_path / "hf.parquet"))
    assert [s.image for s in samples] == [p.path.read_bytes() for p in coco_pairs[:3]]


def test_parquet_paths_and_urls(tmp_path: Path, coco_pairs: list[Any]) -> None:
    (tmp_path / "imgs").mkdir()
    for p in coco_pairs[:2]:
        (tmp_path / "imgs" / p.path.name).write_bytes(p.path.read_bytes())
    refs = [f"imgs/{p.path.name}" for p in coco_pairs[:2]] + ["http://example.com/a.png", ""]
    pq.write_table(
        pa.table({"url": refs, "text": ["a", "b", "c", "d"], "key": ["k0", "k1", "k2", "k3"]}),
        tmp_path / "refs.parquet",
    )
    samples = _read_all(str(tmp_path / "refs.parquet"))
    assert samples[0].image is None
    assert samples[0].image_ref == str(tmp_path / "imgs" / coco_pairs[0].path.name)
    assert samples[0].uid == derive_uid(refs[0], "a")  # from the reference as written, not the bytes
    assert samples[2].image_ref == "http://example.com/a.png" and samples[2].meta["url"] == refs[2]
    assert samples[2].image_ext == "png"
    assert samples[3].status is Status.MISSING_IMAGE
    assert [s.key for s in samples] == ["k0", "k1", "k2", "k3"]


def test_parquet_explicit_columns(tmp_path: Path, coco_pairs: list[Any]) -> None:
    pq.write_table(
        pa.table({"pic": [coco_pairs[0].path.read_bytes()], "alt": ["an alt text"], "id": [datacomp_uid(9)]}),
        tmp_path / "x.parquet",
    )
    [s] = _read_all(str(tmp_path / "x.parquet"), image_column="pic", text_column="alt", uid_column="id")
    assert (s.uid, s.text, s.image_ext) == (datacomp_uid(9), "an alt text", "jpg")


def test_parquet_wrong_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"foo": [1], "bar": ["x"]}), tmp_path / "wrong.parquet")
    src = open_source(str(tmp_path / "wrong.parquet"))
    with pytest.raises(ShardReadError) as info:
        list(src.iter_samples(src.shards()[0]))
    msg = str(info.value)
    assert "columns found: ['foo', 'bar']" in msg
    assert "image column" in msg and "caption column" in msg and "jpg" in msg and "caption" in msg
    with pytest.raises(ShardReadError, match="'pic'"):
        _read_all(str(tmp_path / "wrong.parquet"), image_column="pic", text_column="bar")


def test_parquet_corrupt_and_missing(tmp_path: Path, coco_pairs: list[Any]) -> None:
    table = pa.table({"jpg": [coco_pairs[0].path.read_bytes()], "text": ["t"]})
    pq.write_table(table, tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 but not really" * 20)
    for name in ("trunc.parquet", "garbage.parquet"):
        with pytest.raises(ShardReadError, match="not a readable parquet file"):
            _read_all(str(tmp_path / name))
    src = open_source(f"{tmp_path}/{{ok,gone}}.parquet")
    assert len(list(src.iter_samples(src.shards()[0]))) == 1
    with pytest.raises(ShardReadError, match=r"shard not found: .*gone\.parquet"):
        list(src.iter_samples(src.shards()[1]))


def test_parquet_in_memory_fs(coco_pairs: list[Any]) -> None:
    with fsspec.open("memory://vlc-pq/a.parquet", "wb") as fh:
        pq.write_table(pa.table({"image": [coco_pairs[0].path.read_bytes()], "text": ["x"]}), fh)
    [s] = _read_all("memory://vlc-pq")
    assert s.image == coco_pairs[0].path.read_bytes()


# --- image folders -------------------------------------------------------------------------------


def _make_folder(root: Path, pairs: list[Any]) -> None:
    for i, p in enumerate(pairs):
        d = root / ("a" if i < 3 else "b")
        d.mkdir(parents=True, exist_ok=True)
        (d / p.path.name).write_bytes(p.path.read_bytes())
        if i != 1:
            (d / p.path.with_suffix(".txt").name).write_text(p.caption + "\n")
    if len(pairs) > 2:
        json_side = root / "a" / pairs[2].path.with_suffix(".json").name
        json_side.write_text(json.dumps({"uid": datacomp_uid(3), "url": "http://x/y.jpg"}))


def test_folder_one_shard_per_directory(tmp_path: Path, coco_pairs: list[Any]) -> None:
    pairs = coco_pairs[:5]
    _make_folder(tmp_path / "photos", pairs)
    src = open_source(str(tmp_path / "photos"))
    assert [s.name for s in src.shards()] == ["photos_a", "photos_b"]
    samples = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert len(samples) == 5
    by_name = {Path(s.meta["path"]).name: s for s in samples}
    s0 = by_name[pairs[0].path.name]
    assert s0.text == pairs[0].caption and s0.image == pairs[0].path.read_bytes() and s0.status is Status.OK
    assert s0.key == f"a/{pairs[0].path.stem}" and s0.image_ext == "jpg"
    assert by_name[pairs[1].path.name].status is Status.MISSING_TEXT
    assert by_name[pairs[2].path.name].uid == datacomp_uid(3)
    assert by_name[pairs[2].path.name].meta["url"] == "http://x/y.jpg"


def test_folder_chunked(tmp_path: Path, coco_pairs: list[Any]) -> None:
    _make_folder(tmp_path / "photos", coco_pairs[:5])
    src = open_source(str(tmp_path / "photos"), files_per_shard=2)
    assert [s.name for s in src.shards()] == ["photos-00000", "photos-00001", "photos-00002"]
    counts = [len(list(src.iter_samples(sh))) for sh in src.shards()]
    assert counts == [2, 2, 1]
    # The same plan on a fresh open: stable names and contents.
    again = open_source(str(tmp_path / "photos"), files_per_shard=2)
    assert [s.key for s in again.iter_samples(again.shards()[1])] == [
        s.key for s in src.iter_samples(src.shards()[1])
    ]
    with pytest.raises(ValueError, match="files_per_shard must be positive"):
        open_source(str(tmp_path / "photos"), files_per_shard=0)


def test_folder_unreadable_image(tmp_path: Path, coco_pairs: list[Any]) -> None:
    _make_folder(tmp_path / "photos", coco_pairs[:2])
    src = open_source(str(tmp_path / "photos"), files_per_shard=10)
    (tmp_path / "photos" / "a" / coco_pairs[0].path.name).unlink()  # vanished after planning
    samples = list(src.iter_samples(src.shards()[0]))
    assert samples[0].status is Status.READ_ERROR and "cannot read" in (samples[0].error or "")
    assert samples[1].status is Status.MISSING_TEXT


# --- manifests -----------------------------------------------------------------------------------


def test_csv_manifest(tmp_path: Path, coco_pairs: list[Any]) -> None:
    rows = [
        {"image_path": str(coco_pairs[0].path), "caption": coco_pairs[0].caption, "uid": datacomp_uid(0)},
        {"image_path": "rel/x.jpg", "caption": "relative", "uid": ""},
        {"image_path": "https://example.com/p.webp", "caption": "", "uid": "zzz"},
        {"image_path": "", "caption": "no image", "uid": ""},
    ]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image_path", "caption", "uid"])
        w.writeheader()
        w.writerows(rows)
    [shard] = open_source(str(tmp_path / "m.csv")).shards()
    assert shard.kind == "manifest"
    s = _read_all(str(tmp_path / "m.csv"))
    assert s[0].uid == datacomp_uid(0) and s[0].image_ref == str(coco_pairs[0].path) and s[0].image is None
    assert s[1].image_ref == f"{tmp_path}/rel/x.jpg" and s[1].uid == derive_uid("rel/x.jpg", "relative")
    assert s[2].status is Status.MISSING_TEXT and "malformed uid" in s[2].meta["uid_warning"]
    assert s[2].image_ext == "webp"
    assert s[3].status is Status.MISSING_IMAGE
    assert [x.key for x in s] == [f"m_{i:08d}" for i in range(4)]


def test_jsonl_manifest_with_bad_line(tmp_path: Path, coco_pairs: list[Any]) -> None:
    lines = [
        json.dumps({"url": str(coco_pairs[0].path), "text": "one", "key": "first"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"url": str(coco_pairs[1].path), "text": "two"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n\n")
    s = _read_all(str(tmp_path / "m.jsonl"))
    assert [x.status for x in s] == [Status.OK, Status.READ_ERROR, Status.READ_ERROR, Status.OK]
    assert "line 2: invalid JSON" in (s[1].error or "") and s[0].key == "first"
    assert len({x.uid for x in s}) == 4


def test_manifest_wrong_columns(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("foo\tbar\n1\t2\n")
    with pytest.raises(ShardReadError, match=r"columns found: \['foo', 'bar'\]"):
        _read_all(str(tmp_path / "m.tsv"))

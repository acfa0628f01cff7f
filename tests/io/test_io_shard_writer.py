"""The atomic shard writer: rollover by count and bytes, siblings, and no partial shard on disk."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from vlcurate.io.shard_writer import ShardWriter


def _members(pair: Any) -> list[tuple[str, bytes]]:
    return [("jpg", pair.path.read_bytes()), ("txt", pair.caption.encode())]


def test_rollover_by_count_with_siblings(tmp_path: Path, coco_pairs: list[Any]) -> None:
    with ShardWriter(tmp_path, samples_per_shard=3) as w:
        for i, p in enumerate(coco_pairs[:7]):
            w.write(f"k{i:03d}", _members(p), uid=f"{i:032x}", text=p.caption, cursor={"i": i})
    assert sorted(x.name for x in tmp_path.glob("*.tar")) == ["00000000.tar", "00000001.tar", "00000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    index = pq.read_table(tmp_path / "00000001.parquet").to_pylist()
    expected = [{"uid": f"{i:032x}", "key": f"k{i:03d}", "text": coco_pairs[i].caption} for i in (3, 4, 5)]
    assert index == expected
    stats = json.loads((tmp_path / "00000002_stats.json").read_text())
    assert stats["count"] == 1 and stats["cursor"] == {"i": 6}
    assert stats["bytes"] == (tmp_path / "00000002.tar").stat().st_size
    read = list(wds.WebDataset(str(tmp_path / "00000000.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == ["k000", "k001", "k002"]
    assert read[1]["jpg"] == coco_pairs[1].path.read_bytes()


def test_rollover_by_bytes(tmp_path: Path, coco_pairs: list[Any]) -> None:
    pairs = coco_pairs[:6]
    limit = 250_000
    with ShardWriter(tmp_path, max_shard_bytes=limit) as w:
        for i, p in enumerate(pairs):
            w.write(f"k{i}", _members(p), uid=f"{i:032x}", text=p.caption)
    tars = sorted(tmp_path.glob("*.tar"))
    assert len(tars) > 1
    counts = [json.loads((tmp_path / f"{t.stem}_stats.json").read_text())["count"] for t in tars]
    assert sum(counts) == 6
    for t, n in zip(tars, counts, strict=True):
        # A shard may pass the limit only when a single sample is bigger than it.
        assert t.stat().st_size <= limit + 20_480 or n == 1


def test_partial_shard_never_appears(tmp_path: Path, coco_pairs: list[Any]) -> None:
    w = ShardWriter(tmp_path, samples_per_shard=100)
    w.write("a", _members(coco_pairs[0]), uid="0" * 32, text="x")
    assert not list(tmp_path.glob("*.tar")) and (tmp_path / "00000000.tar.tmp").exists()
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "b", samples_per_shard=100) as w2:
        w2.write("a", _members(coco_pairs[0]), uid="0" * 32, text="x")
        raise RuntimeError("crash")
    assert not list((tmp_path / "b").iterdir() if (tmp_path / "b").exists() else [])
    w.close()
    with tarfile.open(tmp_path / "00000000.tar") as tf:
        assert tf.getnames() == ["a.jpg", "a.txt"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, samples_per_shard=0)
    w = ShardWriter(tmp_path)
    with pytest.raises(ValueError, match="no members"):
        w.write("a", [], uid="0" * 32, text=None)
    assert w.close() == []

"""The pool writer: DataComp-style shards readable by webdataset, consistent with truth.parquet."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from vlcurate.base.records import derive_uid, is_datacomp_uid
from vlcurate.synth.pool import write_pool
from vlcurate.synth.scene import scene_from_seed


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    write_pool(out, 45, corrupt_fraction=0.4, seed=7, shard_size=20)
    return out


def test_layout_and_truth_table(pool: Path) -> None:
    shards = sorted(p.name for p in (pool / "shards").iterdir())
    # img2dataset's layout (DataComp's resharder needs the stats), and no temp files left
    assert shards == [f"{i:08d}{ext}" for i in range(3) for ext in (".parquet", ".tar", "_stats.json")]
    stats = [json.loads((pool / "shards" / f"{i:08d}_stats.json").read_text()) for i in range(3)]
    assert [s["successes"] for s in stats] == [20, 20, 5]
    truth = pq.read_table(pool / "truth.parquet")
    assert truth.column_names == [
        "uid",
        "shard",
        "key",
        "caption",
        "true_caption",
        "corrupted",
        "corruption",
        "n_objects",
    ]
    rows = truth.to_pylist()
    assert len(rows) == 45
    assert Counter(r["shard"] for r in rows) == {0: 20, 1: 20, 2: 5}
    assert sum(r["corrupted"] for r in rows) == 18  # round(45 * 0.4)
    assert Counter(r["corruption"] for r in rows if r["corrupted"]).keys() == {
        "wrong_colour",
        "wrong_count",
        "wrong_shape",
        "unrelated",
    }
    assert len({r["uid"] for r in rows}) == 45 and len({r["key"] for r in rows}) == 45
    for i, r in enumerate(rows):
        assert is_datacomp_uid(r["uid"])
        assert r["corrupted"] == (r["corruption"] is not None) == (r["caption"] != r["true_caption"])
        scene = scene_from_seed(7, i)
        assert r["true_caption"] == scene.caption_text and r["n_objects"] == scene.n_objects


def test_webdataset_reads_shards_consistent_with_truth(pool: Path) -> None:
    truth = {r["key"]: r for r in pq.read_table(pool / "truth.parquet").to_pylist()}
    urls = [str(p) for p in sorted((pool / "shards").glob("*.tar"))]
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        assert {"__key__", "jpg", "txt", "json"} <= set(sample)
        key = sample["__key__"]
        meta = json.loads(sample["json"])
        text = sample["txt"].decode("utf-8")
        row = truth[key]
        assert meta == {"uid": row["uid"], "key": key, "caption": text}
        assert text == row["caption"]
        assert derive_uid(sample["jpg"], text) == row["uid"]
        assert Image.open(io.BytesIO(sample["jpg"])).size == (64, 64)
        assert Path(sample["__url__"]).name == f"{row['shard']:08d}.tar"
        seen += 1
    assert seen == 45


def test_same_arguments_same_bytes_and_png(tmp_path: Path) -> None:
    a = write_pool(tmp_path / "a", 12, seed=3, shard_size=5, image_format="png")
    b = write_pool(tmp_path / "b", 12, seed=3, shard_size=5, image_format="png")
    assert a.equals(b)
    for name in ("00000000.tar", "00000001.tar", "00000002.tar"):
        assert (tmp_path / "a/shards" / name).read_bytes() == (tmp_path / "b/shards" / name).read_bytes()
    with tarfile.open(tmp_path / "a/shards/00000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["000000000000.png", "000000000000.txt", "000000000000.json"]
    c = write_pool(tmp_path / "c", 12, seed=4, shard_size=5, image_format="png")
    assert a.column("uid").to_pylist() != c.column("uid").to_pylist()


def test_fraction_extremes(tmp_path: Path) -> None:
    clean = write_pool(tmp_path / "clean", 10, corrupt_fraction=0.0)
    assert not any(clean.column("corrupted").to_pylist())
    dirty = write_pool(tmp_path / "dirty", 10, corrupt_fraction=1.0)
    assert all(dirty.column("corrupted").to_pylist())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 5, "corrupt_fraction": -0.1},
        {"n": 5, "corrupt_fraction": 1.5},
        {"n": 5, "shard_size": 0},
        {"n": 5, "image_format": "gif"},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:  # type: ignore[type-arg]
    n = kwargs.pop("n")
    with pytest.raises(ValueError):
        write_pool(tmp_path, n, **kwargs)

"""Synthetic pools carry img2dataset's `NNNNNNNN_stats.json`, and DataComp's own resharder, given
our `u8,u8` subset, writes the same uids and bytes as `vlcurate reshard`.

The resharder check runs DataComp's `resharder.py` where it is installed: set
`VLCURATE_DATACOMP_RESHARDER` to its path, `VLCURATE_DATACOMP_PYTHON` to an interpreter that can
import it, and optionally `VLCURATE_DATACOMP_PYTHONPATH` (the procedure: docs/datacomp_resharder_check.md).
Otherwise that test is skipped and the pool-layout tests still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlcurate.io.reshard import reshard
from vlcurate.io.sources import open_source
from vlcurate.io.subset import write_subset
from vlcurate.synth.pool import write_pool


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """uid (from each sample's json) -> {suffix: bytes} of one tar."""
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            f = tf.extractfile(m)
            if f is None:
                continue
            key, suffix = m.name.split(".", 1)
            groups.setdefault(key, {})[suffix] = f.read()
    return {json.loads(g["json"])["uid"]: g for g in groups.values()}


def _all_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob("*.tar")):
        out.update(_tar_samples(tar))
    return out


def test_pool_has_img2dataset_stats_beside_each_tar(tmp_path: Path) -> None:
    write_pool(tmp_path / "pool", 45, corrupt_fraction=0.3, seed=5, shard_size=20)
    shards = tmp_path / "pool" / "shards"
    tars = sorted(shards.glob("*.tar"))
    assert [t.name for t in tars] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    for tar in tars:
        stats = json.loads((shards / f"{tar.stem}_stats.json").read_text())
        with tarfile.open(tar) as tf:
            n = len({m.name.split(".", 1)[0] for m in tf})
        # What DataComp's resharder reads: int(stats["successes"]) samples in that shard.
        assert int(stats["successes"]) == stats["count"] == n
        index = pq.read_table(shards / f"{tar.stem}.parquet")
        assert index.num_rows == n and index.column_names == ["uid", "key", "text"]
    # The index parquet beside each tar is not mistaken for img2dataset's (no status column).
    src = open_source(str(shards))
    samples = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert len(samples) == 45 and all(s.status.value == "ok" for s in samples)
    assert samples[0].source == f"{tars[0]}#{samples[0].key}.jpg"


def _subset_uids(pool: Path) -> list[str]:
    truth = pq.read_table(pool / "truth.parquet").to_pylist()
    return [r["uid"] for i, r in enumerate(truth) if i % 3 != 1]


def test_vlcurate_reshard_of_pool_keeps_bytes(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_pool(pool, 30, corrupt_fraction=0.3, seed=2, shard_size=12)
    uids = _subset_uids(pool)
    write_subset(tmp_path / "subset.npy", uids)
    summary = reshard(str(pool / "shards"), tmp_path / "subset.npy", tmp_path / "ours", samples_per_shard=7)
    assert summary["written"] == len(uids)
    ours = _all_samples(tmp_path / "ours")
    source = _all_samples(pool / "shards")
    assert set(ours) == set(uids)
    assert all(ours[u] == source[u] for u in uids)
    for stats in (tmp_path / "ours").glob("[0-9]*_stats.json"):
        assert "successes" in json.loads(stats.read_text())


@pytest.mark.skipif(
    not os.environ.get("VLCURATE_DATACOMP_RESHARDER"),
    reason="DataComp's resharder.py is not installed here (set VLCURATE_DATACOMP_RESHARDER)",
)
def test_datacomp_resharder_writes_same_uids_and_bytes(tmp_path: Path) -> None:
    script = os.environ["VLCURATE_DATACOMP_RESHARDER"]
    python = os.environ.get("VLCURATE_DATACOMP_PYTHON", "python3")
    env = dict(os.environ)
    if os.environ.get("VLCURATE_DATACOMP_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["VLCURATE_DATACOMP_PYTHONPATH"]
    pool = tmp_path / "pool"
    write_pool(pool, 30, corrupt_fraction=0.3, seed=2, shard_size=12)
    uids = _subset_uids(pool)
    write_subset(tmp_path / "subset.npy", uids)
    reshard(str(pool / "shards"), tmp_path / "subset.npy", tmp_path / "ours", samples_per_shard=7)
    (tmp_path / "theirs").mkdir()
    run = subprocess.run(
        [python, script, "-i", str(pool / "shards"), "-o", str(tmp_path / "theirs"), "-s",
         str(tmp_path / "subset.npy"), "-j", "1", "--shard-size", "7"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "missing" not in run.stderr.lower(), run.stderr[-2000:]  # every shard had its stats
    theirs = _all_samples(tmp_path / "theirs")
    ours = _all_samples(tmp_path / "ours")
    assert set(theirs) == set(ours) == set(uids)
    assert all(theirs[u] == ours[u] for u in uids)  # same members, same bytes (keys differ by design)
    counts = [
        json.loads(p.read_text())["successes"]
        for p in sorted((tmp_path / "theirs").glob("[0-9]*_stats.json"))
    ]
    assert sum(counts) == len(uids)


def test_reshard_of_pool_without_stats_still_reads(tmp_path: Path) -> None:
    """Our reader does not need the stats (DataComp's does): a pool of bare tars is read whole."""
    pool = tmp_path / "pool"
    write_pool(pool, 12, corrupt_fraction=0.0, seed=1, shard_size=5)
    for p in (pool / "shards").glob("[0-9]*_stats.json"):
        p.unlink()
    src = open_source(str(pool / "shards"))
    assert sum(1 for sh in src.shards() for _ in src.iter_samples(sh)) == 12
    with tarfile.open(pool / "shards" / "00000000.tar") as tf:
        first = tf.extractfile(tf.getmembers()[0])
        assert first is not None and first.read()[:3] == b"\xff\xd8\xff"

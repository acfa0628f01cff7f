"""The range-reading tar walker gives exactly the streaming reader's samples, errors and bytes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from vlcurate.base.images import decode_chunk
from vlcurate.base.records import Sample
from vlcurate.io.shards import ShardReadError
from vlcurate.io.tar_ranges import iter_samples_with_ranges, local_ustar_path
from vlcurate.io.wds_reader import iter_wds_samples


def _write(path: Path, coco_pairs: list, n: int, with_uid: bool = True) -> None:
    with wds.TarWriter(str(path)) as w:
        for i in range(n):
            p = coco_pairs[i % len(coco_pairs)]
            item = {"__key__": f"{i:06d}", "jpg": p.path.read_bytes(), "txt": f"{p.caption} {i}"}
            if with_uid:
                item["json"] = json.dumps({"uid": f"{i:032x}"}).encode()
            w.write(item)


def _collect(it) -> tuple[list[tuple[Sample, bytes | None]], str | None]:  # type: ignore[no-untyped-def]
    out: list = []
    try:
        for item in it:
            out.append(item)
    except ShardReadError as exc:
        return out, str(exc)
    return out, None


def _same(url: str) -> None:
    ref, ref_err = _collect(iter_wds_samples(url))
    got, got_err = _collect(iter_samples_with_ranges(url))
    assert got_err == ref_err
    assert len(got) == len(ref)
    for want, (sample, rng) in zip(ref, got, strict=True):
        assert rng is not None and sample.image is None
        assert rng.read() == want.image
        sample.image = want.image
        assert sample == want


@pytest.mark.parametrize("with_uid", [True, False])
def test_same_samples_as_streaming_reader(tmp_path: Path, coco_pairs: list, with_uid: bool) -> None:
    tar = tmp_path / "a.tar"
    _write(tar, coco_pairs, 6, with_uid)
    assert local_ustar_path(str(tar)) == str(tar)
    _same(str(tar))
    _same(f"file://{tar}")


def test_truncated_tars_fail_the_same_way(tmp_path: Path, coco_pairs: list) -> None:
    tar = tmp_path / "a.tar"
    _write(tar, coco_pairs, 5)
    data = tar.read_bytes()
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    jpg = [m for m in members if m.name.endswith(".jpg")][2]
    cuts = {
        "mid_member": jpg.offset_data + 1000,
        "boundary": members[-1].offset_data + -(-members[-1].size // 512) * 512,
        "mid_header": jpg.offset + 100,
    }
    for name, cut in cuts.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(data[:cut])
        _, err = _collect(iter_samples_with_ranges(str(path)))
        assert err is not None and "truncated" in err, name
        _same(str(path))


def test_not_a_tar_and_compressed_go_through_the_streaming_reader(tmp_path: Path, coco_pairs: list) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar" * 100)
    assert local_ustar_path(str(bad)) is None
    with pytest.raises(ShardReadError, match="not a readable tar"):
        list(iter_samples_with_ranges(str(bad)))
    tar = tmp_path / "a.tar"
    _write(tar, coco_pairs, 3)
    gz = tmp_path / "a.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(tar) as src:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m))
    got = list(iter_samples_with_ranges(str(gz)))
    assert len(got) == 3 and all(rng is None and s.image for s, rng in got)


def test_decode_chunk_reads_ranges_and_reports_a_vanished_file(tmp_path: Path, coco_pairs: list) -> None:
    tar = tmp_path / "a.tar"
    _write(tar, coco_pairs, 2)
    ranges = [rng for _, rng in iter_samples_with_ranges(str(tar))]
    stack, meta = decode_chunk(ranges, 32)
    assert stack.shape == (2, 32, 32, 3) and [m[1] for m in meta] == ["ok", "ok"]
    tar.write_bytes(tar.read_bytes()[:1024])  # the file shrank under the job
    stack, meta = decode_chunk(ranges, 32)
    assert len(stack) == 0 and all(m[0] == -1 and m[1] == "read_error" for m in meta)

"""WebDataset tar input through `open_source`: detection, fields, and every bad-input case."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pytest
import webdataset as wds
from io_testkit import coco_sample, datacomp_uid, write_tar

from vlcurate.base.records import Status, derive_uid, is_datacomp_uid
from vlcurate.io.sources import ShardReadError, open_source


def _read_all(spec: Any, **opts: Any) -> list[Any]:
    src = open_source(spec, **opts)
    return [s for shard in src.shards() for s in src.iter_samples(shard)]


def test_reads_img2dataset_shards(wds_shards: Path, coco_pairs: list[Any]) -> None:
    src = open_source(str(wds_shards))
    shards = src.shards()
    assert [s.name for s in shards] == ["00000000", "00000001"]
    assert {s.kind for s in shards} == {"wds"}
    samples = [s for sh in shards for s in src.iter_samples(sh)]
    assert len(samples) == 8
    first = samples[0]
    assert first.uid == datacomp_uid(0)
    assert first.key == "000000000"
    assert first.text == coco_pairs[0].caption
    assert first.image == coco_pairs[0].path.read_bytes()
    assert first.image_ext == "jpg"
    assert first.status is Status.OK
    assert first.meta["url"].endswith(coco_pairs[0].path.name)
    assert first.meta["original_width"] == coco_pairs[0].width
    assert first.meta["json"]["uid"] == datacomp_uid(0)


def test_keys_and_fields_match_webdataset(wds_shards: Path) -> None:
    ours = _read_all(str(wds_shards / "00000000.tar"))
    theirs = list(wds.WebDataset(str(wds_shards / "00000000.tar"), shardshuffle=False))
    assert [s.key for s in ours] == [t["__key__"] for t in theirs]
    assert [s.image for s in ours] == [t["jpg"] for t in theirs]
    assert [s.text for s in ours] == [t["txt"].decode() for t in theirs]


@pytest.mark.parametrize(
    "spec",
    [
        "{dir}",
        "{dir}/*.tar",
        "{dir}/{{00000000..00000001}}.tar",
        "file://{dir}/{{00000000..00000001}}.tar",
        ["{dir}/00000000.tar", "{dir}/00000001.tar"],
    ],
)
def test_spec_forms(wds_shards: Path, spec: Any) -> None:
    spec = [s.format(dir=wds_shards) for s in spec] if isinstance(spec, list) else spec.format(dir=wds_shards)
    src = open_source(spec)
    assert [s.name for s in src.shards()] == ["00000000", "00000001"]
    assert len([x for sh in src.shards() for x in src.iter_samples(sh)]) == 8


def test_memory_filesystem(wds_shards: Path) -> None:
    fs = fsspec.filesystem("memory")
    for name in ("00000000.tar", "00000001.tar"):
        fs.pipe(f"/vlc-mem/{name}", (wds_shards / name).read_bytes())
    src = open_source("memory://vlc-mem/*.tar")
    assert all(s.url.startswith("memory://") for s in src.shards())
    assert len([x for sh in src.shards() for x in src.iter_samples(sh)]) == 8
    assert len(_read_all("memory://vlc-mem/{00000000..00000001}.tar")) == 8


def test_missing_shard_in_brace_pattern(wds_shards: Path) -> None:
    src = open_source(f"{wds_shards}/{{00000000..00000002}}.tar")
    assert len(src.shards()) == 3
    with pytest.raises(ShardReadError, match=r"shard not found: .*00000002\.tar"):
        list(src.iter_samples(src.shards()[2]))


def test_truncated_tar_mid_member(wds_shards: Path, tmp_path: Path) -> None:
    data = (wds_shards / "00000000.tar").read_bytes()
    with tarfile.open(wds_shards / "00000000.tar") as tf:
        third_jpg = [m for m in tf.getmembers() if m.name.endswith(".jpg")][2]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: third_jpg.offset_data + 1000])
    src = open_source(str(cut))
    got = []
    with pytest.raises(ShardReadError, match=r"truncated.* after 2 complete samples"):
        for s in src.iter_samples(src.shards()[0]):
            got.append(s)
    assert [s.uid for s in got] == [datacomp_uid(0), datacomp_uid(1)]


def test_truncated_tar_at_member_boundary(wds_shards: Path, tmp_path: Path) -> None:
    data = (wds_shards / "00000000.tar").read_bytes()
    with tarfile.open(wds_shards / "00000000.tar") as tf:
        last = tf.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: last.offset_data + -(-last.size // 512) * 512])  # no end-of-archive blocks
    src = open_source(str(cut))
    got = []
    with pytest.raises(ShardReadError, match="truncated after 3 complete samples"):
        for s in src.iter_samples(src.shards()[0]):
            got.append(s)
    assert len(got) == 3  # the last sample may miss members, so it is not trusted


def test_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ShardReadError, match="not a readable tar"):
        _read_all(str(bad))


def test_bad_member_groups(tmp_path: Path, coco_pairs: list[Any]) -> None:
    jpg = coco_pairs[0].path.read_bytes()
    jpg2 = coco_pairs[1].path.read_bytes()
    upper_uid = datacomp_uid(2).upper().encode()
    items = [
        ("a_noimage", [("txt", b"a caption"), ("json", json.dumps({"uid": datacomp_uid(1)}).encode())]),
        ("b_notext", [("jpg", jpg)]),
        ("c_emptytext", [("jpg", jpg), ("txt", b"   \n")]),
        ("d_latin1", [("jpg", jpg), ("txt", "caf\xe9 au lait".encode("latin-1"))]),
        ("e_nouid", [("jpg", jpg), ("txt", b"plain"), ("json", b'{"url": "http://x/e.jpg"}')]),
        ("f_baduid", [("jpg", jpg), ("txt", b"plain"), ("json", b'{"uid": "not-a-uid"}')]),
        ("g_badjson", [("jpg", jpg), ("txt", b"plain"), ("json", b"{broken")]),
        ("h_upper", [("JPG", jpg2), ("txt", b"upper"), ("json", b'{"uid": "%s"}' % upper_uid)]),
        ("i_png", [("png", jpg2), ("txt", b"png")]),
    ]
    path = write_tar(tmp_path / "bad.tar", items)
    by_key = {s.key: s for s in _read_all(str(path))}
    assert by_key["a_noimage"].status is Status.MISSING_IMAGE
    assert "no image member" in (by_key["a_noimage"].error or "")
    assert by_key["a_noimage"].uid == datacomp_uid(1)
    assert by_key["b_notext"].status is Status.MISSING_TEXT and by_key["b_notext"].error == "no caption"
    assert by_key["c_emptytext"].status is Status.MISSING_TEXT
    assert by_key["c_emptytext"].error == "empty caption"
    latin = by_key["d_latin1"]
    assert latin.status is Status.OK and latin.text == "caf\ufffd au lait"
    assert "not valid UTF-8" in latin.meta["text_warning"]
    assert by_key["e_nouid"].uid == derive_uid(jpg, "plain")
    assert "uid_warning" not in by_key["e_nouid"].meta
    assert by_key["f_baduid"].uid == derive_uid(jpg, "plain")
    assert "malformed uid" in by_key["f_baduid"].meta["uid_warning"]
    assert "json_warning" in by_key["g_badjson"].meta and is_datacomp_uid(by_key["g_badjson"].uid)
    assert by_key["h_upper"].uid == datacomp_uid(2) and by_key["h_upper"].image == jpg2
    assert by_key["h_upper"].image_ext == "jpg"
    assert by_key["i_png"].image_ext == "png"
    assert all(s.uid for s in by_key.values())


def test_duplicate_uids_are_kept(tmp_path: Path, coco_pairs: list[Any]) -> None:
    items = [coco_sample(coco_pairs[i], f"k{i}", datacomp_uid(5)) for i in range(2)]
    samples = _read_all(str(write_tar(tmp_path / "dup.tar", items)))
    assert [s.uid for s in samples] == [datacomp_uid(5)] * 2
    assert [s.key for s in samples] == ["k0", "k1"]


def test_extra_members_and_dirs_in_keys(tmp_path: Path, coco_pairs: list[Any]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        members = [("sub/x1.jpg", b"\xff\xd8\xffA"), ("sub/x1.seg.png", b"P"), ("sub/x1.txt", b"cap")]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "x.tar").write_bytes(buf.getvalue())
    [s] = _read_all(str(tmp_path / "x.tar"))
    assert s.key == "sub/x1" and s.text == "cap" and s.image == b"\xff\xd8\xffA"


def test_bad_specs(tmp_path: Path, wds_shards: Path) -> None:
    with pytest.raises(ValueError, match="empty input spec"):
        open_source("")
    with pytest.raises(ValueError, match="empty input spec"):
        open_source([])
    with pytest.raises(ValueError, match="matched no files"):
        open_source(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="input not found"):
        open_source(str(tmp_path / "missing.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no input found in folder"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "a.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="mixes kinds"):
        open_source([str(wds_shards / "00000000.tar"), str(tmp_path / "a.parquet")])
    with pytest.raises(ValueError, match="unknown option"):
        open_source(str(wds_shards), text_column="caption")
    with pytest.raises(ValueError, match="unknown input kind"):
        open_source(str(wds_shards), kind="zip")


def test_shard_names_unique_when_stems_clash(tmp_path: Path, coco_pairs: list[Any]) -> None:
    for d in ("a", "b"):
        write_tar(tmp_path / d / "00000000.tar", [coco_sample(coco_pairs[0], "k", None)])
    src = open_source(str(tmp_path / "*" / "*.tar"))
    assert [s.name for s in src.shards()] == ["a_00000000", "b_00000000"]

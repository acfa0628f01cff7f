"""Resharding to a DataComp subset: exact WebDataset copies, other inputs, resume, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from io_testkit import ServerState, coco_sample, datacomp_uid, write_tar
from typer.testing import CliRunner

from vlcurate.io import reshard as reshard_mod
from vlcurate.io.reshard import reshard
from vlcurate.io.sources import open_source
from vlcurate.io.subset import write_subset


def _wds_read(out: Path) -> list[dict[str, Any]]:
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False)) if urls else []


def _strip(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k != "__url__" and k != "__local_path__"}


def test_wds_exact_copy(wds_shards: Path, tmp_path: Path) -> None:
    # An extra member kind must be copied too.
    write_tar(
        wds_shards / "00000002.tar",
        [
            (
                "extra0",
                [
                    ("jpg", b"\xff\xd8\xffX"),
                    ("txt", b"x"),
                    ("json", json.dumps({"uid": datacomp_uid(8)}).encode()),
                    ("seg.png", b"PNGDATA"),
                ],
            )
        ],
    )
    keep = [datacomp_uid(i) for i in (0, 2, 3, 5, 8)] + ["f" * 32]  # the last one is not in the input
    write_subset(tmp_path / "subset.npy", keep)
    out = tmp_path / "out"
    summary = reshard(str(wds_shards), tmp_path / "subset.npy", out, samples_per_shard=2)
    assert summary["seen"] == 9 and summary["written"] == 5 and summary["shards_written"] == 3
    assert summary["subset_not_found"] == 1 and summary["shard_errors"] == [] and summary["duplicates"] == 0
    original = {
        s["__key__"]: _strip(s)
        for s in wds.WebDataset([str(p) for p in sorted(wds_shards.glob("*.tar"))], shardshuffle=False)
    }
    copied = _wds_read(out)
    assert [s["__key__"] for s in copied] == ["000000000", "000000002", "000000003", "000010001", "extra0"]
    for s in copied:
        assert _strip(s) == original[s["__key__"]]  # same keys, suffixes and bytes for every member
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == [
        f"{i:08d}{suffix}" for i in range(3) for suffix in (".parquet", ".tar", "_stats.json")
    ]
    index = pq.read_table(out / "00000000.parquet").column("uid").to_pylist()
    assert index == [datacomp_uid(0), datacomp_uid(2)]
    assert json.loads((out / "_reshard_stats.json").read_text())["written"] == 5
    # img2dataset-style output (tars beside parquets) reads back as WebDataset input.
    assert {s.kind for s in open_source(str(out)).shards()} == {"wds"}


def test_parquet_and_manifest_inputs(tmp_path: Path, coco_pairs: list[Any], http_server: ServerState) -> None:
    pairs = coco_pairs[:4]
    pq.write_table(
        pa.table(
            {
                "uid": [datacomp_uid(i) for i in range(4)],
                "image": [p.path.read_bytes() for p in pairs],
                "text": [p.caption for p in pairs],
            }
        ),
        tmp_path / "in.parquet",
    )
    write_subset(tmp_path / "s.npy", [datacomp_uid(1), datacomp_uid(3)])
    summary = reshard(str(tmp_path / "in.parquet"), tmp_path / "s.npy", tmp_path / "out")
    assert summary["written"] == 2
    [a, b] = _wds_read(tmp_path / "out")
    assert a["__key__"] == "in_00000001" and a["jpg"] == pairs[1].path.read_bytes()
    assert a["txt"].decode() == pairs[1].caption and json.loads(a["json"])["uid"] == datacomp_uid(1)
    assert b["jpg"] == pairs[3].path.read_bytes()

    # A manifest of URLs: images are fetched for the selected rows only; failures are counted.
    names = sorted(http_server.images)
    rows = [
        {"url": f"{http_server.base}/img/{names[0]}", "caption": "ok", "uid": datacomp_uid(20)},
        {"url": f"{http_server.base}/missing.jpg", "caption": "gone", "uid": datacomp_uid(21)},
        {"url": f"{http_server.base}/img/{names[1]}", "caption": "not selected", "uid": datacomp_uid(22)},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    write_subset(tmp_path / "s2.npy", [datacomp_uid(20), datacomp_uid(21)])
    summary = reshard(
        str(tmp_path / "m.jsonl"), tmp_path / "s2.npy", tmp_path / "out2", fetch_options={"retries": 0}
    )
    assert summary["written"] == 1 and summary["not_written"] == {"fetch_error": 1}
    assert f"/img/{names[1]}" not in http_server.hits
    [c] = _wds_read(tmp_path / "out2")
    assert c["jpg"] == http_server.images[names[0]] and json.loads(c["json"])["url"].endswith(names[0])


def test_resume_after_crash_matches_clean_run(
    wds_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = [datacomp_uid(i) for i in range(8) if i != 4]
    write_subset(tmp_path / "s.npy", keep)
    clean = reshard(str(wds_shards), tmp_path / "s.npy", tmp_path / "clean", samples_per_shard=2)

    real_write = reshard_mod.ShardWriter.write
    calls = {"n": 0}

    def crashing_write(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(reshard_mod.ShardWriter, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        reshard(str(wds_shards), tmp_path / "s.npy", tmp_path / "resumed", samples_per_shard=2)
    monkeypatch.setattr(reshard_mod.ShardWriter, "write", real_write)
    out = tmp_path / "resumed"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000000.tar", "00000001.tar"]
    assert not list(out.glob("*.tmp"))
    resumed = reshard(str(wds_shards), tmp_path / "s.npy", out, samples_per_shard=2)
    assert resumed["resumed_after_shards"] == 2 and resumed["shards_written_this_run"] == 2
    for key in ("seen", "written", "shards_written", "subset_not_found", "duplicates"):
        assert resumed[key] == clean[key], key
    assert [_strip(s) for s in _wds_read(out)] == [_strip(s) for s in _wds_read(tmp_path / "clean")]
    again = reshard(str(wds_shards), tmp_path / "s.npy", out, samples_per_shard=2)
    assert again["already_done"] is True and again["written"] == clean["written"]
    with pytest.raises(ValueError, match="other inputs or settings"):
        reshard(str(wds_shards), tmp_path / "s.npy", out, samples_per_shard=3)
    redo = reshard(str(wds_shards), tmp_path / "s.npy", out, samples_per_shard=3, overwrite=True)
    assert redo["shards_written"] == 3 and len(list(out.glob("*.tar"))) == 3


def test_broken_shards_and_duplicates(wds_shards: Path, tmp_path: Path, coco_pairs: list[Any]) -> None:
    data = (wds_shards / "00000001.tar").read_bytes()
    (wds_shards / "00000001.tar").write_bytes(data[: len(data) // 2])
    write_tar(wds_shards / "00000002.tar", [coco_sample(coco_pairs[9], "dup", datacomp_uid(0))])
    write_subset(tmp_path / "s.npy", [datacomp_uid(i) for i in range(8)])
    spec = f"{wds_shards}/{{00000000..00000003}}.tar"  # 00000003 does not exist
    summary = reshard(spec, tmp_path / "s.npy", tmp_path / "out")
    errors = {Path(e["shard"]).name: e["error"] for e in summary["shard_errors"]}
    assert set(errors) == {"00000001.tar", "00000003.tar"}
    assert "truncated" in errors["00000001.tar"] and "shard not found" in errors["00000003.tar"]
    n_from_cut = summary["written"] - 4 - 1
    assert 0 <= n_from_cut < 4  # complete samples before the cut are kept
    assert summary["duplicates"] == 1 and len(_wds_read(tmp_path / "out")) == summary["written"]


def _cli() -> Any:
    from vlcurate.cli.main import app

    return app


def test_cli_reshard(wds_shards: Path, tmp_path: Path) -> None:
    write_subset(tmp_path / "s.npy", [datacomp_uid(i) for i in (1, 6)])
    runner = CliRunner()
    result = runner.invoke(
        _cli(),
        [
            "reshard",
            str(wds_shards),
            "--subset",
            str(tmp_path / "s.npy"),
            "--out",
            str(tmp_path / "out"),
            "--samples-per-shard",
            "1",
            "--max-shard-bytes",
            "1GiB",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "samples written" in result.output and "shards written" in result.output
    assert len(list((tmp_path / "out").glob("*.tar"))) == 2


def test_cli_errors(wds_shards: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    np.save(tmp_path / "bad.npy", np.arange(5))
    cases = [
        (["--subset", str(tmp_path / "bad.npy")], "dtype"),
        (["--subset", str(tmp_path / "absent.npy")], "subset file not found"),
    ]
    for args, needle in cases:
        result = runner.invoke(_cli(), ["reshard", str(wds_shards), *args, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
        assert result.output.strip().count("\n") == 0  # one line
    write_subset(tmp_path / "s.npy", [datacomp_uid(1)])
    result = runner.invoke(
        _cli(),
        [
            "reshard",
            str(tmp_path / "nope" / "*.tar"),
            "--subset",
            str(tmp_path / "s.npy"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "matched no files" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

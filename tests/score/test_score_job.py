"""`vlcurate score` end to end on real photos: outputs, resume after kill -9, bad input, URLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from tests.score.bad_images import awkward_images
from tests.score.shards import write_coco_shards
from typer.testing import CliRunner

from vlcurate.base.records import derive_uid
from vlcurate.cli.main import app
from vlcurate.score.config import ScoreConfig
from vlcurate.score.job import RunMismatchError, score_dataset

runner = CliRunner()


def _read_scores(run: Path) -> list[dict]:
    rows: list[dict] = []
    for p in sorted((run / "scores").glob("*.parquet")):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, coco_pairs: list) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("shards")
    uids = write_coco_shards(d, coco_pairs, n_shards=3, per_shard=20)
    return d, uids


def test_scores_every_pair_with_marker_summary_and_embeddings(shards, tiny_model_dir, tmp_path) -> None:
    d, uids = shards
    cfg = ScoreConfig(
        model=f"local-dir:{tiny_model_dir}", batch_size=16, workers=2, save_embeddings=True, progress=False
    )
    summary = score_dataset(str(d / "{00000000..00000002}.tar"), tmp_path / "run", cfg)
    rows = _read_scores(tmp_path / "run")
    assert sorted(r["uid"] for r in rows) == sorted(uids)  # DataComp uids from the json are kept
    assert all(r["status"] == "ok" and -1.0 <= r["score"] <= 1.0 for r in rows)
    assert all(r["width"] > 0 and r["height"] > 0 and r["text"] for r in rows)
    # every row says where its pair came from: its key and the tar member
    assert all(r["key"] and r["source"].endswith(f".tar#{r['key']}.jpg") for r in rows)
    assert sorted(p.stem for p in (tmp_path / "run" / "done").glob("*.json")) == [
        "00000000",
        "00000001",
        "00000002",
    ]
    assert summary["pairs"] == 60 and summary["counts_by_status"] == {"ok": 60}
    assert summary["shards_done"] == 3 and summary["shards_missing"] == []
    q = summary["score_quantiles"]
    assert q["q05"] <= q["q50"] <= q["q95"]
    assert summary["model"]["fingerprint"] and summary["preprocessing"]["image_size"] == 32
    assert {"torch", "open_clip_torch", "pillow"} <= set(summary["versions"])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["pairs"] == 60
    emb = pq.read_table(tmp_path / "run" / "embeddings" / "00000001.parquet")
    assert emb.num_rows == 20
    img = np.array(emb.column("image_embedding").to_pylist(), dtype=np.float32)
    assert emb.schema.field("image_embedding").type.value_type == "halffloat"
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=0.01)
    # score = cosine of the stored embeddings
    txt = np.array(emb.column("text_embedding").to_pylist(), dtype=np.float32)
    by_uid = {r["uid"]: r["score"] for r in rows}
    cos = (img * txt).sum(1)
    assert np.allclose(cos, [by_uid[u] for u in emb.column("uid").to_pylist()], atol=0.01)


def test_in_process_and_worker_decode_agree(shards, tiny_model_dir, tmp_path) -> None:
    d, _ = shards
    a = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False, precision="fp32")
    b = ScoreConfig(
        model=f"local-dir:{tiny_model_dir}", workers=2, batch_size=7, progress=False, precision="fp32"
    )
    score_dataset(str(d / "00000000.tar"), tmp_path / "a", a)
    score_dataset(str(d / "00000000.tar"), tmp_path / "b", b)
    ra = {r["uid"]: r["score"] for r in _read_scores(tmp_path / "a")}
    rb = {r["uid"]: r["score"] for r in _read_scores(tmp_path / "b")}
    assert ra.keys() == rb.keys()
    assert max(abs(ra[k] - rb[k]) for k in ra) < 1e-5


def test_rerun_skips_done_shards_and_refuses_other_model(shards, tiny_model_dir, tmp_path) -> None:
    d, _ = shards
    cfg = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False)
    score_dataset(str(d), tmp_path / "run", cfg)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "scores").iterdir()}
    again = score_dataset(str(d), tmp_path / "run", cfg)
    assert again["this_run"]["pairs_this_run"] == 0 and again["pairs"] == 60
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "scores").iterdir()} == before
    other = tmp_path / "other-model"
    from tests.conftest import make_tiny_open_clip_dir

    make_tiny_open_clip_dir(other, seed=1)
    with pytest.raises(RunMismatchError):
        score_dataset(str(d), tmp_path / "run", ScoreConfig(model=f"local-dir:{other}", progress=False))


def test_kill_minus_nine_then_rerun_has_no_missing_and_no_duplicate(
    coco_pairs, tiny_model_dir, tmp_path
) -> None:
    d = tmp_path / "shards"
    uids = write_coco_shards(d, coco_pairs, n_shards=12, per_shard=40)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vlcurate.cli.main",
        "score",
        str(d),
        "--out",
        str(run),
        "--model",
        f"local-dir:{tiny_model_dir}",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--quiet",
        "--precision",
        "fp32",
    ]
    killed_after = []
    for delay_markers in (2, 6):  # kill twice, at different points, each time while work is in flight
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (
                len(list((run / "done").glob("*.json"))) >= delay_markers
                if (run / "done").exists()
                else False
            ):
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its decode workers, no chance to clean up
        proc.wait()
        killed_after.append(len(list((run / "done").glob("*.json"))))
    assert killed_after[0] < 12, "the job finished before it could be killed; make the input larger"
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _read_scores(run)
    got = [r["uid"] for r in rows]
    assert len(got) == len(set(got)), "a uid was written twice"
    assert sorted(got) == sorted(uids), "a uid is missing"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pairs"] == 480 and summary["shards_done"] == 12
    assert not list(run.rglob("*.tmp*"))


def test_bad_images_and_captions_get_status_rows_and_the_rest_completes(
    coco_pairs, tiny_model_dir, tmp_path
) -> None:
    photo = coco_pairs[0].path.read_bytes()
    d = tmp_path / "shards"
    d.mkdir()
    expected: dict[str, str] = {}
    with wds.TarWriter(str(d / "00000000.tar")) as w:
        for name, (data, ext, status) in awkward_images(photo).items():
            caption = f"a photo for {name}"
            uid = derive_uid(data, caption)
            w.write({"__key__": name, ext: data, "txt": caption, "json": json.dumps({"uid": uid}).encode()})
            expected[uid] = status
        # a caption that is missing, and one that is not UTF-8
        uid = derive_uid(photo, "")
        w.write({"__key__": "no_caption", "jpg": photo, "json": json.dumps({"uid": uid}).encode()})
        expected[uid] = "missing_text"
    # a truncated tar: its complete samples are scored, the shard is reported as partial
    write_coco_shards(tmp_path / "full", coco_pairs, n_shards=1, per_shard=10)
    full = (tmp_path / "full" / "00000000.tar").read_bytes()
    (d / "00000001.tar").write_bytes(full[: int(len(full) * 0.6)])
    cfg = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=1, progress=False)
    # a brace pattern whose last shard does not exist (a failed download, say)
    spec = str(d / "{00000000..00000002}.tar")
    summary = score_dataset(spec, tmp_path / "run", cfg)
    rows = {r["uid"]: r for r in _read_scores(tmp_path / "run")}
    for uid, status in expected.items():
        assert rows[uid]["status"] == status, (uid, rows[uid])
        if status != "ok":
            assert rows[uid]["score"] is None and rows[uid]["error"]
    truncated_rows = [r for r in rows.values() if r["uid"] not in expected]
    assert 0 < len(truncated_rows) < 10 and all(r["status"] == "ok" for r in truncated_rows)
    assert [p["shard"] for p in summary["partial_shards"]] == ["00000001"]
    failed = summary["this_run"]["failed_shards"]
    assert [f["shard"] for f in failed] == ["00000002"] and "00000002" in failed[0]["error"]
    assert summary["shards_missing"] == ["00000002"]


def test_cli_reports_unknown_model_and_missing_weights_clearly(shards, tmp_path) -> None:
    d, _ = shards
    r = runner.invoke(app, ["score", str(d), "--out", str(tmp_path / "r"), "--model", "no-such-model"])
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["score", str(d), "--out", str(tmp_path / "r2"), "--model", "dfn-b16"])
    assert r.exit_code == 2
    assert "apple/DFN2B-CLIP-ViT-B-16" in r.output and "--allow-download" in r.output
    r = runner.invoke(app, ["score", str(tmp_path / "nothing-here" / "*.tar"), "--out", str(tmp_path / "r3")])
    assert r.exit_code == 2 and "error" in r.output.lower()


def test_cli_scores_with_progress_and_table(shards, tiny_model_dir, tmp_path) -> None:
    d, _ = shards
    r = runner.invoke(
        app,
        [
            "score",
            str(d / "00000000.tar"),
            "--out",
            str(tmp_path / "r"),
            "--model",
            f"local-dir:{tiny_model_dir}",
            "--workers",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "20" in r.output and "pairs/s" in r.output


def test_manifest_of_urls_served_over_http(coco_pairs, tiny_model_dir, tmp_path) -> None:
    """Images given by URL are fetched from a real local HTTP server; a 404 gets its status row."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    lines = ["url,caption"]
    for i, p in enumerate(coco_pairs[:8]):
        (root / f"{i}.jpg").write_bytes(p.path.read_bytes())
        lines.append(f'http://127.0.0.1:{{port}}/{i}.jpg,"{p.caption}"')
    lines.append("http://127.0.0.1:{port}/missing.jpg,a photo that is not there")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("\n".join(line.replace("{port}", str(port)) for line in lines) + "\n")
        cfg = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False, fetch_retries=0)
        summary = score_dataset(str(manifest), tmp_path / "run", cfg)
    finally:
        server.shutdown()
    assert summary["counts_by_status"] == {"fetch_error": 1, "ok": 8}
    rows = _read_scores(tmp_path / "run")
    bad = [r for r in rows if r["status"] == "fetch_error"]
    assert "404" in bad[0]["error"]


def test_bf16_scores_within_a_thousandth_of_fp32(coco_pairs) -> None:
    from vlcurate.base.images import decode_chunk
    from vlcurate.models.device import cpu_supports_bf16
    from vlcurate.models.loader import load_scorer

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    stack, _ = decode_chunk([p.path.read_bytes() for p in coco_pairs[:8]], 224)
    texts = [p.caption for p in coco_pairs[:8]]
    f32 = load_scorer("random:ViT-B-32", precision="fp32").score(stack, texts)
    b16 = load_scorer("random:ViT-B-32", precision="bf16").score(stack, texts)
    assert np.abs(f32 - b16).max() < 0.003


def test_tar_written_by_tarfile_with_extra_members_is_read(tmp_path, coco_pairs, tiny_model_dir) -> None:
    """img2dataset layout with extra members per key (e.g. .json with more fields) scores fine."""
    d = tmp_path / "s"
    d.mkdir()
    import io

    with tarfile.open(d / "00000000.tar", "w") as tf:
        for i, p in enumerate(coco_pairs[:5]):
            for ext, data in (
                ("jpg", p.path.read_bytes()),
                ("txt", p.caption.encode()),
                ("json", json.dumps({"uid": f"{i:032x}", "url": "http://x"}).encode()),
                ("exif", b"{}"),
            ):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    summary = score_dataset(
        str(d), tmp_path / "run", ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False)
    )
    assert summary["counts_by_status"] == {"ok": 5}
    assert sorted(r["uid"] for r in _read_scores(tmp_path / "run")) == [f"{i:032x}" for i in range(5)]


def test_parquet_with_wrong_columns_is_a_failed_shard_and_good_parquet_scores(
    coco_pairs, tiny_model_dir, tmp_path
) -> None:
    import pyarrow as pa

    d = tmp_path / "pq"
    d.mkdir()
    good = pa.table(
        {
            "jpg": [p.path.read_bytes() for p in coco_pairs[:6]],
            "caption": [p.caption for p in coco_pairs[:6]],
        }
    )
    pq.write_table(good, d / "a.parquet")
    pq.write_table(pa.table({"pixels": [b"x"], "label": ["cat"]}), d / "b.parquet")
    cfg = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False)
    summary = score_dataset(str(d), tmp_path / "run", cfg)
    assert summary["counts_by_status"] == {"ok": 6}
    failed = summary["this_run"]["failed_shards"]
    assert [f["shard"] for f in failed] == ["b"]
    assert "pixels" in failed[0]["error"] and "label" in failed[0]["error"]
    uids = [r["uid"] for r in _read_scores(tmp_path / "run")]
    assert uids == [derive_uid(p.path.read_bytes(), p.caption) for p in coco_pairs[:6]]


def test_default_model_is_dfn_and_says_how_to_get_it_offline(shards, tmp_path) -> None:
    d, _ = shards
    r = runner.invoke(app, ["score", str(d), "--out", str(tmp_path / "r")], env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert "dfn-b16" in r.output and "apple/DFN2B-CLIP-ViT-B-16" in r.output and "tiny-synth" in r.output
    assert not (tmp_path / "r" / "scores").exists() or not list((tmp_path / "r" / "scores").iterdir())

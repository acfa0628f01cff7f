"""`vlcurate score` failures a user can retry: a truncated shard is partial (not done) and read again
once its file changes; `--retry-failed` fetches and scores again the failed downloads of finished
shards, rewriting their tables with those rows replaced."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from tests.score.shards import write_coco_shards
from typer.testing import CliRunner

from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app

runner = CliRunner()


def _score(inputs: str, out: Path, model: str, *extra: str) -> tuple[int, str, dict]:
    r = runner.invoke(
        app,
        ["score", inputs, "--out", str(out), "--model", model, "--workers", "0", "-q", *extra],
        env={"COLUMNS": "300"},
    )
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output, json.loads((out / "summary.json").read_text())


def _rows(run: Path) -> list[dict]:
    rows: list[dict] = []
    for p in sorted((run / "scores").glob("*.parquet")):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


def test_truncated_shard_is_partial_and_read_again_when_its_file_changes(
    coco_pairs: list, tiny_model_dir: Path, tmp_path: Path
) -> None:
    uids = write_coco_shards(tmp_path / "full", coco_pairs, n_shards=1, per_shard=10)
    full = (tmp_path / "full" / "00000000.tar").read_bytes()
    shard = tmp_path / "in" / "00000000.tar"
    shard.parent.mkdir()
    shard.write_bytes(full[: int(len(full) * 0.6)])
    model = f"local-dir:{tiny_model_dir}"
    run = tmp_path / "run"

    code, out, summary = _score(str(shard.parent), run, model)
    assert code == EXIT_PARTIAL, out
    first = _rows(run)
    assert 0 < len(first) < 10 and [r["uid"] for r in first] == uids[: len(first)]
    assert summary["shards_done"] == 0 and summary["shards_partial"] == 1
    assert [p["shard"] for p in summary["partial_shards"]] == ["00000000"]
    marker = json.loads((run / "done" / "00000000.json").read_text())
    assert marker["partial"] is True and marker["input_file"]["size"] == shard.stat().st_size
    table_mtime = (run / "scores" / "00000000.parquet").stat().st_mtime_ns

    # unchanged: nothing is read again, and the run is still partial
    code, out, summary = _score(str(shard.parent), run, model)
    assert code == EXIT_PARTIAL, out
    assert summary["this_run"]["pairs_this_run"] == 0 and "partly read" in out
    assert (run / "scores" / "00000000.parquet").stat().st_mtime_ns == table_mtime

    # the whole tar replaces the cut one: the shard is read again and done
    shard.write_bytes(full)
    code, out, summary = _score(str(shard.parent), run, model)
    assert code == 0, out
    assert summary["this_run"]["pairs_this_run"] == 10
    assert [r["uid"] for r in _rows(run)] == uids and all(r["status"] == "ok" for r in _rows(run))
    assert summary["shards_done"] == 1 and summary["partial_shards"] == [] and summary["complete"]
    assert json.loads((run / "done" / "00000000.json").read_text())["partial"] is False


class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; the first request for a `404-*` path is a 404, for a `slow-*` path it stalls."""

    requests: ClassVar[Counter[str]] = Counter()
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.requests[self.path] += 1
            first = self.requests[self.path] == 1
        name = self.path.rsplit("/", 1)[-1]
        if first and name.startswith("404-"):
            self.send_error(404)
            return
        if first and name.startswith("slow-"):
            time.sleep(5.0)  # past the client's deadline
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[tuple[Path, int, Counter[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    _FlakyHandler.requests.clear()

    def handler(*args: object) -> _FlakyHandler:
        return _FlakyHandler(*args, directory=str(root))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, server.server_address[1], _FlakyHandler.requests
    finally:
        server.shutdown()


def test_retry_failed_refetches_transient_failures_and_rewrites_the_table(
    coco_pairs: list, tiny_model_dir: Path, tmp_path: Path, flaky_server: tuple[Path, int, Counter[str]]
) -> None:
    root, port, requests = flaky_server
    names = ["ok-0.jpg", "404-1.jpg", "ok-2.jpg", "slow-3.jpg", "404-4.jpg", "ok-5.jpg"]
    lines = ["url,caption"]
    for i, name in enumerate(names):
        (root / name).write_bytes(coco_pairs[i].path.read_bytes())
        lines.append(f'http://127.0.0.1:{port}/{name},"{coco_pairs[i].caption}"')
    (root / "broken.jpg").write_bytes(b"not an image at all" * 20)  # a decode_error: not retried
    lines.append(f"http://127.0.0.1:{port}/broken.jpg,a photo that cannot be decoded")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    model = f"local-dir:{tiny_model_dir}"
    run = tmp_path / "run"
    opts = ("--fetch-retries", "0", "--fetch-timeout", "2")

    code, out, summary = _score(str(manifest), run, model, *opts)
    assert code == EXIT_PARTIAL, out
    assert summary["counts_by_status"] == {"decode_error": 1, "fetch_error": 3, "ok": 3}
    before = _rows(run)
    errors = sorted(r["error"] for r in before if r["status"] == "fetch_error")
    assert errors == ["HTTP 404", "HTTP 404", "timeout after 2s"], errors

    # a plain re-run does not touch finished shards
    code, out, summary = _score(str(manifest), run, model, *opts)
    assert code == EXIT_PARTIAL and summary["this_run"]["pairs_this_run"] == 0
    assert summary["counts_by_status"]["fetch_error"] == 3

    code, out, summary = _score(str(manifest), run, model, *opts, "--retry-failed")
    assert code == EXIT_PARTIAL, out  # only the undecodable image is left
    assert summary["counts_by_status"] == {"decode_error": 1, "ok": 6}
    assert summary["this_run"]["retried"] == {"shards": 1, "rows": 3, "now_ok": 3}
    assert "1 of 7 pairs have no score (decode_error 1)" in out
    after = _rows(run)
    # same rows in the same order, the failed ones replaced by scores
    assert [r["uid"] for r in after] == [r["uid"] for r in before]
    for b, a in zip(before, after, strict=True):
        if b["status"] == "fetch_error":
            assert a["status"] == "ok" and a["score"] is not None and a["error"] is None
        else:
            assert a == b
    assert requests["/broken.jpg"] == 1 and requests["/ok-0.jpg"] == 1  # not fetched again
    assert requests["/404-1.jpg"] == 2 and requests["/slow-3.jpg"] == 2
    marker = next((run / "done").glob("*.json"))
    m = json.loads(marker.read_text())
    assert m["counts"] == {"ok": 6, "decode_error": 1}
    assert m["retried"]["rows"] == 3 and m["retried"]["now_ok"] == 3
    assert not list(run.rglob("*.tmp*"))

    # nothing transient left: a second retry reads nothing
    code, out, summary = _score(str(manifest), run, model, *opts, "--retry-failed")
    assert code == EXIT_PARTIAL and summary["this_run"]["pairs_this_run"] == 0
    assert summary["this_run"]["retried"]["rows"] == 0
    assert requests["/404-1.jpg"] == 2

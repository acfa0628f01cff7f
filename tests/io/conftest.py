"""Fixtures for the io tests: small real inputs built from COCO photos, and a local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from io_testkit import ServerState, coco_sample, datacomp_uid, make_handler, write_tar


@pytest.fixture
def wds_shards(tmp_path: Path, coco_pairs: list[Any]) -> Path:
    """Two img2dataset-style shards (4 samples each) with DataComp uids, in tmp_path/shards."""
    out = tmp_path / "shards"
    for s in range(2):
        items = [
            coco_sample(coco_pairs[s * 4 + i], f"{s:05d}{i:04d}", datacomp_uid(s * 4 + i)) for i in range(4)
        ]
        write_tar(out / f"{s:08d}.tar", items)
    return out


@pytest.fixture
def http_server(coco_pairs: list[Any]) -> Iterator[ServerState]:
    """A real HTTP server on 127.0.0.1 (random port) in a thread, serving COCO photos."""
    state = ServerState(images={p.path.name: p.path.read_bytes() for p in coco_pairs[:12]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()

"""Collection from a URL list: downloaded with a deadline, each failure counted with its reason."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.builder.conftest import scene_of

from vlcurate.builder.collect import CollectError, read_pool
from vlcurate.builder.demand import parse_request


def test_urls_download_with_timeouts_and_per_url_status(tmp_path: Path) -> None:
    png = scene_of("3", single=True).encode("png")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            elif self.path == "/hang.png":
                time.sleep(3)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    manifest = tmp_path / "urls.csv"
    rows = [f"{base}/ok.png", f"{base}/missing.png", f"{base}/hang.png", f"http://127.0.0.1:{closed}/x.png"]
    manifest.write_text("url,caption\n" + "".join(f"{u},a shape\n" for u in rows))
    spec = parse_request("circles")
    try:
        t0 = time.perf_counter()
        images, report = read_pool([str(manifest)], spec, fetch_timeout=1.0)
        assert time.perf_counter() - t0 < 15
    finally:
        server.shutdown()
    assert [im.data for im in images] == [png] and images[0].source
    assert report.read == 4 and report.unreadable == 3
    text = " ".join(report.errors)
    assert "404" in text and "timeout" in text.lower()
    with pytest.raises(CollectError, match="no usable image"):
        read_pool([str(manifest)], spec.model_copy(update={"licenses": ["cc0"]}), fetch_timeout=1.0)

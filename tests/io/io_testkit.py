"""Helpers shared by the io tests: tar builders from COCO photos and a real local HTTP server."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

Members = list[tuple[str, bytes]]


def datacomp_uid(i: int) -> str:
    """A valid DataComp-style uid, distinct per i."""
    return f"{0xABC0000000000000 + i:016x}{0x1230000000000000 + i * 7:016x}"


def write_tar(path: Path, samples: Sequence[tuple[str, Members]]) -> Path:
    """A WebDataset tar written with plain tarfile (independent of the code under test)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    return path


def coco_sample(pair: Any, key: str, uid: str | None, **json_extra: Any) -> tuple[str, Members]:
    """An img2dataset-like sample: .jpg + .txt + .json."""
    doc = {
        "url": f"http://example.com/{pair.path.name}",
        "key": key,
        "caption": pair.caption,
        "original_width": pair.width,
        "original_height": pair.height,
        **json_extra,
    }
    if uid is not None:
        doc["uid"] = uid
    members = [
        ("jpg", pair.path.read_bytes()),
        ("txt", pair.caption.encode()),
        ("json", json.dumps(doc).encode()),
    ]
    return key, members


@dataclass
class ServerState:
    """What the test HTTP server saw."""

    base: str = ""
    images: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.hits[path] = state.hits.get(path, 0) + 1
                n = state.hits[path]
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._route(path, n)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _route(self, path: str, n: int) -> None:
            parts = path.strip("/").split("/")
            if parts[0] == "img" and parts[-1] in state.images:
                self._send(200, state.images[parts[-1]])
            elif parts[0] == "busy" and parts[-1] in state.images:  # slow enough to overlap
                time.sleep(0.15)
                self._send(200, state.images[parts[-1]])
            elif parts[0] == "slow":
                time.sleep(3)
                self._send(200, b"late")
            elif parts[0] == "flaky" and parts[-1] in state.images:
                if n == 1:
                    self._send(503, b"try again", "text/plain")
                else:
                    self._send(200, state.images[parts[-1]])
            elif parts[0] == "ratelimited":
                self._send(429, b"slow down", "text/plain", Retry_After="0")
            elif parts[0] == "redirect" and parts[-1] in state.images:
                self._send(302, b"", "text/plain", Location=f"/img/{parts[-1]}")
            elif parts[0] == "big":
                self._send(200, b"\xff\xd8\xff" + b"x" * 5000)
            else:
                self._send(404, b"not found", "text/plain")

    return Handler

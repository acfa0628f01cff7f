"""Fetching `image_ref`s: real HTTP on 127.0.0.1 (404, timeout, retry, concurrency bound) and files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import fsspec
from io_testkit import ServerState

from vlcurate.base.records import Sample, Status, derive_uid
from vlcurate.io.fetch import fetch_all, resolve_images


def _ref(ref: str, text: str = "a caption") -> Sample:
    return Sample(uid=derive_uid(ref, text), key=ref.rsplit("/", 1)[-1], text=text, image_ref=ref)


def test_http_ok_404_redirect(http_server: ServerState, coco_pairs: list[Any]) -> None:
    name = coco_pairs[0].path.name
    samples = [
        _ref(f"{http_server.base}/img/{name}"),
        _ref(f"{http_server.base}/nope.jpg"),
        _ref(f"{http_server.base}/redirect/{name}"),
    ]
    out = resolve_images(samples, retries=2, backoff=0.01)
    assert out[0].image == coco_pairs[0].path.read_bytes() and out[0].status is Status.OK
    assert out[0].image_ext == "jpg" and out[0].uid == samples[0].uid
    assert (out[1].status, out[1].error) == (Status.FETCH_ERROR, "HTTP 404")
    assert http_server.hits["/nope.jpg"] == 1  # no retry on 404
    assert out[2].image == coco_pairs[0].path.read_bytes()
    assert samples[0].image is None  # inputs are not mutated


def test_timeout(http_server: ServerState) -> None:
    [out] = resolve_images([_ref(f"{http_server.base}/slow")], timeout=0.3, retries=1, backoff=0.01)
    assert out.status is Status.FETCH_ERROR and out.error == "timeout after 0.3s"
    assert http_server.hits["/slow"] == 2 and out.meta["fetch_attempts"] == 2


def test_flaky_then_ok_and_retry_limits(http_server: ServerState, coco_pairs: list[Any]) -> None:
    name = coco_pairs[1].path.name
    flaky, limited = f"{http_server.base}/flaky/{name}", f"{http_server.base}/ratelimited"
    out = resolve_images([_ref(flaky), _ref(limited)], retries=2, backoff=0.01)
    assert out[0].status is Status.OK and out[0].image == coco_pairs[1].path.read_bytes()
    assert http_server.hits[f"/flaky/{name}"] == 2
    assert (out[1].status, out[1].error) == (Status.FETCH_ERROR, "HTTP 429")
    assert http_server.hits["/ratelimited"] == 3  # 1 + 2 retries
    [no_retry] = resolve_images([_ref(f"{http_server.base}/flaky/{coco_pairs[2].path.name}")], retries=0)
    assert no_retry.error == "HTTP 503"


def test_too_large_and_connect_error(http_server: ServerState) -> None:
    out = resolve_images(
        [_ref(f"{http_server.base}/big"), _ref("http://127.0.0.1:9/x.jpg")],
        max_bytes=1000,
        retries=1,
        backoff=0.01,
    )
    assert out[0].error == "too large (>1000 bytes)"
    assert out[1].status is Status.FETCH_ERROR and out[1].error.startswith("network error: ConnectError")


def test_concurrency_is_bounded(http_server: ServerState) -> None:
    names = sorted(http_server.images)
    samples = [_ref(f"{http_server.base}/busy/{names[i % len(names)]}?n={i}") for i in range(24)]
    out = resolve_images(samples, concurrency=4)
    assert all(s.status is Status.OK for s in out)
    assert 2 <= http_server.max_in_flight <= 4


def test_local_paths_fsspec_and_passthrough(tmp_path: Path, coco_pairs: list[Any]) -> None:
    fsspec.filesystem("memory").pipe("/vlc-fetch/p.png", b"\x89PNG\r\n\x1a\nrest")
    has_bytes = Sample(uid="u" * 32, key="k", text="t", image=b"already")
    broken = Sample(uid="v" * 32, key="k2", text="t", status=Status.MISSING_IMAGE)
    refs = [str(coco_pairs[0].path), "memory://vlc-fetch/p.png", str(tmp_path / "no.jpg")]
    samples = [*map(_ref, refs), has_bytes, broken]
    out = resolve_images(samples)
    assert out[0].image == coco_pairs[0].path.read_bytes() and out[0].image_ext == "jpg"
    assert out[1].image_ext == "png"
    assert out[2].status is Status.FETCH_ERROR and out[2].error.startswith("not found")
    assert out[3] is has_bytes and out[4] is broken
    [big] = resolve_images([_ref(str(coco_pairs[0].path))], max_bytes=10)
    assert big.error == "too large (>10 bytes)"


def test_sync_wrapper_inside_running_loop(coco_pairs: list[Any]) -> None:
    async def main() -> list[Sample]:
        return resolve_images([_ref(str(coco_pairs[0].path))])

    [out] = asyncio.run(main())
    assert out.image == coco_pairs[0].path.read_bytes()
    [out2] = asyncio.run(fetch_all([_ref(str(coco_pairs[0].path))]))
    assert out2.image == out.image

"""Resolving `Sample.image_ref` into image bytes: local paths, fsspec URLs and http(s).

One shared `httpx.AsyncClient`, an `asyncio.Semaphore` bounding requests in flight, a total
deadline per attempt, and retries with exponential backoff for what may pass (connect errors,
timeouts, 429, 5xx) but not for what will not (404 and other 4xx, too large). Every sample comes
back with bytes or with status FETCH_ERROR and a short `error` ("HTTP 404", "timeout after 10s",
"too large (>N bytes)"); nothing raises for one bad URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import httpx
from fsspec.core import url_to_fs

from vlcurate import __version__
from vlcurate.base.aio import run_sync
from vlcurate.base.images import sniff_image_ext
from vlcurate.base.records import Sample, Status
from vlcurate.io.fields import ext_of

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
_CONTENT_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}


class _Retryable(Exception):
    """A failure worth another attempt; `wait` is a server-requested delay (Retry-After)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _Fatal(Exception):
    """A failure that another attempt would repeat."""


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def _get(client: httpx.AsyncClient, url: str, max_bytes: int) -> tuple[bytes, str | None]:
    """One GET, streamed so an oversized body is cut off instead of buffered."""
    async with client.stream("GET", url) as resp:
        code = resp.status_code
        if code == 429 or code >= 500:
            raise _Retryable(f"HTTP {code}", _retry_after(resp.headers.get("retry-after")))
        if code >= 400:
            raise _Fatal(f"HTTP {code}")
        length = resp.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _Fatal(f"too large (>{max_bytes} bytes)")
        buf = bytearray()
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) > max_bytes:
                raise _Fatal(f"too large (>{max_bytes} bytes)")
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        return bytes(buf), _CONTENT_TYPES.get(ctype)


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    sem: asyncio.Semaphore,
    *,
    timeout: float,
    retries: int,
    max_bytes: int,
    backoff: float,
) -> tuple[bytes | None, str | None, str | None, int]:
    """(data, ext from content-type, error, attempts) for one http(s) URL."""
    error = "not fetched"
    for attempt in range(retries + 1):
        wait = backoff * (2**attempt)
        try:
            async with sem:
                data, ext = await asyncio.wait_for(_get(client, url, max_bytes), timeout)
            return data, ext, None, attempt + 1
        except _Fatal as exc:
            return None, None, str(exc), attempt + 1
        except _Retryable as exc:
            error = str(exc)
            if exc.wait is not None:
                wait = min(max(exc.wait, wait), 60.0)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error = f"timeout after {timeout:g}s"
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            error = f"network error: {type(exc).__name__}: {exc}".rstrip(": ")
        except httpx.HTTPError as exc:  # invalid URL, too many redirects, ...
            return None, None, f"{type(exc).__name__}: {exc}", attempt + 1
        if attempt < retries:
            await asyncio.sleep(wait)
    return None, None, error, retries + 1


def read_local(ref: str, max_bytes: int) -> bytes:
    """Read a local path or fsspec URL, refusing files over `max_bytes`."""
    fs, path = url_to_fs(ref)
    size = fs.size(path)
    if size is not None and size > max_bytes:
        raise _Fatal(f"too large (>{max_bytes} bytes)")
    data: bytes = fs.cat_file(path)
    return data


async def _resolve(
    sample: Sample,
    client: httpx.AsyncClient,
    sem: asyncio.Semaphore,
    opts: dict[str, Any],
) -> Sample:
    ref = sample.image_ref
    if sample.image is not None or not ref or sample.status is not Status.OK:
        return sample
    attempts = 1
    ext: str | None = None
    if ref.lower().startswith(("http://", "https://")):
        data, ext, error, attempts = await fetch_url(client, ref, sem, **opts)
    else:
        try:
            async with sem:
                data, error = await asyncio.to_thread(read_local, ref, opts["max_bytes"]), None
        except FileNotFoundError:
            data, error = None, f"not found: {ref}"
        except _Fatal as exc:
            data, error = None, str(exc)
        except (OSError, ValueError) as exc:
            data, error = None, f"{type(exc).__name__}: {exc}"
    meta = {**sample.meta, "fetch_attempts": attempts}
    if data is None:
        return dataclasses.replace(sample, status=Status.FETCH_ERROR, error=error, meta=meta)
    image_ext = sniff_image_ext(data) or ext or sample.image_ext or ext_of(ref) or None
    return dataclasses.replace(sample, image=data, image_ext=image_ext, meta=meta)


async def fetch_all(
    samples: Sequence[Sample],
    *,
    concurrency: int = 32,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backoff: float = 0.5,
    client: httpx.AsyncClient | None = None,
) -> list[Sample]:
    """Resolve every sample's `image_ref` (same order, new Sample objects; inputs are not mutated).

    Samples that already have bytes, or a non-OK status, pass through unchanged. `concurrency`
    bounds requests and reads in flight; `timeout` is the deadline of one attempt (connect to last
    byte); `retries` extra attempts wait `backoff * 2**attempt` seconds (or Retry-After, up to 60 s).
    Give a batch at a time: one task per sample is created up front.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    sem = asyncio.Semaphore(concurrency)
    opts = {"timeout": timeout, "retries": retries, "max_bytes": max_bytes, "backoff": backoff}
    own = client is None
    if client is None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": f"vlcurate/{__version__}"},
        )
    try:
        return list(await asyncio.gather(*(_resolve(s, client, sem, opts) for s in samples)))
    finally:
        if own:
            await client.aclose()


def resolve_images(samples: list[Sample], **opts: Any) -> list[Sample]:
    """Synchronous `fetch_all`; works from plain code and from inside a running event loop. A batch
    with nothing to fetch (every image present, or no reference) comes back as it is, at no cost."""
    if not any(s.image is None and s.image_ref and s.status is Status.OK for s in samples):
        return samples
    return run_sync(fetch_all(samples, **opts))

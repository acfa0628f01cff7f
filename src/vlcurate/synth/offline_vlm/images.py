"""Images from chat messages: data URLs decoded, http(s) URLs fetched, both checked and bounded."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import httpx
import numpy as np

from vlcurate.base.images import decode_image

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*?),(?P<data>.*)$", re.DOTALL
)


class BadRequest(ValueError):
    """A request the server refuses with 400 (message for the client, OpenAI error `code`)."""

    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True)
class LoadedImage:
    """A model-ready image and the hash of its bytes (the cache key)."""

    array: np.ndarray
    key: str


def data_url_bytes(url: str, max_bytes: int) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise BadRequest(
            "image_url is not a valid data URL (expected data:image/...;base64,...)", "invalid_image_url"
        )
    if ";base64" not in (m.group("params") or ""):
        raise BadRequest("only base64 data URLs are supported", "invalid_image_url")
    raw = m.group("data")
    if len(raw) * 3 // 4 > max_bytes:
        raise BadRequest(f"image is larger than the limit of {max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image data URL is not valid base64", "invalid_image") from None


async def fetch_url(client: httpx.AsyncClient, url: str, max_bytes: int, timeout: float) -> bytes:
    try:
        async with client.stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            if r.status_code != 200:
                raise BadRequest(f"fetching the image URL gave HTTP {r.status_code}", "image_fetch_failed")
            chunks, size = [], 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BadRequest(
                        f"image is larger than the limit of {max_bytes} bytes", "image_too_large"
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise BadRequest(
            f"could not fetch the image URL: {type(exc).__name__}: {exc}", "image_fetch_failed"
        ) from None


def decode(data: bytes, size: int) -> LoadedImage:
    d = decode_image(data, size)
    if d.array is None:
        raise BadRequest(f"could not decode the image: {d.error}", "invalid_image")
    return LoadedImage(np.ascontiguousarray(d.array), hashlib.sha256(data).hexdigest())

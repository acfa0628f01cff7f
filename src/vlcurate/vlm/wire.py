"""The wire side of the VLM client: images into message parts, answers out of response bodies.

Pure functions and small pydantic models with no client state, so that what is sent (data URLs,
cache identities) and how an answer is judged (JSON extraction, schema validation, error bodies,
`Retry-After`) can be tested and reused without a server.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from vlcurate.base.images import sniff_image_ext

# Prompt-mode structured output: appended to the prompt, followed by the schema as JSON.
SCHEMA_INSTRUCTION = "Reply with only a JSON object, and no other text, that matches this JSON schema:"
_MIME = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}


# ----------------------------------------------------------------------------- images


class ImageInputError(ValueError):
    """An image that cannot be sent (unknown bytes, missing file, unreachable URL)."""


@dataclass(frozen=True)
class PreparedImage:
    url: str | None  # what goes into the message; None until a remote image is fetched (data_url)
    key: str  # cache identity: sha256 of the bytes, or the URL
    label: str  # for error messages


def _data_url(data: bytes, index: int, origin: str = "bytes") -> PreparedImage:
    if not data:
        raise ImageInputError(f"image {index} ({origin}): empty")
    ext = sniff_image_ext(data)
    if ext not in _MIME:
        raise ImageInputError(
            f"image {index} ({origin}): not a JPEG, PNG, WebP, GIF or BMP image (starts with {data[:8]!r})"
        )
    digest = hashlib.sha256(data).hexdigest()
    url = f"data:{_MIME[ext]};base64,{base64.b64encode(data).decode('ascii')}"
    label = f"image {index} ({origin}, {ext}, {len(data)} bytes, sha256 {digest[:12]})"
    return PreparedImage(url, f"sha256:{digest}", label)


def prepare_image(image: bytes | str, index: int, transport: str) -> PreparedImage:
    """Turn one request image into what is sent; local files are always inlined."""
    if isinstance(image, bytes):
        return _data_url(image, index)
    ref = image.strip()
    low = ref[:8].lower()
    if low.startswith("data:"):
        digest = hashlib.sha256(ref.encode()).hexdigest()
        return PreparedImage(ref, f"sha256:{digest}", f"image {index} (data URL, sha256 {digest[:12]})")
    if low.startswith(("http://", "https://")):
        label = f"image {index} ({ref[:200]})"
        return PreparedImage(ref if transport == "url" else None, f"url:{ref}", label)
    path = Path(ref[7:] if low.startswith("file://") else ref).expanduser()
    if not path.is_file():
        raise ImageInputError(f"image {index}: not a URL and no such file: {ref[:200]}")
    return _data_url(path.read_bytes(), index, origin=str(path))


async def fetch_image(
    http: httpx.AsyncClient, img: PreparedImage, index: int, timeout: float
) -> PreparedImage:
    url = img.key[4:]
    try:
        resp = await http.get(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ImageInputError(f"{img.label}: could not fetch: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise ImageInputError(f"{img.label}: could not fetch: HTTP {resp.status_code}")
    fetched = _data_url(resp.content, index, origin=url[:200])
    return PreparedImage(fetched.url, img.key, img.label)


# ----------------------------------------------------------------------------- structured output


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's text: the whole text, a ```json fence, or embedded."""
    stripped = (text or "").strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`")
        if stripped[:4].lower() == "json":
            stripped = stripped[4:]
        stripped = stripped.strip()
    with contextlib.suppress(ValueError):
        value = json.loads(stripped)
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    start = stripped.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(stripped, start)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
        start = stripped.find("{", start + 1)
    return None


_VALIDATORS: dict[str, Any] = {}


def schema_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for the schema (checked once); raises ValueError for a bad schema."""
    import jsonschema

    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid json_schema: {exc.message}") from exc
        _VALIDATORS[key] = cls(schema)
    return _VALIDATORS[key]


def check_answer(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(parsed object, None) when the text holds a JSON object valid for the schema, else (None, why)."""
    import jsonschema

    obj = extract_json_object(text)
    if obj is None:
        return None, f"answer is not JSON: {text[:120]!r}"
    best = jsonschema.exceptions.best_match(schema_validator(schema).iter_errors(obj))
    if best is not None:
        where = "/".join(str(p) for p in best.absolute_path) or "(root)"
        return None, f"answer does not match the schema at {where}: {best.message[:200]}"
    return obj, None


# ----------------------------------------------------------------------------- wire format


class ChatMessage(BaseModel):
    content: str | list[Any] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage | None = None
    text: str | None = None  # some servers answer in the legacy completions shape
    finish_reason: str | None = None

    def content(self) -> str:
        raw = self.message.content if self.message is not None else self.text
        if isinstance(raw, list):  # content parts
            return "".join(p.get("text", "") for p in raw if isinstance(p, dict))
        return raw or ""


class TokenUsage(BaseModel):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0


class ChatBody(BaseModel):
    choices: list[Choice] = Field(min_length=1)
    usage: TokenUsage | None = None


class Delta(BaseModel):
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta | None = None
    finish_reason: str | None = None


class StreamChunk(BaseModel):
    """One `chat.completion.chunk` of a streamed answer (`stream: true`)."""

    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: TokenUsage | None = None


STREAM_DONE = "[DONE]"


def sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for comments, blank lines and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


@dataclass
class Attempt:
    """What one HTTP attempt gave: a body, or a failure with its kind and whether to retry."""

    body: ChatBody | None = None
    kind: str = "ok"
    message: str = ""
    status: int | None = None
    retryable: bool = False
    overload: bool = False
    retry_after: float | None = None


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    with contextlib.suppress(TypeError, ValueError):
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    return None


def server_message(body: object, fallback: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)[:400]
        if isinstance(err, str):
            return err[:400]
        if "detail" in body:
            return str(body["detail"])[:400]
    if isinstance(body, str) and body:
        return body[:400]
    return fallback[:400]

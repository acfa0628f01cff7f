"""The OpenAI chat-completions request and response shapes this server accepts and returns."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(min_length=1)
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "image_url", "input_text"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content or [] if p.type in ("text", "input_text"))

    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [p.image_url.url for p in self.content if p.type == "image_url" and p.image_url is not None]


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields we read; others (top_p, stop, user, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


_WORD = re.compile(r"\S+")


def count_tokens(text: str) -> int:
    """Tokens are whitespace-separated words (a documented simplification)."""
    return len(_WORD.findall(text or ""))


def truncate_tokens(text: str, limit: int | None) -> tuple[str, bool]:
    """The text cut after `limit` words (whitespace kept as is) and whether it was cut."""
    if limit is None:
        return text, False
    words = list(_WORD.finditer(text))
    if len(words) <= limit:
        return text, False
    return text[: words[limit - 1].end()], True


def stream_pieces(text: str) -> list[str]:
    """The text as streamed deltas: one word each with the whitespace before it; they join to `text`."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[sum(len(p) for p in pieces) :]
    if tail:
        pieces.append(tail)
    return pieces


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event as OpenAI streams them: `data: {json}` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}

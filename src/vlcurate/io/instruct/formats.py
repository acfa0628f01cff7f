"""Trainer formats <-> `InstructSample`: LLaVA JSON, ShareGPT and OpenAI messages (LLaMA-Factory,
ms-swift), as a JSON array or JSONL, and HF datasets Parquet with an `Image` column.

    [{"id": "1", "image": "a.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", ...}]}]
    {"messages": [{"role": "user", "content": "<image>What is this?"}, ...], "images": ["a.jpg"]}

Reading accepts either spelling in any record (so `auto` works on mixed files); writing produces
exactly the requested format. Every field besides id, images and the conversation goes to
`meta` and comes back out at the top level, so a round trip keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from vlcurate.io.instruct.model import IMAGE_TOKEN, ImageData, InstructSample, Message, stable_id

Format = Literal["llava", "sharegpt", "openai", "hf"]
FORMATS: tuple[str, ...] = ("llava", "sharegpt", "openai", "hf")
READ_FORMATS: tuple[str, ...] = ("auto", *FORMATS)

_TO_ROLE = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}
_TO_FROM = {"user": "human", "assistant": "gpt"}


class SampleError(ValueError):
    """One record that is not a valid sample; the message names the sample (file, index, id)."""


def _where(source: str, index: int, rec: object) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    return f"{source} sample {index}" + (f" (id {rid!r})" if rid is not None else "")


def _image_list(value: object, where: str) -> list[ImageData]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[ImageData] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            out.append(ImageData(path=item.strip()))
        elif isinstance(item, dict) and ("bytes" in item or "path" in item):  # HF Image struct
            data, path = item.get("bytes"), item.get("path")
            if data is None and not path:
                raise SampleError(f"{where}: image {i} has neither bytes nor a path")
            out.append(ImageData(path=path or None, data=data))
        else:
            raise SampleError(
                f"{where}: image {i} must be a path string or {{bytes, path}}, got {type(item).__name__}"
            )
    return out


def _content(value: object, where: str, turn: int, found_images: list[ImageData]) -> str:
    """A message's text; OpenAI content parts become text with `<image>` where image parts were."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[str] = []
        for part in value:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise SampleError(f"{where}: message {turn}: content parts must be objects with a 'type'")
            kind = part["type"]
            if kind == "text":
                parts.append(str(part.get("text", "")))
            elif kind in ("image", "image_url"):
                parts.append(IMAGE_TOKEN)
                url = part.get("image_url", part.get("image"))
                url = url.get("url") if isinstance(url, dict) else url
                if isinstance(url, str) and url:
                    found_images.append(ImageData(path=url))
            else:
                raise SampleError(f"{where}: message {turn}: unsupported content part type {kind!r}")
        return "".join(parts)
    raise SampleError(
        f"{where}: message {turn}: content must be a string or a list of parts, got {type(value).__name__}"
    )


def parse_record(rec: object, *, source: str = "<data>", index: int = 0, fmt: str = "auto") -> InstructSample:
    """One record of any supported format as an `InstructSample`; raises `SampleError` naming it."""
    where = _where(source, index, rec)
    if not isinstance(rec, dict):
        raise SampleError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    key = "messages" if fmt == "openai" else "conversations" if fmt in ("llava", "sharegpt") else None
    if key is None:
        key = "messages" if "messages" in rec else "conversations" if "conversations" in rec else None
    if key is None or key not in rec:
        want = f"'{key}'" if key else "'conversations' or 'messages'"
        raise SampleError(f"{where}: no {want} list (format {fmt})")
    turns = rec[key]
    if not isinstance(turns, list) or not turns:
        raise SampleError(f"{where}: '{key}' must be a non-empty list of turns")
    part_images: list[ImageData] = []
    messages: list[Message] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise SampleError(f"{where}: message {t} must be an object, got {type(turn).__name__}")
        role = turn.get("from", turn.get("role"))
        if not isinstance(role, str) or not role:
            raise SampleError(f"{where}: message {t} has no 'from'/'role' string")
        raw = turn["value"] if "value" in turn else turn.get("content")
        text = _content(raw, where, t, part_images)
        messages.append(Message(role=_TO_ROLE.get(role.lower(), role), content=text))
    image_key = "images" if "images" in rec else "image" if "image" in rec else None
    images = _image_list(rec.get(image_key), where) if image_key else part_images
    raw_id = rec.get("id")
    if raw_id is not None and not isinstance(raw_id, str | int):
        raise SampleError(f"{where}: 'id' must be a string or an integer, got {type(raw_id).__name__}")
    if raw_id is None or raw_id == "":
        raw_id = stable_id([i.path for i in images], [m.model_dump() for m in messages])
    meta = {k: v for k, v in rec.items() if k not in ("id", key, image_key)}
    return InstructSample(id=str(raw_id), images=images, messages=messages, meta=meta)


def to_record(sample: InstructSample, fmt: str, image_refs: list[str] | None = None) -> dict[str, Any]:
    """The sample as one record of `fmt` (llava, sharegpt or openai); `image_refs` replace image paths."""
    refs = image_refs if image_refs is not None else [i.path or "" for i in sample.images]
    out: dict[str, Any] = {"id": sample.id}
    if fmt == "llava":
        if refs:
            out["image"] = refs[0] if len(refs) == 1 else list(refs)
        out["conversations"] = [
            {"from": _TO_FROM.get(m.role, m.role), "value": m.content} for m in sample.messages
        ]
    elif fmt == "sharegpt":
        out["conversations"] = [
            {"from": _TO_FROM.get(m.role, m.role), "value": m.content} for m in sample.messages
        ]
        out["images"] = list(refs)
    elif fmt == "openai":
        out["messages"] = [{"role": m.role, "content": m.content} for m in sample.messages]
        out["images"] = list(refs)
    else:
        raise ValueError(f"to_record writes llava, sharegpt or openai, not {fmt!r}")
    return {**out, **{k: v for k, v in sample.meta.items() if k not in out}}


def dumps_records(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """JSON text of an array of records, piece by piece (one element per line) for streaming writes."""
    yield "["
    for i, rec in enumerate(records):
        yield ("\n" if i == 0 else ",\n") + json.dumps(rec, ensure_ascii=False)
    yield "\n]\n"

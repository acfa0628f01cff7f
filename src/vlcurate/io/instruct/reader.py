"""Instruction data as a source for `vlcurate run`: LLaVA / ShareGPT / OpenAI JSON or JSONL, HF Parquet.

Planning scans each file once (bytes only, no JSON decoding) and cuts it into shards of
`samples_per_shard` samples by byte range (JSON array elements, JSONL lines) or row groups
(Parquet), so a big file is read shard by shard, in bounded memory, and a re-run skips the shards
it finished. A JSON array that is truncated or malformed fails at planning with the file, line and
column; everything smaller is per sample: a record that is not a valid sample, placeholders that do
not match the images, or an image that is missing or unreadable becomes a row with keep=False and
its reason, so nothing is silently lost.

Each sample yields a `Sample` whose `meta` carries the extra batch columns (`INSTRUCT_COLUMNS`):
`messages` and `meta` (JSON strings), `image_paths` (JSON list of the image references as written)
and `extra_images` (bytes of images after the first), plus `keep` and `reason`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from PIL import Image, UnidentifiedImageError

from vlcurate.base.records import Sample, Status, derive_uid
from vlcurate.io.fetch import DEFAULT_MAX_BYTES, read_local
from vlcurate.io.instruct.formats import READ_FORMATS, SampleError, parse_record
from vlcurate.io.instruct.hf import iter_hf_rows
from vlcurate.io.instruct.model import USER, InstructSample, strip_placeholders
from vlcurate.io.jsonscan import JsonScanError, array_elements
from vlcurate.io.parquet_reader import resolve_ref
from vlcurate.io.paths import has_protocol, shard_names
from vlcurate.io.rows import file_buffer
from vlcurate.io.shards import ShardReadError, ShardRef

DEFAULT_SAMPLES_PER_SHARD = 10_000
INSTRUCT_COLUMNS: dict[str, pa.DataType] = {
    "messages": pa.string(),
    "meta": pa.string(),
    "image_paths": pa.string(),
    "extra_images": pa.list_(pa.binary()),
    "keep": pa.bool_(),
    "reason": pa.string(),
}
INSTRUCT_OPTIONS = ("format", "image_root", "samples_per_shard")


class InstructFileError(ValueError):
    """A whole file that cannot be read as instruction data; names the file and position."""


@dataclass(frozen=True)
class Chunk:
    """One shard of one file: a byte range (JSON/JSONL) or row groups (Parquet)."""

    url: str
    container: str  # json, jsonl or parquet
    first_index: int
    start: int = 0
    end: int = 0
    row_groups: tuple[int, ...] = ()


def container_of(url: str, fmt: str) -> str:
    low = url.lower().split("?", 1)[0]
    if fmt == "hf" or low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if low.endswith(".json"):
        return "json"
    raise InstructFileError(
        f"{url}: cannot tell the container from the name; instruction data is .json, .jsonl or .parquet"
    )


def _plan_json(url: str, per_shard: int) -> list[Chunk]:
    buf = file_buffer(url, "instruction file")
    starts: list[int] = []
    try:
        for i, (start, _end) in enumerate(array_elements(buf)):
            if i % per_shard == 0:
                starts.append(start)
    except JsonScanError as exc:
        raise InstructFileError(f"{url}: not a valid JSON array: {exc}") from None
    size = len(buf)
    return [
        Chunk(url, "json", k * per_shard, s, starts[k + 1] if k + 1 < len(starts) else size)
        for k, s in enumerate(starts)
    ]


def _plan_jsonl(url: str, per_shard: int) -> list[Chunk]:
    fs, path = url_to_fs(url)
    starts: list[int] = []
    offset = count = 0
    try:
        with fs.open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    if count % per_shard == 0:
                        starts.append(offset)
                    count += 1
                offset += len(line)
    except FileNotFoundError:
        raise ShardReadError(f"instruction file not found: {url}") from None
    return [
        Chunk(url, "jsonl", k * per_shard, s, starts[k + 1] if k + 1 < len(starts) else offset)
        for k, s in enumerate(starts)
    ]


def _plan_parquet(url: str, per_shard: int) -> list[Chunk]:
    try:
        meta = pq.ParquetFile(url).metadata
    except FileNotFoundError:
        raise ShardReadError(f"instruction file not found: {url}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InstructFileError(f"{url}: not a readable Parquet file: {exc}") from None
    chunks: list[Chunk] = []
    groups: list[int] = []
    first = rows = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= per_shard:
            chunks.append(Chunk(url, "parquet", first, row_groups=tuple(groups)))
            first, groups, rows = first + rows, [], 0
    if groups:
        chunks.append(Chunk(url, "parquet", first, row_groups=tuple(groups)))
    return chunks


def plan_instruct(
    files: list[str], fmt: str = "auto", samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
) -> tuple[list[ShardRef], dict[str, Chunk]]:
    """Shards of every file: `NAME` for a file that fits in one shard, else `NAME-00000`, `NAME-00001`..."""
    if fmt not in READ_FORMATS:
        raise ValueError(f"unknown instruct format {fmt!r}; expected one of {', '.join(READ_FORMATS)}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    refs: list[ShardRef] = []
    plan: dict[str, Chunk] = {}
    planners = {"json": _plan_json, "jsonl": _plan_jsonl, "parquet": _plan_parquet}
    for url, stem in zip(files, shard_names(files), strict=True):
        chunks = planners[container_of(url, fmt)](url, samples_per_shard)
        for k, chunk in enumerate(chunks):
            name = stem if len(chunks) == 1 else f"{stem}-{k:05d}"
            refs.append(ShardRef(url, name, "instruct"))
            plan[name] = chunk
    return refs, plan


def _records(chunk: Chunk, fmt: str) -> Iterator[tuple[int, InstructSample | SampleError]]:
    """(index in file, sample or error) for every record of one chunk."""
    if chunk.container == "parquet":
        yield from iter_hf_rows(chunk.url, list(chunk.row_groups), chunk.first_index)
        return
    fmt = "auto" if fmt == "hf" else fmt
    if chunk.container == "json":
        buf = file_buffer(chunk.url, "instruction file")
        elements: Iterator[tuple[int, int]] = array_elements(buf, chunk.start, chunk.end)
        for k, (s, e) in enumerate(elements):
            yield _decode(bytes(buf[s:e]), chunk, chunk.first_index + k, fmt, f"byte {s}")
        return
    fs, path = url_to_fs(chunk.url)
    with fs.open(path, "rb") as fh:
        fh.seek(chunk.start)
        offset, index = chunk.start, chunk.first_index
        while offset < chunk.end:
            line = fh.readline()
            if not line:
                break
            here = offset
            offset += len(line)
            if line.strip():
                yield _decode(line, chunk, index, fmt, f"byte {here}")
                index += 1


def _decode(
    raw: bytes, chunk: Chunk, index: int, fmt: str, at: str
) -> tuple[int, InstructSample | SampleError]:
    try:
        rec = json.loads(raw)
    except ValueError as exc:
        return index, SampleError(f"{chunk.url} sample {index} ({at}): invalid JSON: {exc}")
    try:
        return index, parse_record(rec, source=chunk.url, index=index, fmt=fmt)
    except SampleError as exc:
        return index, exc


def _image_bytes(sample: InstructSample, base: str) -> tuple[list[bytes | None], str | None]:
    """Bytes of every image (embedded, or read from `base`-relative paths) and the first problem."""
    out: list[bytes | None] = []
    problem: str | None = None
    for i, img in enumerate(sample.images):
        data = img.data
        if data is None and img.path:
            ref = (
                img.path
                if has_protocol(img.path) or img.path.startswith("/")
                else resolve_ref(img.path, base)
            )
            if ref.lower().startswith(("http://", "https://")):
                problem = (
                    problem or f"image:remote image {i} ({img.path}) is not fetched by the instruct reader"
                )
            else:
                try:
                    data = read_local(ref, DEFAULT_MAX_BYTES)
                except FileNotFoundError:
                    problem = problem or f"image:missing image {i} ({img.path})"
                except Exception as exc:
                    problem = problem or f"image:unreadable image {i} ({img.path}): {exc}"
        if data is not None and problem is None:
            try:
                Image.open(io.BytesIO(data))  # reads the header only: catches non-images and empty files
            except (UnidentifiedImageError, OSError) as exc:
                problem = f"image:unreadable image {i} ({img.path or 'embedded'}): {type(exc).__name__}"
        out.append(data)
    return out, problem


def iter_instruct_samples(
    shard: ShardRef, chunk: Chunk, fmt: str = "auto", image_root: str | None = None
) -> Iterator[Sample]:
    """The samples of one shard, each carrying the instruct columns in `meta`."""
    base = image_root.rstrip("/") + "/_" if image_root else shard.url  # resolve_ref takes a file's parent
    for index, item in _records(chunk, fmt):
        key_default = f"{shard.name}_{index:08d}"
        if isinstance(item, SampleError):
            yield _error_sample(shard, index, key_default, f"invalid:{item}")
            continue
        images, problem = _image_bytes(item, base)
        problem = problem or (f"invalid:{item.placeholder_error()}" if item.placeholder_error() else None)
        first_user = next((m.content for m in item.messages if m.role == USER), "")
        meta = {
            "messages": json.dumps([m.model_dump() for m in item.messages], ensure_ascii=False),
            "meta": json.dumps(item.meta, ensure_ascii=False, default=str),
            "image_paths": json.dumps([i.path for i in item.images], ensure_ascii=False),
            "extra_images": images[1:],
            "keep": problem is None,
            "reason": problem,
        }
        yield Sample(
            uid=item.uid,
            key=item.id,
            text=strip_placeholders(first_user),
            image=images[0] if images else None,
            meta=meta,
            status=Status.OK if problem is None else Status.READ_ERROR,
            error=problem,
            source=f"{shard.url}#row={index}",
        )


def _error_sample(shard: ShardRef, index: int, key: str, reason: str) -> Sample:
    meta: dict[str, Any] = {
        "messages": None,
        "meta": None,
        "image_paths": None,
        "extra_images": [],
        "keep": False,
        "reason": reason,
    }
    return Sample(
        uid=derive_uid(f"{shard.url}#{index}", None),
        key=key,
        text=None,
        meta=meta,
        status=Status.READ_ERROR,
        error=reason,
        source=f"{shard.url}#row={index}",
    )


@dataclass
class InstructSource:
    """Instruction files cut into shards; `extra_columns` tells the engines what else each row carries."""

    refs: list[ShardRef]
    plan: dict[str, Chunk]
    fmt: str = "auto"
    image_root: str | None = None

    extra_columns = INSTRUCT_COLUMNS

    def shards(self) -> list[ShardRef]:
        return list(self.refs)

    def iter_samples(self, shard: ShardRef) -> Iterator[Sample]:
        return iter_instruct_samples(shard, self.plan[shard.name], self.fmt, self.image_root)


def open_instruct(files: list[str], **options: Any) -> InstructSource:
    """Plan an instruct source from `files` with options format, image_root, samples_per_shard."""
    fmt = str(options.get("format", "auto"))
    per = int(options.get("samples_per_shard", DEFAULT_SAMPLES_PER_SHARD))
    refs, plan = plan_instruct(files, fmt, per)
    root = options.get("image_root")
    if root is not None and not has_protocol(str(root)):
        root = os.path.abspath(str(root))
    return InstructSource(refs, plan, fmt, None if root is None else str(root))

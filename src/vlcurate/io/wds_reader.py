"""Streaming WebDataset tar reader: member groups in tar order, and groups turned into samples.

Groups follow webdataset's rules (key = path up to the first dot of the file name, consecutive
members with the same key form one sample) so keys and extensions survive a reshard exactly.
The tar is read once, front to back, through fsspec; nothing beyond the current sample is held.

Captions come from `.txt`, `.text`, `.caption` (each maybe `.gz`), else a `caption`/`text` field of
the `.json`, or from a `.cls` label through a template and a label map (`WdsOptions`). Beside an
img2dataset output shard `NAME.tar`, its `NAME.parquet` (key, status, url, caption, error_message)
is joined by key, and the rows it lists as failed downloads follow the tar's samples as
FETCH_ERROR samples, so every URL of the input is accounted for.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from vlcurate.base.records import Sample, Status
from vlcurate.io.fields import (
    IMAGE_EXTS,
    JSON_TEXT_KEYS,
    META_KEYS,
    TEXT_EXTS,
    decode_caption,
    make_sample,
)
from vlcurate.io.paths import TAR_SUFFIXES
from vlcurate.io.shards import ShardReadError

_BLOCK = 512


@dataclass(frozen=True)
class TarMember:
    """One regular file of a tar: `name` is `key + "." + suffix` with the suffix's original case."""

    name: str
    suffix: str
    data: bytes
    mtime: float = 0.0
    mode: int = 0o644


@dataclass
class TarGroup:
    """The members of one WebDataset sample, in tar order."""

    key: str
    members: list[TarMember] = field(default_factory=list)

    def by_ext(self) -> dict[str, TarMember]:
        """Members by lower-case suffix (first one wins)."""
        out: dict[str, TarMember] = {}
        for m in self.members:
            out.setdefault(m.suffix.lower(), m)
        return out


def split_key(name: str) -> tuple[str, str] | None:
    """webdataset's `base_plus_ext`: ('dir/key', 'ext.more') or None when the name has no dot."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :]


class _CountingReader:
    """Counts the bytes tarfile pulls from the underlying file, to spot a tar cut at a boundary."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _open(url: str) -> IO[bytes]:
    try:
        fh: IO[bytes] = fsspec.open(url, "rb").open()
        return fh
    except FileNotFoundError as exc:
        raise ShardReadError(f"shard not found: {url}") from exc
    except OSError as exc:
        raise ShardReadError(f"cannot open shard {url}: {exc}") from exc


def iter_tar_groups(url: str) -> Iterator[TarGroup]:
    """Yield the complete member groups of one tar shard, in order.

    Raises ShardReadError for a missing shard, a file that is not a tar, or a truncated tar (after
    yielding every complete group; the group being read when the data ran out is dropped).
    """
    raw = _open(url)
    counter = _CountingReader(raw)
    done = 0
    current: TarGroup | None = None
    last_end = 0
    headers = 0
    reading: str | None = None  # key of the member whose data is being read
    try:
        try:
            tf = tarfile.open(fileobj=counter, mode="r|*")  # type: ignore[call-overload]  # noqa: SIM115
            for info in tf:
                headers += 1
                if info.isreg():
                    parts = split_key(info.name)
                    reading = parts[0] if parts else None
                    fobj = tf.extractfile(info)
                    data = fobj.read() if fobj is not None else b""
                    if len(data) != info.size:
                        raise tarfile.ReadError("unexpected end of data")
                    last_end = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
                    if parts is not None:
                        key, suffix = parts
                        if current is None or key != current.key or suffix.lower() in current.by_ext():
                            if current is not None:
                                yield current
                                done += 1
                            current = TarGroup(key)
                        current.members.append(TarMember(info.name, suffix, data, info.mtime, info.mode))
                    reading = None
                tf.members = []  # tarfile keeps every TarInfo otherwise
            compressed = getattr(getattr(tf, "fileobj", None), "comptype", "tar") != "tar"
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if current is not None and reading is not None and reading != current.key:
                # The data ran out inside the next sample's member: the current one is whole.
                yield current
                done += 1
                current = None
            pending = f"; the incomplete sample {current.key!r} was dropped" if current else ""
            if headers == 0:
                raise ShardReadError(f"{url}: not a readable tar file ({exc})") from exc
            raise ShardReadError(
                f"{url}: tar is truncated or corrupt after {done} complete samples{pending} ({exc})"
            ) from exc
        if not compressed:
            counter.drain()
            if last_end and counter.count < last_end + _BLOCK:
                # Cut exactly at a member boundary: no end-of-archive block. The last group may
                # be missing members, so it is not trusted.
                pending = f"; the possibly incomplete sample {current.key!r} was dropped" if current else ""
                raise ShardReadError(
                    f"{url}: tar is truncated after {done} complete samples (no end-of-archive marker)"
                    f"{pending}"
                )
        if current is not None:
            yield current
    finally:
        raw.close()


@dataclass(frozen=True)
class WdsOptions:
    """How to read captions that are class labels: `template` with `{label}` (the name from
    `label_map`, else the label as written) and `{cls}` (the label as written in `.cls`)."""

    label_template: str | None = None
    label_map: dict[str, str] | None = None

    @property
    def uses_labels(self) -> bool:
        return self.label_template is not None or self.label_map is not None

    def caption_for(self, cls_text: str) -> tuple[str | None, str | None]:
        """(caption, problem) for one `.cls` value."""
        label = cls_text.strip()
        name = label
        if self.label_map is not None:
            found = self.label_map.get(label)
            if found is None:
                return None, f"label {label!r} is not in the label map"
            name = found
        return (self.label_template or "{label}").format(label=name, cls=label), None


def load_label_map(path: str) -> dict[str, str]:
    """A label map: a JSON list (index -> name) or object (label -> name), else a text file with
    one name per line (line 0 is label 0)."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8-sig") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ValueError(f"label map not found: {path}") from None
    if path.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"label map {path} is not valid JSON: {exc}") from None
        if isinstance(doc, list):
            return {str(i): str(v) for i, v in enumerate(doc)}
        if isinstance(doc, dict):
            return {str(k): str(v) for k, v in doc.items()}
        raise ValueError(f"label map {path} must be a JSON list or object, not {type(doc).__name__}")
    return {str(i): line.strip() for i, line in enumerate(text.splitlines())}


def wds_options(label_template: str | None = None, label_map: str | None = None) -> WdsOptions:
    """Checked reader options: the template must format with `{label}`/`{cls}` only."""
    if label_template is not None:
        try:
            label_template.format(label="x", cls="0")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"label_template {label_template!r} is not valid: use {{label}} and {{cls}} ({exc!r})"
            ) from None
    return WdsOptions(label_template, load_label_map(label_map) if label_map else None)


# --- img2dataset's parquet beside each tar ---------------------------------------------------------

I2D_COLUMNS = (
    "key",
    "status",
    "url",
    "caption",
    "error_message",
    "uid",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
)


@dataclass
class Img2DatasetIndex:
    """The rows of an img2dataset shard's `.parquet` by key (url, caption, status, error...)."""

    url: str
    rows: dict[str, dict[str, Any]]
    order: list[str]


def sibling_parquet(tar_url: str) -> str | None:
    low = tar_url.lower()
    for suffix in TAR_SUFFIXES:
        if low.endswith(suffix):
            return tar_url[: -len(suffix)] + ".parquet"
    return None


def load_img2dataset_index(tar_url: str) -> Img2DatasetIndex | None:
    """img2dataset's parquet beside `tar_url`, when there is one with `key` and `status` columns."""
    url = sibling_parquet(tar_url)
    if url is None:
        return None
    try:
        fs, path = url_to_fs(url)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = set(pf.schema_arrow.names)
            if not {"key", "status"} <= names:
                return None  # another index (e.g. `vlcurate reshard`'s uid/key/text)
            table = pf.read(columns=[c for c in I2D_COLUMNS if c in names])
    except (OSError, pa.ArrowException):
        return None  # an unreadable sidecar does not stop the tar from being read
    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for n, row in enumerate(table.to_pylist()):
        key = str(row.get("key"))
        if key not in rows:
            rows[key] = {**row, "_row": n}
            order.append(key)
    return Img2DatasetIndex(url, rows, order)


# --- groups to samples -----------------------------------------------------------------------------


def group_to_sample(
    group: TarGroup,
    shard_url: str,
    options: WdsOptions | None = None,
    extra: dict[str, Any] | None = None,
) -> Sample:
    """A Sample from one member group: image, caption, DataComp uid and json metadata.

    `extra` is this key's row of the img2dataset parquet beside the tar (its url, caption and
    uid fill in what the members lack).
    """
    members = group.by_ext()
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    text_ext = next((e for e in TEXT_EXTS if e in members), None)
    meta: dict[str, Any] = {"shard": shard_url}
    text: str | None = None
    problem: str | None = None
    if options is not None and options.uses_labels:
        if "cls" in members:
            cls_text, warning = decode_caption(members["cls"].data, "cls")
            text, problem = options.caption_for(cls_text)
            meta["label"] = cls_text
        else:
            problem = "no .cls member for the label caption"
    elif text_ext is not None:
        text, warning = decode_caption(members[text_ext].data, text_ext)
        if warning:
            meta["text_warning"] = warning
    raw_uid: object = None
    if "json" in members:
        try:
            doc = json.loads(members["json"].data)
        except (ValueError, UnicodeDecodeError) as exc:
            meta["json_warning"] = f"unreadable json member: {exc}"
        else:
            if isinstance(doc, dict):
                meta["json"] = doc
                raw_uid = doc.get("uid")
                meta.update({k: doc[k] for k in META_KEYS if doc.get(k) is not None})
                if text is None and problem is None:
                    text = next((doc[k] for k in JSON_TEXT_KEYS if isinstance(doc.get(k), str)), None)
            else:
                meta["json_warning"] = f"json member is a {type(doc).__name__}, not an object"
    if extra is not None:
        meta["img2dataset_status"] = extra.get("status")
        meta.update({k: extra[k] for k in META_KEYS if extra.get(k) is not None and k not in meta})
        if text is None and problem is None and isinstance(extra.get("caption"), str):
            text = extra["caption"]
        if raw_uid is None:
            raw_uid = extra.get("uid")
    where = members[image_ext].name if image_ext else group.key
    sample = make_sample(
        key=group.key,
        text=text,
        image=members[image_ext].data if image_ext else None,
        image_ext=image_ext,
        raw_uid=raw_uid,
        meta=meta,
        fallback_ref=f"{shard_url}#{group.key}",
        missing_image_detail=f"no image member (members: {', '.join(sorted(members)) or 'none'})",
        source=f"{shard_url}#{where}",
    )
    if problem is not None and sample.status is Status.MISSING_TEXT:
        sample.error = problem
    return sample


class WdsShardReader:
    """Turns the groups of one tar into samples with the source's options and the img2dataset
    parquet beside it; `leftovers()` then gives that parquet's rows the tar did not hold."""

    def __init__(self, url: str, options: WdsOptions | None = None, *, sidecar: bool = True) -> None:
        self.url = url
        self.options = options
        self.index = load_img2dataset_index(url) if sidecar else None
        self._seen: set[str] = set()

    def sample(self, group: TarGroup) -> Sample:
        extra = None
        if self.index is not None:
            extra = self.index.rows.get(group.key)
            self._seen.add(group.key)
        return group_to_sample(group, self.url, self.options, extra)

    def leftovers(self) -> Iterator[Sample]:
        """Rows of the img2dataset parquet with no sample in the tar: failed downloads as
        FETCH_ERROR (their URL kept as `image_ref`, so they can be fetched again), and rows
        marked downloaded but missing from the tar as READ_ERROR."""
        if self.index is None:
            return
        for key in self.index.order:
            if key in self._seen:
                continue
            row = self.index.rows[key]
            url = row.get("url") or None
            caption = row.get("caption")
            meta = {k: row[k] for k in META_KEYS if row.get(k) is not None}
            meta.update({"shard": self.url, "img2dataset_status": row.get("status"), "row": row["_row"]})
            sample = make_sample(
                key=key,
                text=caption if isinstance(caption, str) else None,
                image_ref=url,
                uid_ref=url,
                raw_uid=row.get("uid"),
                meta=meta,
                fallback_ref=f"{self.url}#{key}",
                source=f"{self.index.url}#row={row['_row']}",
            )
            if row.get("status") == "success":
                sample.status = Status.READ_ERROR
                sample.error = f"listed as downloaded in {self.index.url} but not in the tar"
            else:
                detail = row.get("error_message") or "no error message"
                sample.status = Status.FETCH_ERROR
                sample.error = f"img2dataset {row.get('status')}: {detail}"
            yield sample


def iter_wds_samples(url: str, options: WdsOptions | None = None) -> Iterator[Sample]:
    """Samples of one tar shard (see `iter_tar_groups` for the errors), then the failed rows of
    the img2dataset parquet beside it."""
    reader = WdsShardReader(url, options)
    for group in iter_tar_groups(url):
        yield reader.sample(group)
    yield from reader.leftovers()

"""Streaming WebDataset tar reader: member groups in tar order, and groups turned into samples.

Groups follow webdataset's rules (key = path up to the first dot of the file name, consecutive
members with the same key form one sample) so keys and extensions survive a reshard exactly.
The tar is read once, front to back, through fsspec; nothing beyond the current sample is held.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec

from vlcurate.io.fields import IMAGE_EXTS, META_KEYS, TEXT_EXTS, decode_text, make_sample
from vlcurate.io.shards import ShardReadError
from vlcurate.records import Sample

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


def group_to_sample(group: TarGroup, shard_url: str) -> Sample:
    """A Sample from one member group: image, caption, DataComp uid and json metadata."""
    members = group.by_ext()
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    text_ext = next((e for e in TEXT_EXTS if e in members), None)
    meta: dict[str, Any] = {"shard": shard_url}
    text: str | None = None
    if text_ext is not None:
        text, warning = decode_text(members[text_ext].data)
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
            else:
                meta["json_warning"] = f"json member is a {type(doc).__name__}, not an object"
    return make_sample(
        key=group.key,
        text=text,
        image=members[image_ext].data if image_ext else None,
        image_ext=image_ext,
        raw_uid=raw_uid,
        meta=meta,
        fallback_ref=f"{shard_url}#{group.key}",
        missing_image_detail=f"no image member (members: {', '.join(sorted(members)) or 'none'})",
    )


def iter_wds_samples(url: str) -> Iterator[Sample]:
    """Samples of one tar shard (see `iter_tar_groups` for the errors)."""
    for group in iter_tar_groups(url):
        yield group_to_sample(group, url)

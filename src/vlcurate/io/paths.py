"""Expanding an input spec (path, folder, glob, brace pattern, fsspec URL) into concrete files.

Brace patterns are expanded without listing or stat'ing anything, as webdataset does, so that
`s3://bucket/{00000000..00099999}.tar` costs nothing to open; a missing shard is reported when it
is read. Globs and folders are listed through fsspec.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import fsspec
from braceexpand import braceexpand
from fsspec.core import url_to_fs

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet", ".pq")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")

_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")
_GLOB = re.compile(r"[*?\[]")


def has_protocol(url: str) -> bool:
    """True for `scheme://...` URLs (other than Windows drive letters)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", url))


def _full(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Give a listed path back the protocol of the spec it came from (plain paths stay plain)."""
    return str(fs.unstrip_protocol(path)) if has_protocol(like) else path


def is_dir(url: str) -> bool:
    """Whether `url` names a directory (through fsspec)."""
    fs, path = url_to_fs(url)
    return bool(fs.isdir(path))


def list_files(url: str) -> list[str]:
    """All files under a directory, recursively, sorted (with the spec's protocol)."""
    fs, path = url_to_fs(url)
    return sorted(_full(fs, p, url) for p in fs.find(path))


def expand_spec(spec: str | Sequence[str]) -> list[str]:
    """Concrete inputs for a spec: brace patterns expanded, globs listed, plain paths checked.

    Folders are returned as they are (the caller decides what is inside). Raises ValueError for an
    empty spec, a glob that matches nothing, or a plain path that does not exist.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if isinstance(s, str) and s.strip()]
    if not items:
        raise ValueError("empty input spec: give a path, folder, glob, brace pattern or URL")
    # Plain local paths become absolute, so listings (which fsspec returns absolute) line up.
    items = [s if has_protocol(s) else os.path.abspath(s) for s in items]
    out: list[str] = []
    for item in items:
        if _BRACE.search(item):
            out.extend(braceexpand(item))
        elif _GLOB.search(item.split("://", 1)[-1]):
            fs, path = url_to_fs(item)
            found = sorted(_full(fs, p, item) for p in fs.glob(path) if not fs.isdir(p))
            if not found:
                raise ValueError(f"input pattern {item!r} matched no files")
            out.extend(found)
        else:
            fs, path = url_to_fs(item)
            if not fs.exists(path):
                raise ValueError(f"input not found: {item}")
            out.append(item)
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]


def kind_of_file(url: str) -> str | None:
    """Input kind from a file name: 'wds', 'parquet', 'manifest', or None."""
    low = url.lower().split("?", 1)[0]
    if low.endswith(TAR_SUFFIXES):
        return "wds"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(MANIFEST_SUFFIXES):
        return "manifest"
    return None


def strip_suffix(name: str) -> str:
    """File name without its (possibly double) data-file extension."""
    low = name.lower()
    for suf in (*TAR_SUFFIXES, *PARQUET_SUFFIXES, *MANIFEST_SUFFIXES):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name.rsplit(".", 1)[0] if "." in name else name


def safe_name(text: str) -> str:
    """A filesystem- and webdataset-key-safe stem: letters, digits, '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return cleaned or "shard"


def shard_names(urls: Sequence[str]) -> list[str]:
    """Unique, stable output stems for input files: the file stem, or the path when stems clash."""
    parts = [u.split("://", 1)[-1].rstrip("/").split("/") for u in urls]
    stems = [safe_name(strip_suffix(p[-1])) for p in parts]
    if len(set(stems)) == len(stems):
        return stems
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    names = [safe_name(strip_suffix("_".join(p[common:]))) for p in parts]
    # Still clashing (e.g. a.tar and a.tar.gz): number them in input order.
    if len(set(names)) != len(names):
        names = [f"{n}-{i:05d}" for i, n in enumerate(names)]
    return names

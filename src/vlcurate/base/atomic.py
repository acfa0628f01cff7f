"""The one atomic write: a reader sees the old file or the whole new one, never a part, even after a
crash or a power cut. Data goes to a temporary name beside the target, is fsynced, renamed over the
target, and the directory is fsynced so the rename itself is durable. Every writer uses these."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: Path, suffix: str = "") -> Path:
    """A unique temporary name beside `path` (same filesystem, so the rename is atomic). `suffix`
    keeps a file type for writers that choose a format by extension (`.png`, `.npy`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")


def commit_file(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_with(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> None:
    """Atomically create `path` with `write(tmp_path)`, a writer that takes a file name (pyarrow,
    numpy, matplotlib); the temporary file is removed when `write` fails."""
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """`with atomic_open(p) as f: f.write(...)`: the file appears complete when the block ends, and
    not at all when it raises."""
    path = Path(path)
    tmp = temp_path(path)
    binary = "b" in mode
    try:
        with open(tmp, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=indent, sort_keys=False, default=str)
        f.write("\n")


def write_parquet_atomic(path: str | Path, table: Any, **options: Any) -> None:
    """A pyarrow table as Parquet (zstd unless `compression` says otherwise)."""
    import pyarrow.parquet as pq

    options.setdefault("compression", "zstd")
    write_with(path, lambda tmp: pq.write_table(table, tmp, **options))

"""Atomic WebDataset shard writer with rollover, a sibling Parquet index and per-shard stats.

Each shard is written to `NAME.tar.tmp` and renamed to `NAME.tar` only when complete, after its
`NAME.parquet` (uid, key, text) and `NAME_stats.json` (as img2dataset writes) are in place, so a
`.tar` on disk always means a whole shard with its siblings. A crash leaves only `.tmp` files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pyarrow as pa

from vlcurate.base.atomic import fsync_dir, write_bytes_atomic, write_parquet_atomic

INDEX_SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("text", pa.string())])
_BLOCK = 512


def tar_member_size(n: int) -> int:
    """Bytes one member of `n` data bytes takes in a tar (header + padded data)."""
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


class ShardWriter:
    """Write samples (key + (ext, bytes) members) into `{:08d}.tar` shards in `out_dir`.

    A new shard starts after `samples_per_shard` samples, or before a sample that would push the
    shard past `max_shard_bytes` (a shard always holds at least one sample).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        samples_per_shard: int = 10_000,
        max_shard_bytes: int | None = None,
        start_index: int = 0,
        name_format: str = "{:08d}",
        mtime: float | None = None,
    ) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        if max_shard_bytes is not None and max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.name_format = name_format
        self.mtime = mtime
        self.index = start_index
        self.written: list[dict[str, Any]] = []  # stats of the shards finished by this writer
        self._fh: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None
        self._rows: dict[str, list[str | None]] = {}
        self._count = 0
        self._bytes = 0
        self._last_key: str | None = None
        self._adjacent_dups = 0
        self._cursor: dict[str, Any] | None = None
        self._start = 0.0

    @property
    def name(self) -> str:
        """Stem of the shard being written (or the next one)."""
        return self.name_format.format(self.index)

    def _open(self) -> None:
        self._fh = open(self.out_dir / f"{self.name}.tar.tmp", "wb")  # noqa: SIM115 - closed in _finish
        self._tar = tarfile.open(fileobj=self._fh, mode="w")  # noqa: SIM115
        self._rows = {"uid": [], "key": [], "text": []}
        self._count = self._bytes = self._adjacent_dups = 0
        self._last_key = None
        self._start = time.time()

    def write(
        self,
        key: str,
        members: Sequence[tuple[str, bytes]],
        *,
        uid: str,
        text: str | None,
        cursor: dict[str, Any] | None = None,
    ) -> None:
        """Add one sample: members are (suffix, data), stored as `key.suffix` in the given order.

        `cursor` (any JSON-able dict, e.g. the input position) is saved in the stats of the shard
        holding this sample, so that a resumed job knows where that shard ended.
        """
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        size = sum(tar_member_size(len(d)) for _, d in members)
        if self._tar is not None and (
            self._count >= self.samples_per_shard
            or (self.max_shard_bytes is not None and self._bytes + size > self.max_shard_bytes)
        ):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        mtime = int(time.time() if self.mtime is None else self.mtime)  # int: no pax header per member
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        if key == self._last_key:
            self._adjacent_dups += 1  # webdataset would merge the two samples when reading
        self._last_key = key
        self._rows["uid"].append(uid)
        self._rows["key"].append(key)
        self._rows["text"].append(text)
        self._count += 1
        self._bytes += size
        self._cursor = cursor

    def _finish(self) -> None:
        """Close the current shard and publish it: parquet, stats, then the tar by rename."""
        assert self._tar is not None and self._fh is not None
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        size = self._fh.tell()
        self._fh.close()
        name = self.name
        table = pa.table(self._rows, schema=INDEX_SCHEMA)
        write_parquet_atomic(self.out_dir / f"{name}.parquet", table, compression="snappy")
        end = time.time()
        stats: dict[str, Any] = {
            "name": name,
            "count": self._count,
            "successes": self._count,
            "bytes": size,
            "start_time": self._start,
            "end_time": end,
            "duration": end - self._start,
            "adjacent_duplicate_keys": self._adjacent_dups,
            "cursor": self._cursor,
        }
        write_bytes_atomic(self.out_dir / f"{name}_stats.json", json.dumps(stats, indent=2).encode())
        os.replace(self.out_dir / f"{name}.tar.tmp", self.out_dir / f"{name}.tar")
        fsync_dir(self.out_dir)
        self.written.append(stats)
        self._tar = self._fh = None
        self.index += 1

    def abort(self) -> None:
        """Drop the shard being written (its `.tmp` file); finished shards stay."""
        if self._tar is not None and self._fh is not None:
            self._fh.close()
            (self.out_dir / f"{self.name}.tar.tmp").unlink(missing_ok=True)
        self._tar = self._fh = None

    def close(self) -> list[dict[str, Any]]:
        """Publish the last shard (if it has samples) and return the stats of all shards written."""
        if self._tar is not None:
            self._finish()
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

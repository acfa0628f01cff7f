"""The unit of work every reader agrees on: one input shard, and the error for a shard that breaks.

Kept apart from `sources` so that each reader can import these without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARD_KINDS = ("wds", "parquet", "folder", "manifest", "instruct", "scores")
DEFAULT_ROWS_PER_SHARD = 10_000


@dataclass(frozen=True)
class RowRange:
    """Rows `first` to `stop` (exclusive) of one file, for a file cut into several shards.

    `stem` is the whole file's shard name (keys and row numbers stay those of the whole file);
    `start_byte`/`end_byte` bound the rows in a text file (-1: not known, read from the start).
    """

    stem: str
    first: int
    stop: int
    start_byte: int = -1
    end_byte: int = -1


@dataclass(frozen=True)
class ShardRef:
    """One input unit (a tar, a parquet file or rows of one, a folder or chunk of one, a manifest).

    `name` is a filesystem-safe stem, stable across runs, used to name this shard's outputs, so
    that a re-run finds the outputs of the shards it already finished. `rows` is set when the shard
    is a row range of a bigger file (its name then says which rows: `STEM-rFIRST-STOP`).
    """

    url: str
    name: str
    kind: str
    rows: RowRange | None = None


def range_name(stem: str, first: int, stop: int) -> str:
    """The stable shard name of rows [first, stop) of a file: it changes when the cut does."""
    return f"{stem}-r{first:09d}-{stop:09d}"


class ShardReadError(Exception):
    """A container-level failure: missing shard, truncated tar, parquet with the wrong columns.

    Samples read before the failure have already been yielded; the message says how many.
    """

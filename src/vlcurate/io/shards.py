"""The unit of work every reader agrees on: one input shard, and the error for a shard that breaks.

Kept apart from `sources` so that each reader can import these without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARD_KINDS = ("wds", "parquet", "folder", "manifest", "instruct")


@dataclass(frozen=True)
class ShardRef:
    """One input unit (a tar, a parquet file, a folder or chunk of one, a manifest file).

    `name` is a filesystem-safe stem, stable across runs, used to name this shard's outputs, so
    that a re-run finds the outputs of the shards it already finished.
    """

    url: str
    name: str
    kind: str


class ShardReadError(Exception):
    """A container-level failure: missing shard, truncated tar, parquet with the wrong columns.

    Samples read before the failure have already been yielded; the message says how many.
    """

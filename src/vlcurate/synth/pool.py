"""Write a synthetic image-caption pool as WebDataset shards plus the ground-truth table.

The layout is DataComp/img2dataset's (`shards/00000000.tar` with `KEY.jpg`, `KEY.txt`,
`KEY.json` per sample, and beside each tar its `00000000_stats.json` with `successes` and a
`00000000.parquet` index, written by the same `ShardWriter` as `vlcurate reshard`), so every
reader in vlcurate, and DataComp's own `resharder.py`, treats it like a real pool, while
`truth.parquet` says which captions were corrupted and how: that is what filtering quality is
measured against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.base.atomic import write_parquet_atomic
from vlcurate.base.records import derive_uid
from vlcurate.io.shard_writer import ShardWriter
from vlcurate.synth.corrupt import KINDS, corrupt
from vlcurate.synth.scene import scene_from_seed

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("true_caption", pa.string(), nullable=False),
        pa.field("corrupted", pa.bool_(), nullable=False),
        pa.field("corruption", pa.string()),
        pa.field("n_objects", pa.int32(), nullable=False),
    ]
)
_IMAGE_FORMATS = ("jpg", "png")


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    write_parquet_atomic(path, table, compression="snappy")


def plan_corruptions(n: int, corrupt_fraction: float, seed: int) -> list[str | None]:
    """Which samples are corrupted and how: exactly round(n * fraction), kinds balanced."""
    rng = np.random.default_rng([seed, 0x5EED])
    n_bad = round(n * corrupt_fraction)
    kinds: list[str | None] = [None] * n
    chosen = rng.choice(n, size=n_bad, replace=False) if n_bad else np.empty(0, dtype=np.int64)
    labels = [KINDS[j % len(KINDS)] for j in range(n_bad)]
    for idx, j in zip(chosen.tolist(), rng.permutation(n_bad).tolist(), strict=True):
        kinds[idx] = labels[j]
    return kinds


def write_pool(
    out_dir: str | Path,
    n: int,
    *,
    corrupt_fraction: float = 0.3,
    seed: int = 0,
    shard_size: int = 1000,
    image_format: str = "jpg",
) -> pa.Table:
    """Write `n` scenes as shards under `out_dir/shards/` and `out_dir/truth.parquet`; return the truth.

    Deterministic: the same arguments give byte-identical shards. Each shard is written to a
    temporary name and renamed when complete, after its `_stats.json` and `.parquet` index, so a
    reader never sees a partial tar nor a tar without its stats.
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0.0 <= corrupt_fraction <= 1.0:
        raise ValueError(f"corrupt_fraction must be in [0, 1], got {corrupt_fraction}")
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    fmt = "jpg" if image_format == "jpeg" else image_format
    if fmt not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {_IMAGE_FORMATS}, got {image_format!r}")

    out = Path(out_dir)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_corruptions(n, corrupt_fraction, seed)
    key_width = max(4, len(str(shard_size - 1)))
    rows: dict[str, list[Any]] = {f.name: [] for f in TRUTH_SCHEMA}

    # Fixed member metadata (mtime 0, no owner) so the same seed gives byte-identical shards.
    with ShardWriter(shard_dir, samples_per_shard=shard_size, mtime=0) as writer:
        for index in range(n):
            shard, j = divmod(index, shard_size)
            scene = scene_from_seed(seed, index)
            kind = plan[index]
            caption = scene.caption
            if kind is not None:
                caption = corrupt(kind, caption, scene.layout, np.random.default_rng([seed, index, 3]))
            text = caption.text
            image = scene.encode(fmt)
            uid = derive_uid(image, text)
            key = f"{shard:08d}{j:0{key_width}d}"
            meta = {"uid": uid, "key": key, "caption": text}
            members = [
                (fmt, image),
                ("txt", text.encode("utf-8")),
                ("json", json.dumps(meta).encode("utf-8")),
            ]
            writer.write(key, members, uid=uid, text=text)
            for name, value in (
                ("uid", uid),
                ("shard", shard),
                ("key", key),
                ("caption", text),
                ("true_caption", scene.caption_text),
                ("corrupted", kind is not None),
                ("corruption", kind),
                ("n_objects", scene.n_objects),
            ):
                rows[name].append(value)

    table = pa.Table.from_pydict(rows, schema=TRUTH_SCHEMA)
    _atomic_write_table(table, out / "truth.parquet")
    return table

"""Build small WebDataset shards from real COCO photos for pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds

from vlcurate.base.records import derive_uid


def write_coco_shards(out: Path, pairs: list, n_shards: int, per_shard: int) -> list[str]:
    """Write `n_shards` tars of `per_shard` (photo, caption) samples; returns all uids in order."""
    out.mkdir(parents=True, exist_ok=True)
    uids = []
    i = 0
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"{s:08d}.tar")) as w:
            for _ in range(per_shard):
                p = pairs[i % len(pairs)]
                data = p.path.read_bytes()
                caption = p.caption if i < len(pairs) else f"{p.caption} ({i})"
                uid = derive_uid(data, caption)
                w.write(
                    {
                        "__key__": f"{s:04d}{i:05d}",
                        "jpg": data,
                        "txt": caption,
                        "json": json.dumps({"uid": uid}).encode(),
                    }
                )
                uids.append(uid)
                i += 1
    return uids

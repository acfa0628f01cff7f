"""Builders for score tables and DataComp metadata written straight with pyarrow (test helpers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.base.records import SCORE_SCHEMA

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_uids(n: int, seed: int = 0) -> pa.Array:
    """n distinct random 32-hex uids as an Arrow string array (vectorised, fast for 1M rows)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, :4] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)  # unique prefix
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    offsets = pa.py_buffer(np.arange(0, 32 * (n + 1), 32, dtype=np.int32).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(chars.tobytes()))


def write_scores(
    path: Path,
    uids: Sequence[str] | pa.Array,
    scores: Sequence[float | None] | np.ndarray,
    *,
    status: Sequence[str] | None = None,
    text: Sequence[str | None] | None = None,
    width: Sequence[int | None] | None = None,
    height: Sequence[int | None] | None = None,
    row_group_size: int | None = None,
) -> Path:
    """A score table in `records.SCORE_SCHEMA`."""
    n = len(uids)
    cols: dict[str, Any] = {
        "uid": uids if isinstance(uids, pa.Array) else pa.array(list(uids), pa.string()),
        "score": pa.array(scores, pa.float32()),
        "status": pa.array(list(status) if status is not None else ["ok"] * n, pa.string()),
        "error": pa.nulls(n, pa.string()),
        "text": pa.array(list(text) if text is not None else ["a red circle on grass"] * n, pa.string()),
        "width": pa.array(list(width) if width is not None else [640] * n, pa.int32()),
        "height": pa.array(list(height) if height is not None else [480] * n, pa.int32()),
        "key": pa.nulls(n, pa.string()),
        "source": pa.nulls(n, pa.string()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=SCORE_SCHEMA), path, row_group_size=row_group_size)
    return path


def write_datacomp(
    path: Path, uids: Sequence[str], l14: Sequence[float], b32: Sequence[float], **kw: Any
) -> Path:
    """DataComp-style pool metadata with both similarity columns."""
    n = len(uids)
    table = pa.table(
        {
            "uid": pa.array(list(uids), pa.string()),
            "url": [f"http://example.com/{i}.jpg" for i in range(n)],
            "text": kw.get("text", ["a photo of a dog on a beach"] * n),
            "original_width": pa.array(kw.get("width", [512] * n), pa.int64()),
            "original_height": pa.array(kw.get("height", [384] * n), pa.int64()),
            "clip_b32_similarity_score": pa.array(b32, pa.float64()),
            "clip_l14_similarity_score": pa.array(l14, pa.float64()),
            "sha256": ["0" * 64] * n,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path

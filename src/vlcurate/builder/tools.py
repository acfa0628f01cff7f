"""The image tool package as one build stage: the same operators `vlcurate run` uses, in order.

decode / size / aspect / blur / exposure (`image_quality`), low information (`low_information`),
copies of the dataset being expanded, every split (`ReferenceIndex`, as `reference_dedup`), exact
and near copies inside the pool, then optional enhancement (`enhance`) with SSIM to the original.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.builder.collect import PoolImage
from vlcurate.builder.spec import DatasetSpec
from vlcurate.dedup.reference import ReferenceIndex
from vlcurate.ops.base import keep_mask
from vlcurate.ops.builder_ops import Enhance, EnhanceParams, InfoParams, LowInformation
from vlcurate.ops.image_ops import ImageParams, ImageQuality


@dataclass
class ToolResult:
    kept: list[int]
    reasons: dict[str, str] = field(default_factory=dict)  # uid -> why it was dropped
    steps: list[dict[str, Any]] = field(default_factory=list)
    ssim_to_original: list[float] = field(default_factory=list)
    copy_of: dict[str, str] = field(default_factory=dict)  # uid -> reference image it copies


def _step(name: str, before: np.ndarray, after: np.ndarray, t0: float) -> dict[str, Any]:
    return {
        "op": name,
        "saw": int(before.sum()),
        "kept": int(after.sum()),
        "dropped": int(before.sum() - after.sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def clean_pool(
    images: list[PoolImage],
    spec: DatasetSpec,
    *,
    reference: ReferenceIndex | None = None,
    enhance: EnhanceParams | None = None,
    pool_dedup: bool = True,
) -> ToolResult:
    """Run the tools over the pool; images[i].data is replaced by its enhanced version where enhanced."""
    c = spec.constraints
    table = pa.table(
        {"uid": [im.uid for im in images], "image": pa.array([im.data for im in images], pa.binary())}
    )
    steps = []
    keep0 = np.ones(len(images), dtype=bool)
    t0 = time.perf_counter()
    q = ImageQuality(
        ImageParams(
            min_side=c.min_side,
            max_aspect=c.max_aspect,
            min_blur=c.min_blur,
            min_brightness=c.min_brightness,
            max_brightness=c.max_brightness,
        )
    )
    table = q.process(table)
    steps.append(_step("image_quality", keep0, keep_mask(table), t0))
    t0 = time.perf_counter()
    before = keep_mask(table)
    table = LowInformation(InfoParams(min_std=c.min_std)).process(table)
    steps.append(_step("low_information", before, keep_mask(table), t0))
    keep = keep_mask(table).copy()
    reasons: dict[str, str] = {}
    for uid, k, r in zip(
        table.column("uid").to_pylist(), keep, table.column("reason").to_pylist(), strict=True
    ):
        if not k:
            reasons[uid] = str(r)
    copy_of: dict[str, str] = {}
    if reference is not None and len(reference):
        t0, before = time.perf_counter(), keep.copy()
        for i in np.flatnonzero(keep):
            m = reference.match(images[i].data)
            if m is not None:
                keep[i] = False
                reasons[images[i].uid] = f"copy of expanded dataset image {m.ref} ({m.kind})"
                copy_of[images[i].uid] = m.ref
        steps.append(_step("reference_dedup", before, keep, t0))
    if pool_dedup:
        t0, before = time.perf_counter(), keep.copy()
        seen = ReferenceIndex()
        for i in np.flatnonzero(keep):
            m = seen.match(images[i].data)
            if m is not None:
                keep[i] = False
                reasons[images[i].uid] = f"near duplicate of pool image {m.ref} ({m.kind})"
            else:
                seen.add(images[i].uid, images[i].data)
        steps.append(_step("pool_dedup", before, keep, t0))
    ssims: list[float] = []
    if enhance is not None or c.max_side is not None:
        t0 = time.perf_counter()
        p = enhance or EnhanceParams()
        if c.max_side is not None and (p.max_side is None or p.max_side > c.max_side):
            p = p.model_copy(update={"max_side": c.max_side})
        idx = np.flatnonzero(keep)
        sub = pa.table(
            {
                "uid": [images[i].uid for i in idx],
                "image": pa.array([images[i].data for i in idx], pa.binary()),
            }
        )
        sub = Enhance(p).process(sub)
        for i, data, s in zip(
            idx, sub.column("image").to_pylist(), sub.column("ssim_to_original").to_pylist(), strict=True
        ):
            images[i].data = data
            if s is not None:
                ssims.append(float(s))
        steps.append(_step("enhance", keep, keep, t0))
    return ToolResult([int(i) for i in np.flatnonzero(keep)], reasons, steps, ssims, copy_of)


def drop_counts(result: ToolResult) -> dict[str, int]:
    return dict(
        Counter(
            r.split(" (")[0].split(" of ")[0] if r.startswith(("copy", "near")) else r
            for r in result.reasons.values()
        )
    )

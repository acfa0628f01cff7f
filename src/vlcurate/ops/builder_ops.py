"""Image tools of `vlcurate build`, each usable on its own in a recipe: copies of a reference set
(exact, pHash over crops, SSIM), low-information images, and enhancement with SSIM to the original."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter, ImageOps
from pydantic import Field

from vlcurate.base.ssim import ssim
from vlcurate.dedup.reference import ReferenceIndex
from vlcurate.io.sources import open_source
from vlcurate.ops.base import Operator, OpParams, keep_mask, mark, set_column
from vlcurate.ops.fingerprint import file_identity
from vlcurate.ops.registry import register
from vlcurate.stats.image import to_gray


def reference_index(specs: list[str], **thresholds: Any) -> ReferenceIndex:
    """Every image of the inputs (any `open_source` input: the image folders of an exported dataset)."""
    index = ReferenceIndex(**thresholds)
    for spec in specs:
        source = open_source(spec)
        for shard in source.shards():
            for s in source.iter_samples(shard):
                data = s.image
                if data is None and s.image_ref:
                    try:
                        with open(s.image_ref, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                if data:
                    index.add(s.source or s.key, data)
    return index


class ReferenceParams(OpParams):
    reference: list[str] = Field(
        min_length=1,
        description="Inputs whose images must not reappear (e.g. a dataset's test split folder).",
    )
    max_hamming: int = Field(16, ge=0, le=24, description="pHash distance that makes a candidate copy.")
    max_block_diff: float = Field(30.0, ge=0, description="Largest 8x8 tile difference of a confirmed copy.")
    min_ssim: float = Field(0.7, ge=0, le=1, description="Smallest SSIM (64 px) of a confirmed copy.")


@register
class ReferenceDedup(Operator):
    """Drop images that copy a reference image: the same bytes, or resized, re-encoded or slightly cropped.

    Each reference image is hashed whole and as centre/corner crops (95-80%), so a copy cropped by a
    few percent still lands within a few bits; a candidate is confirmed tile by tile and by SSIM."""

    name = "reference_dedup"
    kind = "filter"
    Params = ReferenceParams
    requires = ("uid", "image")

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._index: ReferenceIndex | None = None

    def provides(self) -> tuple[str, ...]:
        return ("reference_match", "reference_distance", "keep", "reason")

    def resources(self) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, ReferenceParams)
        return {"reference": [file_identity(r) for r in p.reference]}

    def setup(self) -> None:
        if self._index is None:
            p = self.params
            assert isinstance(p, ReferenceParams)
            self._index = reference_index(
                list(p.reference),
                max_hamming=p.max_hamming,
                max_block_diff=p.max_block_diff,
                min_ssim=p.min_ssim,
            )

    def process(self, batch: pa.Table) -> pa.Table:
        self.setup()
        assert self._index is not None
        images = batch.column("image").to_pylist()
        matches = [self._index.match(d) if d else None for d in images]
        keep = np.array([m is None for m in matches], dtype=bool)
        reasons = [None if m is None else f"copy of {m.ref} ({m.kind})" for m in matches]
        batch = set_column(
            batch, "reference_match", pa.array([m.ref if m else None for m in matches], pa.string())
        )
        batch = set_column(
            batch, "reference_distance", pa.array([m.distance if m else None for m in matches], pa.int32())
        )
        return mark(batch, keep, reasons)


class InfoParams(OpParams):
    min_std: float = Field(4.0, ge=0, description="Floor of the largest per-channel standard deviation.")
    min_entropy: float = Field(0.05, ge=0, le=8, description="Grey histogram entropy floor, in bits.")


def information(data: bytes | None) -> tuple[float, float]:
    """(largest per-channel standard deviation, grey histogram entropy in bits); NaN when undecodable.

    Per channel, not grey: a green object on a grey background can have the background's brightness."""
    try:
        with Image.open(io.BytesIO(data or b"")) as im:
            im.draft("RGB", (256, 256))
            rgb = np.asarray(im.convert("RGB").resize((128, 128)), dtype=np.uint8)
    except Exception:
        return float("nan"), float("nan")
    spread = float(rgb.reshape(-1, 3).astype(np.float32).std(axis=0).max())
    g = to_gray(rgb)
    hist = np.bincount(np.clip(g, 0, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return spread, float(-(p * np.log2(p)).sum())


@register
class LowInformation(Operator):
    """Drop flat or nearly flat images: low colour spread or grey histogram entropy."""

    name = "low_information"
    kind = "filter"
    Params = InfoParams
    requires = ("uid", "image")

    def provides(self) -> tuple[str, ...]:
        return ("colour_std", "grey_entropy", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("colour_std", "grey_entropy")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, InfoParams)
        vals = np.array(
            [information(d) for d in batch.column("image").to_pylist()], dtype=np.float64
        ).reshape(-1, 2)
        keep = np.ones(batch.num_rows, dtype=bool)
        reasons: list[str | None] = [None] * batch.num_rows
        for i, (std, ent) in enumerate(vals):
            if np.isnan(std):
                keep[i], reasons[i] = False, "image not decodable"
            elif std < p.min_std:
                keep[i], reasons[i] = False, f"colour_std<{p.min_std:g}"
            elif ent < p.min_entropy:
                keep[i], reasons[i] = False, f"grey_entropy<{p.min_entropy:g}"
        batch = set_column(batch, "colour_std", pa.array(vals[:, 0].astype(np.float32), pa.float32()))
        batch = set_column(batch, "grey_entropy", pa.array(vals[:, 1].astype(np.float32), pa.float32()))
        return mark(batch, keep, reasons)


class EnhanceParams(OpParams):
    denoise: bool = Field(False, description="3x3 median filter.")
    contrast: bool = Field(False, description="Autocontrast, 1% cut-off at each end.")
    max_side: int | None = Field(None, ge=8, description="Downscale so the longer side is at most this.")
    min_ssim: float = Field(
        0.0, ge=0, le=1, description="Keep the original where the result's SSIM is lower."
    )


def enhance_image(data: bytes, p: EnhanceParams) -> tuple[bytes, float]:
    """The enhanced image (PNG, or the input when nothing applies) and its SSIM to the original."""
    with Image.open(io.BytesIO(data)) as im:
        orig = im.convert("RGB")
    out = orig
    if p.denoise:
        out = out.filter(ImageFilter.MedianFilter(3))
    if p.contrast:
        out = ImageOps.autocontrast(out, cutoff=1)
    if p.max_side is not None and max(out.size) > p.max_side:
        out = out.copy()
        out.thumbnail((p.max_side, p.max_side), Image.Resampling.LANCZOS)
    if out is orig:
        return data, 1.0
    score = ssim(orig, out)
    if score < p.min_ssim:
        return data, 1.0
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue(), score


@register
class Enhance(Operator):
    """Optional enhancement (denoise, contrast, downscale) of kept images, recording SSIM to the original."""

    name = "enhance"
    kind = "map"
    Params = EnhanceParams
    requires = ("uid", "image")

    def provides(self) -> tuple[str, ...]:
        return ("image", "ssim_to_original")

    def stat_columns(self) -> tuple[str, ...]:
        return ("ssim_to_original",)

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, EnhanceParams)
        kept = keep_mask(batch)
        images: list[bytes | None] = []
        scores: list[float | None] = []
        for d, k in zip(batch.column("image").to_pylist(), kept, strict=True):
            if not k or not d:
                images.append(d)
                scores.append(None)
                continue
            try:
                new, s = enhance_image(d, p)
            except Exception:
                new, s = d, None
            images.append(new)
            scores.append(s)
        batch = set_column(batch, "image", pa.array(images, pa.binary()))
        return set_column(batch, "ssim_to_original", pa.array(scores, pa.float32()))

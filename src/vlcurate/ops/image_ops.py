"""Image operators: decodability, size and aspect ratio, bytes per pixel, blur and exposure, and the
perceptual hash that near-duplicate removal uses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, apply_bounds, mark, set_column
from vlcurate.ops.registry import register
from vlcurate.stats.image import image_stats, stats_columns

_THREADS = 4  # decoding releases the GIL


class ImageParams(OpParams):
    min_side: int | None = Field(
        default=None, ge=1, description="Keep images whose shorter side is at least this."
    )
    max_aspect: float | None = Field(
        default=None, ge=1, description="Keep images with longer/shorter side <= this."
    )
    min_bytes_per_pixel: float | None = Field(default=None, ge=0, description="Drop over-compressed images.")
    min_blur: float | None = Field(
        default=None, ge=0, description="Keep images with Laplacian variance >= this."
    )
    min_brightness: float | None = Field(default=None, ge=0, le=1)
    max_brightness: float | None = Field(default=None, ge=0, le=1)
    require_decodable: bool = Field(default=True, description="Drop images that cannot be decoded.")


@register
class ImageQuality(Operator):
    """Decodability, size, aspect ratio, bytes per pixel, blur, exposure and a 64-bit pHash, with bounds."""

    name = "image_quality"
    kind = "filter"
    Params = ImageParams
    requires = ("uid", "image")

    def provides(self) -> tuple[str, ...]:
        return (
            "image_status",
            "width",
            "height",
            "aspect_ratio",
            "bytes_per_pixel",
            "blur",
            "brightness",
            "phash",
            "phash_valid",
            "keep",
            "reason",
        )

    def stat_columns(self) -> tuple[str, ...]:
        return ("blur", "brightness", "bytes_per_pixel")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, ImageParams)
        images = batch.column("image").to_pylist()
        with ThreadPoolExecutor(_THREADS) as pool:
            stats = list(pool.map(image_stats, images))
        cols = stats_columns(stats)
        batch = set_column(batch, "image_status", pa.array(list(cols["status"]), pa.string()))
        for name in ("width", "height"):
            batch = set_column(batch, name, pa.array(cols[name], pa.int64()))
        for name in ("aspect_ratio", "bytes_per_pixel", "blur", "brightness"):
            batch = set_column(batch, name, pa.array(cols[name].astype(np.float32), pa.float32()))
        batch = set_column(batch, "phash", pa.array(cols["phash"], pa.uint64()))
        batch = set_column(batch, "phash_valid", pa.array(cols["phash_valid"], pa.bool_()))
        n = len(images)
        keep = np.ones(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        if p.require_decodable:
            for i, status in enumerate(cols["status"]):
                if status != "ok":
                    keep[i], reasons[i] = False, f"image {status}"
        side = np.minimum(cols["width"], cols["height"]).astype(float)  # -1 where the size is unknown
        apply_bounds(side, p.min_side, None, "min_side", keep, reasons)
        apply_bounds(
            np.nan_to_num(cols["aspect_ratio"], nan=np.inf), None, p.max_aspect, "aspect", keep, reasons
        )
        apply_bounds(cols["bytes_per_pixel"], p.min_bytes_per_pixel, None, "bytes_per_pixel", keep, reasons)
        apply_bounds(cols["blur"], p.min_blur, None, "blur", keep, reasons)
        apply_bounds(cols["brightness"], p.min_brightness, p.max_brightness, "brightness", keep, reasons)
        return mark(batch, keep, reasons)

"""Settings of a scoring run, validated at the edge (CLI, API, recipe)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlcurate.base.images import DEFAULT_MAX_PIXELS


class ScoreConfig(BaseModel):
    """Everything `vlcurate score` can be told. Defaults run offline on a laptop."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "dfn-b16", description="registry name, random:ARCH, local-dir:PATH or open_clip:ARCH:CKPT"
    )
    batch_size: int = Field(256, ge=1, le=65536, description="pairs per model call")
    workers: int | None = Field(
        None, ge=0, le=512, description="decode processes (default: all cores; 0 = in-process)"
    )
    chunk_size: int = Field(32, ge=1, le=4096, description="images per decode task")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    save_embeddings: bool = False
    allow_download: bool = False
    fetch_concurrency: int = Field(32, ge=1, le=1024)
    fetch_timeout: float = Field(10.0, gt=0, le=600)
    fetch_retries: int = Field(2, ge=0, le=10)
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads for the model (default: all cores; 1 for small models)"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    fast_decode: bool = Field(
        False, description="let JPEG decoding scale down to the model size (~3/255 off)"
    )
    retry_failed: bool = Field(
        False, description="fetch and score again the failed downloads of finished shards"
    )
    progress: bool = True
    source_options: dict[str, Any] = Field(default_factory=dict)

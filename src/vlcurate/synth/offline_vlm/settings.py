"""Settings of `vlcurate vlm serve`: one pydantic model, filled from the CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from vlcurate.synth.offline_vlm.faults import parse_faults
from vlcurate.synth.offline_vlm.weakness import DEFAULT_MIN_SAMPLES, parse_weaknesses

WRONG_KIND_NAMES = ("count", "exists", "colour", "shape")


class VLMServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=0, le=65535)
    model: str = Field(default="tiny-synth", description="CLIP registry name of the scoring model.")
    served_model_name: str | None = Field(default=None, description="Extra name the model answers to.")
    api_key: str | None = Field(default=None, description="Require `Authorization: Bearer <key>`.")
    device: str = "cpu"
    threads: int = Field(default=1, ge=1, description="Torch CPU threads (1 is fastest for this tiny model).")
    wrong_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of answers made wrong.")
    wrong_kinds: tuple[str, ...] = WRONG_KIND_NAMES
    json_schema: Literal["supported", "ignored", "rejected"] = "supported"
    latency_ms: float = Field(default=0.0, ge=0.0, description="Emulated generation latency per request.")
    max_batch: int = Field(default=32, ge=1, description="Most images encoded together across requests.")
    faults: dict[str, float] = Field(default_factory=dict)
    fault_seed: int = 0
    hang_s: float = Field(default=30.0, ge=0.0, description="How long a `timeout` fault hangs.")
    max_images: int = Field(default=4, ge=1, description="Most images in one request.")
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    fetch_timeout_s: float = Field(default=10.0, gt=0.0, description="Timeout for http(s) image URLs.")
    image_tokens: int = Field(default=64, ge=0, description="Prompt tokens counted per image.")
    weakness: str = Field(default="", description="Planted weaknesses, e.g. 'blind-colour=red,refuse=count'.")
    memory: str | None = Field(default=None, description="Training samples that can cure the weaknesses.")
    memory_min: int = Field(
        default=DEFAULT_MIN_SAMPLES, ge=1, description="Memory samples about an attribute that cure it."
    )

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).exists():
            raise ValueError(f"memory path not found: {v}")  # before the model is loaded
        return v

    @field_validator("weakness")
    @classmethod
    def _weakness(cls, v: str) -> str:
        parse_weaknesses(v)  # raises ValueError naming the bad part
        return v

    @field_validator("wrong_kinds", mode="before")
    @classmethod
    def _kinds(cls, v: object) -> object:
        if isinstance(v, str):
            v = tuple(k.strip() for k in v.split(",") if k.strip())
        for k in v:  # type: ignore[attr-defined]
            if k not in WRONG_KIND_NAMES:
                raise ValueError(f"unknown wrong kind {k!r}; expected some of {', '.join(WRONG_KIND_NAMES)}")
        return v

    @field_validator("faults", mode="before")
    @classmethod
    def _faults(cls, v: object) -> object:
        return parse_faults(v) if isinstance(v, str) else v

    @property
    def model_names(self) -> list[str]:
        names = ["tiny-synth"]
        if self.served_model_name and self.served_model_name not in names:
            names.append(self.served_model_name)
        if self.model not in names:
            names.append(self.model)
        return names

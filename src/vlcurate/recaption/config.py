"""The settings of a recaption run, validated once at the edge (CLI or Python)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vlcurate.vlm.client import VLMSettings


class RecaptionConfig(BaseModel):
    """What to generate, how to score it, when to stop and when to replace the original."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vlm: VLMSettings = Field(description="The OpenAI-compatible server that writes the captions.")
    scorer: str = Field(default="tiny-synth", description="The DVA scorer (`vlcurate models`).")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    allow_download: bool = False
    k: int = Field(default=4, ge=1, le=32, description="Sampled candidates per pair.")
    style: Literal["short", "detailed"] = "short"
    max_words: int | None = Field(default=None, ge=1, le=500)
    temperature: float = Field(default=0.8, gt=0.0, le=2.0, description="Sampling temperature (> 0).")
    max_tokens: int = Field(default=96, ge=8, le=4096)
    fuse: bool = Field(
        default=True, description="CapsFusion-style merge of the original and the best sample."
    )
    rounds: int = Field(default=3, ge=0, le=20, description="Rewrite-with-feedback rounds at most.")
    min_gain: float = Field(
        default=0.002,
        ge=0.0,
        description="A rewrite round that raises the best score by less stops the pair.",
    )
    margin: float = Field(
        default=0.12, ge=0.0, le=2.0, description="Replace the original only when beaten by more than this."
    )
    budget_requests: int | None = Field(default=None, ge=0, description="VLM requests this run may send.")
    mentions: str | None = Field(
        default="synth",
        description="Mention extractor that points feedback at the weakest phrase (None: generic feedback).",
    )
    chunk_size: int = Field(default=256, ge=1, le=65536, description="Pairs whose requests go out together.")
    batch_size: int = Field(default=256, ge=1, le=8192, description="Texts per scorer call.")
    progress: bool = True

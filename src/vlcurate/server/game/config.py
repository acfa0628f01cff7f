"""What a game is, as the operator states it (`POST /api/v1/game/games`, `vlcurate game create`).

Defaults follow the paper: 10 images a session, 5 tainted (from the easy pool, the model told to
answer wrongly) and 5 untainted (answered honestly), in random order, 120 seconds an image, 20
points for each tainted image where the player flagged a wrong answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlcurate.vlm.prompts import TAINT_INSTRUCTION


class VLMJudge(BaseModel):
    """One model of the optional judging panel (`server.game.panel`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._@:-]+$")
    vlm_url: str = Field(min_length=1, description="An OpenAI-compatible base URL ending in /v1.")
    model: str = Field(min_length=1, max_length=300)
    timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)


class VLMJudgeOut(BaseModel):
    name: str
    model: str


class GameCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    pool: str = Field(min_length=1, description="Untainted images: any input `vlcurate score` reads.")
    easy_pool: str = Field(min_length=1, description="Tainted images (few objects, plain scenes).")
    kind: Literal["wds", "parquet", "folder", "manifest", "instruct"] | None = None
    vlm_url: str = Field(min_length=1, description="An OpenAI-compatible base URL ending in /v1.")
    model: str = Field(min_length=1, max_length=300)
    taint_instruction: str = Field(default=TAINT_INSTRUCTION, min_length=1, max_length=4000)
    honest_instruction: str | None = Field(default=None, max_length=4000)
    n_images: int = Field(default=10, ge=1, le=100)
    n_tainted: int = Field(default=5, ge=0, le=100)
    seconds_per_image: int = Field(default=120, ge=5, le=3600)
    points_per_image: float = Field(default=20.0, ge=0.0, le=1e6)
    max_question_chars: int = Field(default=500, ge=10, le=4000)
    judges_needed: int = Field(default=3, ge=1, le=15)
    min_skill: float = Field(default=0.4, ge=-1.0, le=1.0, description="Bar on detection - false alarms.")
    min_tainted_seen: int = Field(default=5, ge=0, le=1000)
    vlm_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    max_images_per_pool: int = Field(default=10_000, ge=1, le=1_000_000)
    vlm_judges: list[VLMJudge] = Field(
        default_factory=list,
        max_length=7,
        description="Optional panel of VLM judges; together they are one voice on each flag.",
    )

    @model_validator(mode="after")
    def _shape(self) -> GameCreate:
        if self.n_tainted > self.n_images:
            raise ValueError(f"n_tainted ({self.n_tainted}) exceeds n_images ({self.n_images})")
        names = [j.name for j in self.vlm_judges]
        if len(set(names)) != len(names):
            raise ValueError("vlm_judges: two judges have the same name")
        return self


class GameOut(BaseModel):
    id: int
    name: str
    model: str
    vlm_url: str
    n_images: int
    n_tainted: int
    seconds_per_image: int
    points_per_image: float
    max_question_chars: int
    judges_needed: int
    min_skill: float
    state: str
    images_main: int
    images_easy: int
    vlm_judges: list[VLMJudgeOut] = Field(default_factory=list)

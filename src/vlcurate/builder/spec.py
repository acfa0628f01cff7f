"""The dataset spec: what the user asked for, validated and versioned; YAML in and out.

Every later stage checks its work against it (classes, task, images per class, splits, image
constraints, licences).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SPEC_VERSION = 1
Task = Literal["classify", "detect", "segment"]


class SpecError(ValueError):
    """A request or spec that cannot be built: one clear message."""


class ClassSpec(BaseModel):
    """One class: its name, a definition, and what does and does not count as it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    definition: str = ""
    positive: list[str] = Field(default_factory=list, description="Phrases that describe the class.")
    negative: list[str] = Field(default_factory=list, description="Look-alikes that are not the class.")

    @field_validator("name")
    @classmethod
    def _clean(cls, v: str) -> str:
        v = re.sub(r"\s+", " ", v.strip().lower())
        if not v:
            raise ValueError("a class name is empty")
        return v

    def prompts(self) -> list[str]:
        """Texts a zero-shot model scores the class by (its positive phrases, else its name)."""
        return self.positive or [f"a {self.name}."]


class Splits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum(self) -> Splits:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"splits must sum to 1, got {self.train + self.val + self.test:g}")
        return self


class ImageConstraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_side: int = Field(32, ge=1)
    max_side: int | None = Field(None, ge=1)
    max_aspect: float = Field(3.0, ge=1)
    min_blur: float | None = Field(None, ge=0, description="Laplacian variance floor (None: no check).")
    min_brightness: float = Field(0.03, ge=0, le=1)
    max_brightness: float = Field(0.97, ge=0, le=1)
    min_std: float = Field(4.0, ge=0, description="Colour standard deviation floor (low information).")

    @model_validator(mode="after")
    def _consistent(self) -> ImageConstraints:
        if self.max_side is not None and self.max_side < self.min_side:
            raise ValueError(f"max_side {self.max_side} is below min_side {self.min_side}")
        if self.max_brightness <= self.min_brightness:
            raise ValueError("max_brightness must be above min_brightness")
        return self


class DatasetSpec(BaseModel):
    """What to build. `version` is the schema version of this file."""

    model_config = ConfigDict(extra="forbid")

    version: int = SPEC_VERSION
    request: str = ""
    task: Task = "classify"
    classes: list[ClassSpec] = Field(min_length=1)
    images_per_class: int = Field(100, ge=1, le=10_000_000)
    splits: Splits = Field(default_factory=Splits)
    constraints: ImageConstraints = Field(default_factory=ImageConstraints)
    other: list[str] = Field(
        default_factory=list,
        description="Things in the pool that are none of the classes; what looks like one stays unlabelled.",
    )
    licenses: list[str] = Field(
        default_factory=lambda: ["any"], description="Licences accepted ('any', or names such as cc-by-4.0)."
    )
    min_reliability: float = Field(0.9, ge=0, le=1, description="ALR bar per class.")
    min_confidence: float = Field(0.0, ge=0, le=1, description="Labels below this are queued for review.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SPEC_VERSION:
            raise ValueError(
                f"spec version {v} is not supported (this vlcurate reads version {SPEC_VERSION})"
            )
        return v

    @model_validator(mode="after")
    def _unique(self) -> DatasetSpec:
        names = [c.name for c in self.classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"class names repeat: {', '.join(dup)}")
        return self

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def accepts_license(self, license_name: str | None) -> bool:
        accepted = {x.lower() for x in self.licenses}
        if "any" in accepted:
            return True
        return (license_name or "unknown").lower() in accepted

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def spec_from_dict(data: object, where: str = "spec") -> DatasetSpec:
    """Validate; every problem becomes one SpecError line naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(x) for x in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise SpecError(f"{where}: " + "; ".join(parts)) from None


def load_spec(path: str | Path) -> DatasetSpec:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML ({exc})") from None
    return spec_from_dict(data, str(p))

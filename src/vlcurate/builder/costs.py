"""What each build stage cost and what it removed: model calls, wall time, images dropped and why.

`StageLog` is filled while the build runs (a `CountingScorer` counts the CLIP / tiny-synth encode
batches and images of whichever stage is current; the stages add their own VLM, detector and SAM
calls) and saved in the work folder with every checkpoint, so a resumed build reports the counts
the earlier run recorded for the stages it reuses, plus what this run did.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from vlcurate.base.atomic import write_json_atomic


class Removed(BaseModel):
    """One image a stage removed (or held back), with why."""

    uid: str
    reason: str
    source: str = ""


class StageCost(BaseModel):
    """One stage's account: calls by kind, seconds, images in and out, what it removed."""

    name: str
    calls: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    saw: int = 0
    kept: int = 0
    removed: list[Removed] = Field(default_factory=list)
    removed_unseen: dict[str, int] = Field(default_factory=dict)  # removed before any bytes were kept
    resumed: bool = False  # reused from the work folder: its figures are the earlier run's
    runs: int = 0

    def add_calls(self, **calls: int) -> None:
        for k, v in calls.items():
            if v:
                self.calls[k] = self.calls.get(k, 0) + int(v)


class StageLog(BaseModel):
    """Every stage's cost in the order the stages first ran."""

    stages: dict[str, StageCost] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)  # role -> model, device and precision
    current: str | None = None

    def get(self, name: str) -> StageCost:
        if name not in self.stages:
            self.stages[name] = StageCost(name=name)
        return self.stages[name]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageCost]:
        """Time a stage and make it the one model calls are counted against."""
        st, previous = self.get(name), self.current
        self.current = name
        st.runs += 1
        t0 = time.perf_counter()
        try:
            yield st
        finally:
            st.seconds += time.perf_counter() - t0
            self.current = previous

    def count(self, **calls: int) -> None:
        """Add calls to the current stage (ignored outside any stage)."""
        if self.current is not None:
            self.get(self.current).add_calls(**calls)

    def mark_resumed(self, *names: str) -> None:
        for n in names:
            if n in self.stages:
                self.stages[n].resumed = True

    def reset(self, *names: str) -> None:
        """Forget stages this run does again from scratch (their earlier figures no longer apply)."""
        for n in names:
            self.stages.pop(n, None)

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.model_dump(mode="json", exclude={"current"}))

    @classmethod
    def load(cls, path: Path) -> StageLog:
        """The log an earlier run saved, or an empty one (missing or unreadable file)."""
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError):
            return cls()

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.stages.values():
            for k, v in st.calls.items():
                out[k] = out.get(k, 0) + v
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per stage, for build.json and the report (removed images counted by reason)."""
        rows = []
        for st in self.stages.values():
            reasons: dict[str, int] = dict(st.removed_unseen)
            for r in st.removed:
                key = _reason_kind(r.reason)
                reasons[key] = reasons.get(key, 0) + 1
            rows.append(
                {
                    "stage": st.name,
                    "calls": dict(st.calls),
                    "seconds": round(st.seconds, 3),
                    "saw": st.saw,
                    "kept": st.kept,
                    "removed": len(st.removed) + sum(st.removed_unseen.values()),
                    "removed_by_reason": reasons,
                    "resumed": st.resumed,
                }
            )
        return rows


def _reason_kind(reason: str) -> str:
    """A reason without its particulars: "copy of expanded dataset image test/x.png (phash)" ->
    "copy of expanded dataset", "confidence 0.31 < 0.5" -> "confidence <"."""
    if reason.startswith("label issue"):
        return reason.split(" (")[0]
    r = re.sub(r" image \S+", "", reason).split(" (")[0].split(":")[0]
    r = re.sub(r"(?<![A-Za-z])[-+]?\d[\d.,x]*", "", r)
    return re.sub(r"\s+", " ", r).strip() or reason


class CountingScorer:
    """A scorer that counts its encode calls (batches) and items against the log's current stage."""

    def __init__(self, scorer: Any, log: StageLog) -> None:
        self._scorer, self._log = scorer, log

    def encode_images(self, arrays: Any) -> Any:
        self._log.count(image_encode_batches=1, images_encoded=len(arrays))
        return self._scorer.encode_images(arrays)

    def encode_texts(self, texts: Any) -> Any:
        self._log.count(text_encode_batches=1, texts_encoded=len(texts))
        return self._scorer.encode_texts(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

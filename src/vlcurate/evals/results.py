"""The evaluation run format: what `vlcurate eval` writes and diagnosis and validation read.

A run folder holds
- `config.json`: the `EvalConfig` the run was made with (owned by the runner);
- `samples.jsonl`: one `SampleResult` per (benchmark item, repeat), appended as answers arrive, so a
  killed run keeps every finished line and a re-run skips them;
- `summary.json`: an `EvalSummary`, rewritten atomically after the run (and on resume).

Keeping the format in one module is what lets `diagnose`, `version validate` and `loop` read runs
made by any version of the runner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlcurate.base.intervals import wilson

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"

SampleStatus = Literal[
    "ok",  # the model answered and the answer was extracted (correct may be True or False)
    "no_answer",  # the model returned nothing usable (empty text)
    "unparsed",  # text came back but no answer could be extracted from it (garbage, wrong format)
    "refused",  # the model declined to answer
    "error",  # the request failed after retries (timeout, 5xx, judge timeout)
    "missing_image",  # the benchmark item names an image that cannot be read
    "missing_answer",  # the benchmark item has no reference answer: not scored
]
QuestionType = Literal["mc", "short", "yesno", "caption"]


DEFAULT_CATEGORY = "all"  # the category of an item whose benchmark names none


class SampleResult(BaseModel):
    """One answer to one benchmark item (one line of samples.jsonl)."""

    model_config = ConfigDict(extra="allow")

    id: str
    repeat: int = Field(default=0, ge=0)
    category: str = DEFAULT_CATEGORY
    type: QuestionType = "short"
    question: str
    choices: list[str] | None = None
    answer: str | None = None  # the reference answer
    image: str | None = None  # path or URL as given by the benchmark
    response: str | None = None  # the model's raw text
    extracted: str | None = None  # the answer read out of the response
    correct: bool | None = None  # None when not scored (missing answer, error, ...)
    status: SampleStatus = "ok"
    error: str | None = None
    latency_s: float | None = None
    cached: bool = False
    judge: str | None = None  # the judge model when one decided `correct`
    meta: dict[str, Any] = Field(default_factory=dict)  # benchmark fields kept as-is (scene attributes, ...)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.repeat)


class CategoryStats(BaseModel):
    n: int  # scored answers (correct is not None)
    correct: int
    accuracy: float | None
    ci95: tuple[float, float]
    unscored: int = 0  # answers counted in the run but not scored (errors, missing answers)


class EvalSummary(BaseModel):
    model: str
    bench: str
    complete: bool  # every (item, repeat) has a line
    expected: int  # items x repeats
    answered: int  # lines in samples.jsonl
    overall: CategoryStats
    per_category: dict[str, CategoryStats]
    status_counts: dict[str, int]
    cache_hits: int = 0


def category_stats(rows: list[SampleResult]) -> CategoryStats:
    """Accuracy with a Wilson interval over the scored rows."""
    scored = [r for r in rows if r.correct is not None]
    k = sum(1 for r in scored if r.correct)
    lo, hi = wilson(k, len(scored))
    return CategoryStats(
        n=len(scored),
        correct=k,
        accuracy=(k / len(scored)) if scored else None,
        ci95=(round(lo, 6), round(hi, 6)),
        unscored=len(rows) - len(scored),
    )


def summarize(rows: list[SampleResult], *, model: str, bench: str, expected: int) -> EvalSummary:
    by_cat: dict[str, list[SampleResult]] = {}
    status: dict[str, int] = {}
    for r in rows:
        by_cat.setdefault(r.category, []).append(r)
        status[r.status] = status.get(r.status, 0) + 1
    return EvalSummary(
        model=model,
        bench=bench,
        complete=len({r.key for r in rows}) >= expected,
        expected=expected,
        answered=len(rows),
        overall=category_stats(rows),
        per_category={c: category_stats(v) for c, v in sorted(by_cat.items())},
        status_counts=dict(sorted(status.items())),
        cache_hits=sum(1 for r in rows if r.cached),
    )


class RunFormatError(ValueError):
    """A run folder that is missing or whose files do not parse."""


def iter_samples(run_dir: Path) -> Iterator[SampleResult]:
    """Every complete line of samples.jsonl; a last line cut short by a kill is skipped, any other
    bad line is an error naming its line number."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        raise RunFormatError(f"{run_dir} is not an evaluation run: {SAMPLES_FILE} is missing")
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    last = len(lines) - 1
    for no, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield SampleResult.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            if no == last:  # no newline after it: a write cut short
                return
            raise RunFormatError(
                f"{path}:{no + 1}: not a sample result ({str(exc).splitlines()[0]})"
            ) from None


class EvalRun(BaseModel):
    """A run read back: its samples (last line per (id, repeat) wins) and summary if written."""

    path: str
    samples: list[SampleResult]
    summary: EvalSummary | None
    config: dict[str, Any]

    def by_key(self) -> dict[tuple[str, int], SampleResult]:
        return {s.key: s for s in self.samples}


def load_run(run_dir: str | Path) -> EvalRun:
    run = Path(run_dir)
    latest: dict[tuple[str, int], SampleResult] = {}
    for s in iter_samples(run):
        latest[s.key] = s
    summary = None
    if (run / SUMMARY_FILE).is_file():
        try:
            summary = EvalSummary.model_validate_json((run / SUMMARY_FILE).read_bytes())
        except ValidationError as exc:
            raise RunFormatError(f"{run / SUMMARY_FILE}: {str(exc).splitlines()[0]}") from None
    config: dict[str, Any] = {}
    if (run / CONFIG_FILE).is_file():
        try:
            config = json.loads((run / CONFIG_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise RunFormatError(f"{run / CONFIG_FILE}: {exc}") from None
    return EvalRun(path=str(run), samples=list(latest.values()), summary=summary, config=config)

"""The machine-readable diagnosis of an evaluation run (DIAG/diagnosis.json).

`vlcurate diagnose` writes it, `vlcurate plan` reads it. Every weakness names its evidence (the
slice it is about, failure counts with an interval, the failing sample ids, the training samples
implicated), so an action of the plan can always be traced back to the failures behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DIAGNOSIS_FILE = "diagnosis.json"
DIAGNOSIS_VERSION = 1

# perception: the model does not see it (answering from its own description fails too);
# reasoning: it sees it (its description lets it answer) but answers wrongly from the image;
# format: text came back that no answer could be read from; refusal: it declined;
# coverage: failures where the training data is thin; label_noise: training samples that resemble
# failures and carry wrong labels.
WeaknessKind = Literal["perception", "reasoning", "format", "refusal", "coverage", "label_noise"]
FailureKind = Literal["perception", "reasoning", "format", "refusal", "wrong"]


class DiagnosisError(ValueError):
    """A run or diagnosis that cannot be used: one clear message."""


class Probe(BaseModel):
    """What the model said when re-asked about one failed item."""

    description: str | None = None  # "describe the image", with the image
    from_description: str | None = None  # the question answered from that description, no image
    from_description_correct: bool | None = None
    blind: str | None = None  # the question answered without the image
    blind_correct: bool | None = None
    error: str | None = None  # the probe request failed (empty answer, timeout, ...)


class Failure(BaseModel):
    """One failed answer and what it is attributed to."""

    id: str
    repeat: int = 0
    category: str
    type: str
    question: str
    answer: str | None
    extracted: str | None
    response: str | None
    status: str
    image: str | None  # resolved path when the image could be found, else as the run wrote it
    meta: dict[str, Any] = Field(default_factory=dict)
    kind: FailureKind  # "wrong" when no probe could attribute it
    probe: Probe | None = None
    cluster: int | None = None


class Coverage(BaseModel):
    """How well the training pool covers a weakness."""

    train_total: int
    matching: int  # training samples about the weakness's attribute (question or answer names it)
    share: float  # matching / train_total
    bench_share: float  # the attribute's share of the benchmark items
    nn_similarity_failures: float | None = None  # mean nearest-training-neighbour similarity
    nn_similarity_passes: float | None = None  # the same for the items answered right
    thin: bool


class ImplicatedSample(BaseModel):
    """A training sample that resembles failures and carries a wrong label."""

    id: str
    question: str
    answer: str
    short_answer: str | None
    reason: str
    similarity: float  # to the nearest failure (image and question embedding)
    nearest_failure: str | None


class Weakness(BaseModel):
    """One ranked weakness: a slice of the benchmark (category and/or attribute) that fails."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: WeaknessKind
    category: str | None = None
    attribute: dict[str, str] = Field(default_factory=dict)  # {"colour": "red"}, {"shape": "circle|square"}
    label: str  # what a person reads: "colour=red (perception)"
    score: float  # excess failures over the rest of the run, at the interval's lower bound
    n: int  # answers in the slice
    failures: int
    failure_rate: float
    ci95: tuple[float, float]
    rest_failure_rate: float
    kinds: dict[str, int] = Field(default_factory=dict)  # failure attribution counts
    confusions: dict[str, int] = Field(default_factory=dict)  # "circle->square": 4
    evidence: list[str] = Field(default_factory=list)
    failing_ids: list[str] = Field(default_factory=list)
    coverage: Coverage | None = None
    implicated: list[ImplicatedSample] = Field(default_factory=list)


class Cluster(BaseModel):
    """Failures grouped by image and question embeddings."""

    id: int
    size: int
    ids: list[str]
    categories: dict[str, int]
    attributes: dict[str, int]  # "colour=red": 7
    nn_similarity: float | None = None  # mean similarity of its members to their nearest training sample
    thin: bool = False


class TrainInfo(BaseModel):
    source: str
    samples: int
    wrong_labels: int


class Diagnosis(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = DIAGNOSIS_VERSION
    run: str
    model: str | None = None
    bench: str | None = None
    created: str
    answers: int  # rows considered (scored or failed)
    failures: int
    accuracy: float | None
    per_category: dict[str, dict[str, Any]] = Field(default_factory=dict)
    attribution: dict[str, int] = Field(default_factory=dict)
    probed: bool = False
    probe_errors: int = 0
    weaknesses: list[Weakness] = Field(default_factory=list)
    clusters: list[Cluster] = Field(default_factory=list)
    failed: list[Failure] = Field(default_factory=list)
    train: TrainInfo | None = None
    warnings: list[str] = Field(default_factory=list)
    # the benchmark's words per attribute ({"shape": ["circle", ...], "colour": [...]}), read from the
    # items' meta: what `plan` phrases build requests and retrieval queries with
    vocabulary: dict[str, list[str]] = Field(default_factory=dict)

    def weakness(self, wid: str) -> Weakness:
        for w in self.weaknesses:
            if w.id == wid:
                return w
        raise KeyError(wid)


def load_diagnosis(path: str | Path) -> Diagnosis:
    """A diagnosis folder (or its diagnosis.json), with one clear error when it is not one."""
    p = Path(path)
    f = p / DIAGNOSIS_FILE if p.is_dir() else p
    if not f.is_file():
        raise DiagnosisError(
            f"{path} is not a diagnosis: {DIAGNOSIS_FILE} is missing (run `vlcurate diagnose`)"
        )
    try:
        return Diagnosis.model_validate_json(f.read_bytes())
    except ValidationError as exc:
        raise DiagnosisError(f"{f}: not a diagnosis ({str(exc).splitlines()[0]})") from None

"""Pydantic models for every HTTP request and response: the platform's wire contract.

Agents, the dashboard and the CLI speak only these shapes. Requests forbid unknown fields and
check types and ranges, so a malformed body is a 422 before anything touches the database.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$"
# Every id is a database BIGINT counted from 1: anything outside is a 422 at the edge, never a
# database error (SQLite cannot bind an int beyond 64 bits; PostgreSQL refuses to cast it).
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ItemStatus = Literal["ok", "decode_error", "too_large", "missing_image", "missing_text", "fetch_error"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- operators -------------------------------------------------------------------------------


class DatasetCreate(Strict):
    name: str = Field(pattern=NAME, description="Unique dataset name.")
    source: str = Field(min_length=1, max_length=4096, description="Shards as `vlcurate score` reads them.")
    kind: Literal["wds", "parquet", "folder", "manifest"] | None = None


class DatasetOut(BaseModel):
    id: int
    name: str
    source: str | None = Field(
        default=None, description="Where the shards are read from: shown to operators only."
    )
    n_items: int
    n_unreadable: int
    created_at: dt.datetime


class GoldSpec(Strict):
    """Where the hidden checks' answers come from."""

    scores: str | None = Field(
        default=None, description="A `vlcurate score` output folder scored with the pinned model."
    )
    self_score: int = Field(
        default=1_000_000,
        ge=0,
        le=100_000_000,
        description="At most this many hidden checks the server scores itself with the pinned model "
        "(those `scores` does not answer); a unit beyond it gets fewer checks.",
    )


class TaskCreate(Strict):
    name: str = Field(pattern=NAME)
    dataset: str = Field(description="Dataset name.")
    kind: Literal["dva-score"] = "dva-score"
    model: str = Field(default="tiny-synth", min_length=1, max_length=300)
    quorum: int = Field(default=2, ge=1, le=10)
    max_replicas: int = Field(default=5, ge=1, le=20)
    tolerance: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Largest score difference that still agrees (default: per model).",
    )
    agree_fraction: float = Field(default=0.98, gt=0, le=1)
    unit_size: int = Field(default=256, ge=1, le=5000)
    gold_per_unit: int = Field(default=8, ge=0, le=100)
    points_per_pair: float = Field(default=1.0, gt=0, le=1000)
    lease_seconds: int = Field(default=300, ge=5, le=86_400)
    trust_after: int = Field(default=10, ge=1, le=10_000)
    min_audit_rate: float = Field(
        default=0.1, gt=0, le=1, description="Never zero: trusted work is still audited."
    )
    gold: GoldSpec = Field(default_factory=GoldSpec)


class TaskOut(BaseModel):
    id: int
    name: str
    dataset_id: int
    kind: str
    model: str = Field(description="The pinned model; a model given as a path shows only its last part.")
    model_fingerprint: str
    preprocessing: dict[str, Any]
    quorum: int
    tolerance: float
    unit_size: int
    gold_per_unit: int
    n_units: int
    state: str


class AgentCreate(Strict):
    contributor: str = Field(pattern=NAME)
    name: str = Field(default="agent", pattern=NAME)
    version: str = Field(default="unknown", max_length=64)
    rate_per_minute: int | None = Field(default=None, ge=1, le=100_000)
    daily_quota: int | None = Field(default=None, ge=1, le=10_000_000)
    expires_in_days: float | None = Field(
        default=None, gt=0, le=3650, description="Token lifetime; none = no expiry."
    )


class AgentToken(BaseModel):
    agent_id: int
    contributor_id: int
    contributor: str
    token: str = Field(description="Shown once; the server keeps only its hash.")
    expires_at: dt.datetime | None = None


class RevokeOut(BaseModel):
    agent_id: int
    revoked: bool


class PauseIn(Strict):
    reason: str = Field(min_length=1, max_length=500, description="Why; the contributor sees it.")


class PauseOut(BaseModel):
    contributor_id: int
    paused: bool
    reversed_credits: int = Field(description="Credits reversed because they rested on this contributor.")


class UnpauseOut(BaseModel):
    contributor_id: int
    paused: bool


class RetiredCheckOut(BaseModel):
    """A hidden check that grades nobody any more (trusted contributors disputed it)."""

    task_id: int
    task: str
    item_id: int
    uid: str
    score: float | None = Field(description="The answer it had.")
    status: str
    source: str = Field(description="Where the answer came from: `server` or `operator`.")
    retired_at: dt.datetime
    retired_reason: str | None


# ---- label tasks (`vlcurate build --platform`) ------------------------------------------------

MAX_CLASSES = 1000
Uid = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")]


class LabelClass(Strict):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=500, description="What counts as this class.")


class LabelImage(Strict):
    uid: Uid
    image: str = Field(min_length=4, max_length=12_000_000, description="The image file, base64.")


class LabelCheck(Strict):
    """A hidden check's answer: a label the operator trusts (never a crowd answer)."""

    uid: Uid
    label: StrictInt = Field(ge=0, le=MAX_CLASSES - 1)
    source: Literal["builder", "dataset"] = Field(
        description="`builder`: confirmed by two independent models; `dataset`: an existing dataset's label."
    )


class LabelTaskCreate(Strict):
    name: str = Field(pattern=NAME)
    classes: list[LabelClass] = Field(min_length=2, max_length=MAX_CLASSES)
    images: list[LabelImage] = Field(min_length=1, max_length=20_000)
    checks: list[LabelCheck] = Field(min_length=1, max_length=20_000)
    quorum: int = Field(default=2, ge=1, le=10)
    max_replicas: int = Field(default=4, ge=1, le=20)
    agree_fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of a unit's labels two replicas must share to agree."
    )
    check_pass_fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of its hidden checks a submission must get right."
    )
    unit_size: int = Field(default=32, ge=2, le=1000)
    points_per_item: float = Field(default=1.0, gt=0, le=1000)
    lease_seconds: int = Field(default=300, ge=5, le=86_400)
    trust_after: int = Field(default=10, ge=1, le=10_000)
    min_audit_rate: float = Field(default=0.1, gt=0, le=1)


class LabelTaskOut(BaseModel):
    id: int
    name: str
    dataset_id: int
    n_items: int
    n_units: int
    n_checks: int
    classes: list[LabelClass]


class VerifiedLabel(BaseModel):
    uid: str
    label: int | None = Field(description="The label a quorum of independent replicas agreed on.")
    state: Literal["verified", "disputed", "inconclusive", "open", "unreadable"]
    check: bool = Field(description="Whether the operator's trusted label for it was a hidden check.")


class LabelsOut(BaseModel):
    task_id: int
    units: int
    units_verified: int
    units_inconclusive: int
    done: bool = Field(description="Every unit is verified or set aside.")
    labels: list[VerifiedLabel]


# ---- agents ----------------------------------------------------------------------------------


class Me(BaseModel):
    agent_id: int
    agent_name: str
    contributor_id: int
    contributor: str
    paused: bool
    pause_reason: str | None
    reputation: float
    points: float
    valid_results: int
    trusted: bool
    quota_left: int


class TaskSpec(BaseModel):
    id: int
    kind: str
    model: str
    model_fingerprint: str
    preprocessing: dict[str, Any]
    classes: list[LabelClass] | None = Field(
        default=None, description="A `label` task's classes: answer each item with an index into them."
    )


class UnitItem(BaseModel):
    item_id: str = Field(description="Opaque per-lease id; hidden checks look like any other item.")
    caption: str | None
    image_url: str = Field(description="Path on this server; fetch with the same bearer token.")


class Lease(BaseModel):
    lease_id: int
    unit_id: int
    task: TaskSpec
    deadline: dt.datetime
    heartbeat_seconds: int
    items: list[UnitItem]


# `POST /api/v1/leases`: an optional JSON body (`{"task_id": 3}` leases from that task only) and an
# optional `Idempotency-Key` header (a retry gets the lease the first try made).
LeaseBody = dict[str, Id] | None
LeaseKey = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9_\-:.]+$")]
LEASE_BODY: TypeAdapter[LeaseBody] = TypeAdapter(LeaseBody)
LEASE_KEY: TypeAdapter[str] = TypeAdapter(LeaseKey)


class HeartbeatOut(BaseModel):
    lease_id: int
    deadline: dt.datetime


class ItemResult(Strict):
    item_id: str = Field(min_length=1, max_length=64)
    # A JSON number (ints such as 0 or 1 too); never a string or a boolean.
    score: StrictFloat | None = Field(
        default=None, description="Cosine score in [-1, 1]; null when status is not ok."
    )
    status: ItemStatus = "ok"
    label: StrictInt | None = Field(
        default=None, ge=0, le=MAX_CLASSES - 1, description="`label` tasks: the class index; null otherwise."
    )

    @field_validator("score")
    @classmethod
    def _finite_in_range(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if not math.isfinite(v):
            raise ValueError("score must be a finite number")
        if not -1.0 <= v <= 1.0:
            raise ValueError("score must be within [-1, 1]")
        return v


class SubmissionIn(Strict):
    idempotency_key: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_\-:.]+$")
    model_fingerprint: str = Field(min_length=1, max_length=64)
    agent_version: str = Field(default="unknown", max_length=64)
    results: list[ItemResult] = Field(max_length=10_000)


class CycleIn(SubmissionIn):
    """A submission that also asks for the next unit (one request per unit cycle)."""

    next_task_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="Lease the next unit from this task."
    )


class SubmissionOut(BaseModel):
    submission_id: int
    lease_id: int
    unit_id: int
    state: Literal["pending", "valid", "invalid"]
    detail: str
    points_credited: float
    replayed: bool = False


class CycleOut(BaseModel):
    submission: SubmissionOut
    next: Lease | None = Field(description="The next unit, leased in the same call; null when none.")
    next_detail: str | None = Field(
        default=None, description="Why there is no next unit (no work now, paused, quota used up)."
    )


# ---- dashboard / public read ----------------------------------------------------------------


class ContributorOut(BaseModel):
    id: int
    name: str
    paused: bool
    pause_reason: str | None
    reputation: float
    points: float
    gold_pass: int
    gold_fail: int
    agree: int
    disagree: int
    rejected: int
    valid_results: int
    trusted: bool


class LedgerEntryOut(BaseModel):
    id: int
    contributor: str
    agent_id: int | None
    submission_id: int | None
    unit_id: int | None
    game_flag_id: int | None = None
    kind: str
    points: float
    pairs: int
    reason: str
    reverses_id: int | None
    created_at: dt.datetime

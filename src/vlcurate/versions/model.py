"""The records a version store reads and writes: pydantic at every file edge.

`VersionInfo` is `versions/VID/version.json`; its id is the hash of the fields listed in `ID_FIELDS`
(what the version *is*: its parent, message, plan and the digests of its samples and events), so a
version cannot be changed without changing its id, and an identical commit gets the same id.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STORE_FORMAT = 1
ID_FIELDS = ("format", "parent", "message", "plan_id", "content_digest", "events_digest")

Change = Literal["added", "removed", "changed"]
Presence = Literal["added", "changed", "unchanged", "removed", "absent"]


class LineageEvent(BaseModel):
    """Something that happened to one sample in one step: an operator kept, changed or dropped it
    (and why), a plan asked for it, a scorer scored it."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    op: str
    reason: str | None = None  # why (a drop reason, the plan action, "recaptioned: low clip score")
    dropped: bool = False  # the step removed the sample from the dataset
    params: dict[str, Any] = Field(default_factory=dict)  # the step's parameters, as given
    scores: dict[str, Any] = Field(default_factory=dict)  # what the step measured on this sample


class VersionInfo(BaseModel):
    """One version as stored in `versions/VID/version.json`."""

    model_config = ConfigDict(extra="allow")

    id: str
    format: int = STORE_FORMAT
    parent: str | None
    message: str
    plan_id: str | None = None
    created: str  # ISO time, UTC; not part of the id
    n_samples: int
    n_events: int
    content_digest: str  # hash of the sorted (sample id, content hash) pairs
    events_digest: str  # hash of the events, in stored order
    manifest_sha256: str
    events_sha256: str
    packs: list[str]  # content-addressed blobs this version reads sample content from
    new_samples: int = 0  # samples whose content was not in the parent (written to a new pack)

    def id_payload(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ID_FIELDS}


class HistoryEntry(BaseModel):
    """One version on the way to a sample's present: whether the sample was there, and what happened."""

    version: str
    parent: str | None
    message: str
    plan_id: str | None
    created: str
    presence: Presence
    content_hash: str | None  # hex, None when absent
    events: list[LineageEvent]


class SampleHistory(BaseModel):
    """The full history of one sample along a version's ancestry, oldest first, and its content now."""

    sample_id: str
    version: str
    history: list[HistoryEntry]
    sample: dict[str, Any] | None  # the content in `version`, None when not in it


class ReasonCount(BaseModel):
    change: Change
    op: str | None
    reason: str | None
    n: int


class VersionDiff(BaseModel):
    """What changed from version `a` to `b`, counted and grouped by the reason the lineage gives."""

    a: str
    b: str
    added: int
    removed: int
    changed: int
    unchanged: int
    by_reason: list[ReasonCount]
    examples: dict[str, list[str]]  # a few sample ids per change


class Attachment(BaseModel):
    """An immutable document stored beside a version (a validation decision, a plan, an eval summary)."""

    name: str
    version: str
    created: str
    payload: dict[str, Any]


class VerifyReport(BaseModel):
    """The result of checking every hash of a version."""

    version: str
    ok: bool
    problems: list[str]
    checked_files: int

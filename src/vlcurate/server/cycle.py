"""Report and request work in one call, as BOINC's scheduler RPC does: an agent's steady-state unit
cycle is one HTTP request that submits a lease's results and leases the next unit.

Two ways to carry it out, with the same decisions:
- `general`: `submissions.submit` then `leasing.lease`, each in its own transaction. SQLite always
  takes it; on PostgreSQL it handles whatever the fast path steps aside for.
- `fast` (PostgreSQL): one read (`vlc_snapshot`: caller, replica, unit, the unit's other submitted
  replicas and which of them are linked to the caller, the unit's hidden-check answers), the
  decisions in Python (`place_results`, `checks.grade`, `judge`, a `reputation.Tally`), then one
  write (`vlc_apply`), which re-checks that nothing moved since the read and leases the next unit in
  the same transaction. Two round trips instead of about twenty. Anything unusual -- a replay, a
  rejected or late submission, a failed hidden check (disputes, pausing), a disagreeing replica
  (reputation and reversal rules), a linked account in the quorum, or a race -- returns None and
  goes the general way, so those rules live in one place.

The next lease's idempotency key is derived from the submission's, so a retried cycle gets the
same next unit as the first attempt (or none, if that lease has ended since).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from vlcurate.server import checks, db, labels, leasing, links, reputation, schemas, submissions
from vlcurate.server.auth import Caller, caller_from_row
from vlcurate.server.errors import Conflict, Forbidden, NotFound, TooMany
from vlcurate.server.platform import Platform
from vlcurate.server.submissions import DETAIL, Rejected, place_results
from vlcurate.server.verify import credit_reason, judge

NO_WORK = "no unit can go to this contributor now"
STALE = "stale"  # `fast`: the unit moved between read and write; nothing was written, look again


def next_lease_key(submission_key: str) -> str:
    """The next lease's Idempotency-Key: fixed by the submission's key, so retries find it."""
    return "next-" + hashlib.sha256(submission_key.encode()).hexdigest()[:40]


# ---- the general path ---------------------------------------------------------------------------


def general(
    p: Platform,
    caller: Caller,
    lease_id: int,
    body: schemas.SubmissionIn,
    *,
    want_next: bool,
    next_task_id: int | None = None,
    reload_caller: Callable[[], Caller] | None = None,
    origin: str | None = None,
) -> schemas.CycleOut:
    """Submit, then (if asked) lease the next unit as the contributor now stands (it may be paused)."""
    out = submissions.submit(p, caller, lease_id, body)
    if not want_next:
        return schemas.CycleOut(submission=out, next=None)
    now_caller = reload_caller() if reload_caller is not None else caller
    try:
        nxt = leasing.lease(p, now_caller, next_task_id, next_lease_key(body.idempotency_key), origin=origin)
    except (Forbidden, TooMany, Conflict, NotFound) as exc:  # paused, quota, lease ended, no such task
        return schemas.CycleOut(submission=out, next=None, next_detail=exc.detail)
    return schemas.CycleOut(submission=out, next=nxt, next_detail=None if nxt is not None else NO_WORK)


# ---- the PostgreSQL fast path ---------------------------------------------------------------------

_SNAPSHOT = text("SELECT vlc_snapshot(CAST(:hash AS text), CAST(:lease AS bigint))")
_APPLY = text("SELECT vlc_apply(CAST(:plan AS jsonb), :scores, :verified)")


def snapshot(p: Platform, token_hash: str, lease_id: int) -> dict[str, Any]:
    """Everything a submission needs, in one statement outside any transaction (checked at apply)."""
    with p.autocommit.connect() as conn:
        return dict(conn.execute(_SNAPSHOT, {"hash": token_hash, "lease": lease_id}).scalar_one())


def caller_of(snap: dict[str, Any]) -> Caller:
    """The caller of a snapshot, or a 401 (unknown, revoked or expired token)."""
    row = snap.get("agent")
    if row is None:
        return caller_from_row(None)
    expires = row["expires_at"]
    return caller_from_row(
        SimpleNamespace(
            **{**row, "expires_at": None if expires is None else dt.datetime.fromisoformat(expires)}
        )
    )


def fast(
    p: Platform,
    caller: Caller,
    snap: dict[str, Any],
    lease_id: int,
    body: schemas.SubmissionIn,
    *,
    want_next: bool,
    next_task_id: int | None = None,
    origin: str | None = None,
) -> schemas.CycleOut | str | None:
    """The usual case in two round trips; None: take `general`; STALE: read again (nothing written)."""
    rep, unit = snap.get("replica"), snap.get("unit")
    if rep is None or unit is None or rep["agent_id"] != caller.agent_id or rep["state"] != "leased":
        return None  # not this agent's lease, or a replay: general answers those
    now = db.utcnow()
    if dt.datetime.fromisoformat(rep["deadline"]) < now:
        return None
    task = p.task(rep["task_id"])
    if body.model_fingerprint != task.model_fingerprint or labels.is_label(task):
        return None  # a label task always takes the general path
    pairs = p.unit_pairs(unit["first_item"], unit["last_item"])
    view = p.replica_view(lease_id, rep["seed"], pairs.item_ids, rep["gold_items"])
    try:
        scores, statuses = place_results(view, body.results, task)
    except Rejected:
        return None  # general rejects it again and counts it against the contributor
    known = {int(i): (s, st) for i, s, st in snap["gold"]}
    n = unit["n_items"]
    on_checks = checks.positions(unit["first_item"], n, rep["gold_items"], known)
    gold = checks.grade(task, on_checks, known, scores, statuses)
    if not gold.ok:
        return None  # a failed hidden check may pause the contributor: general decides
    if snap.get("linked") or len(snap["subs"]) > 1:
        return None  # linked accounts, or a unit past its first disagreement: general decides
    blob = scores.astype("<f4").tobytes()
    status_json = {str(k): v for k, v in statuses.items()}
    others = [
        SimpleNamespace(**{**s, "scores": base64.b64decode(s["scores"]), "statuses": s["statuses"] or {}})
        for s in snap["subs"]
    ]
    ours = SimpleNamespace(
        id=None,
        scores=blob,
        statuses=status_json,
        contributor_id=caller.contributor_id,
        agent_id=caller.agent_id,
        agent_version=body.agent_version,
        rid=lease_id,
    )
    subs = [*others, ours]
    verdict = judge(task, unit["target"], n, subs)
    if verdict.action == "verified" and len(verdict.group) != len(subs):
        return None  # someone disagreed: reputation and pausing rules, in general
    tally = reputation.Tally()
    if gold.checked:
        tally.add(caller.contributor_id, body.agent_version, gold_pass=1)
    unit_plan: dict[str, Any] = {"action": verdict.action}
    points = 0.0
    state, unit_state = "pending", "open"
    if verdict.action == "more":
        unit_plan["target"] = verdict.target
    elif verdict.action == "inconclusive":
        unit_state = "inconclusive"
    elif verdict.action == "verified":
        assert verdict.scores is not None
        state, unit_state = "valid", "verified"
        single = len(subs) == 1
        points = task.points_per_pair * n
        for s in subs:
            tally.add(s.contributor_id, s.agent_version, points=points, agree=0 if single else 1, valid=1)
        unit_plan.update(
            status=verdict.status,
            single=single,
            subs=[s.id for s in others],
            replicas=[s.rid for s in others],
            credits=[
                dict(
                    contributor_id=s.contributor_id,
                    agent_id=s.agent_id,
                    submission_id=s.id,
                    points=points,
                    pairs=n,
                )
                for s in subs
            ],
            reason=credit_reason(unit["id"], n, len(subs)),
        )
    response = dict(
        lease_id=lease_id,
        unit_id=unit["id"],
        state=state,
        detail=DETAIL[(unit_state, state)],
        points_credited=points,
    )
    plan: dict[str, Any] = dict(
        now=now.isoformat(),
        replica_id=lease_id,
        agent_id=caller.agent_id,
        contributor_id=caller.contributor_id,
        unit_id=unit["id"],
        task_id=task.id,
        expect=dict(
            state=unit["state"], target=unit["target"], issued=unit["issued"], subs=[s.id for s in others]
        ),
        key=body.idempotency_key,
        fingerprint=body.model_fingerprint,
        version=body.agent_version,
        statuses=status_json,
        gold_ok=True,
        gold_max_error=gold.max_error,
        state=state,
        replica_state="valid" if state == "valid" else "submitted",
        response=response,
        unit=unit_plan,
        contributors=tally.contributors(),
        versions=tally.versions(),
        version_shard=reputation.version_shard(),
    )
    next_detail = _plan_next(p, caller, plan, body, want_next, next_task_id, now, origin)
    verified = None if verdict.scores is None else verdict.scores.astype("<f4").tobytes()
    try:
        with p.autocommit.connect() as conn:
            got = conn.execute(
                _APPLY, {"plan": json.dumps(plan), "scores": blob, "verified": verified}
            ).scalar_one()
    except IntegrityError:
        return None  # e.g. the idempotency key raced in twice: general answers with the first
    if got.get("stale"):
        return STALE
    out = schemas.SubmissionOut(submission_id=got["submission_id"], **response)
    try:
        nxt = None if got.get("lease") is None else leasing.lease_from_pg(p, got["lease"])
    except TooMany as exc:  # over the caps on leases held
        return schemas.CycleOut(submission=out, next=None, next_detail=exc.detail)
    if want_next and nxt is None and next_detail is None:
        next_detail = NO_WORK
    return schemas.CycleOut(submission=out, next=nxt, next_detail=next_detail)


def _plan_next(
    p: Platform,
    caller: Caller,
    plan: dict[str, Any],
    body: schemas.SubmissionIn,
    want_next: bool,
    next_task_id: int | None,
    now: dt.datetime,
    origin: str | None,
) -> str | None:
    """Add the next lease to `plan` when the contributor may have one; else say why not."""
    if not want_next:
        return None
    links.note(p, caller.contributor_id, origin)
    try:
        task_ids = leasing.lease_precheck(p, caller, next_task_id, now)
    except (Forbidden, TooMany, NotFound) as exc:  # paused, quota used up, no such task
        return exc.detail
    if not task_ids:
        return NO_WORK
    args = leasing.pg_lease_args(p, caller, task_ids, next_lease_key(body.idempotency_key), now)
    plan["lease"] = {
        k: args[k] for k in ("tasks", "single_tasks", "start", "seed", "key", "max_agent", "max_contributor")
    }
    return None

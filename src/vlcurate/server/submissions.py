"""Taking a submission: check it is for the lease the agent holds, with exactly that lease's items
and the pinned model; store it once (idempotency key); run the hidden checks; verify the unit when
its quorum is in. A replayed key gets the first submission's answer and is never paid twice."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import JSON, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from vlcurate.server import checks, db, labels, reputation, schemas
from vlcurate.server.auth import Caller
from vlcurate.server.errors import BadRequest, Conflict, Forbidden, NotFound
from vlcurate.server.leasing import is_trusted
from vlcurate.server.ledger import credited_points
from vlcurate.server.platform import Platform, TaskInfo
from vlcurate.server.unit_view import ViewItem, replica_view
from vlcurate.server.verify import evaluate_unit

LINKED = "unit verified; another account linked to yours is in its quorum and was credited, not this one"

# What a submission's answer says, by (unit state afterwards, submission state).
DETAIL = {
    ("verified", "valid"): "unit verified; credited",
    ("verified", "invalid"): "the other replicas agreed on different scores; not credited",
    ("open", "pending"): "accepted; waiting for other replicas to agree",
    ("inconclusive", "pending"): "replicas never agreed; unit set aside",
}


class Rejected(BadRequest):
    """A submission that is wrong in content (not just malformed JSON): it counts against the contributor."""


def submit(p: Platform, caller: Caller, lease_id: int, body: schemas.SubmissionIn) -> schemas.SubmissionOut:
    try:
        return _submit(p, caller, lease_id, body)
    except IntegrityError:
        # the same key raced in twice (one row won), or it was used on another lease
        prior = _replay(p, caller, body.idempotency_key, lease_id)
        if prior is not None:
            return prior
        raise
    except Rejected:
        with db.begin_write(p.engine) as conn:
            reputation.record(conn, caller.contributor_id, caller.version, rejected=1)
            reputation.check_pause(conn, caller.contributor_id)
        raise


def _replay(p: Platform, caller: Caller, key: str, lease_id: int) -> schemas.SubmissionOut | None:
    """The first answer given for this key, when it was given for this lease; a 409 when the key
    was used on another lease (its submission would otherwise be dropped without a word)."""
    S = db.submissions
    with p.engine.connect() as conn:
        row = conn.execute(
            select(S.c.id, S.c.state, S.c.response, S.c.replica_id).where(
                S.c.agent_id == caller.agent_id, S.c.idempotency_key == key
            )
        ).first()
        if row is None:
            return None
        if row.replica_id != lease_id:
            raise Conflict(
                f"idempotency_key already used for lease {row.replica_id}; each submission needs its own"
            )
        points = credited_points(conn, row.id)
    out = dict(row.response)  # PostgreSQL's hot path stores it without the id (it has none yet)
    out.update(submission_id=row.id, state=row.state, points_credited=points, replayed=True)
    return schemas.SubmissionOut.model_validate(out)


def _submit(p: Platform, caller: Caller, lease_id: int, body: schemas.SubmissionIn) -> schemas.SubmissionOut:
    now = db.utcnow()
    U = db.units
    with db.begin_write(p.engine) as conn:
        lock = conn.dialect.name == "postgresql"
        rep = conn.execute(_REPLICA_PG if lock else _REPLICA, {"b_id": lease_id}).first()
        if rep is None or rep.agent_id != caller.agent_id:
            raise NotFound(f"lease {lease_id} is not held by this agent")
        if rep.state in ("submitted", "valid", "invalid"):
            prior = _replay(p, caller, body.idempotency_key, lease_id)
            if prior is not None:
                return prior
            raise Rejected(f"lease {lease_id} was already submitted (use the same idempotency_key to retry)")
        if caller.paused:
            raise Forbidden(f"contributor {caller.contributor!r} is paused: {caller.pause_reason}")
        if rep.state != "leased":
            raise Conflict(f"lease {lease_id} is {rep.state}; lease a new unit")
        deadline = db.aware(rep.deadline)
        if deadline < now:
            raise Conflict(f"lease {lease_id} expired at {deadline.isoformat()}")
        task = p.task(rep.task_id)
        if body.model_fingerprint != task.model_fingerprint and not labels.is_label(task):
            raise Rejected(
                f"model fingerprint {body.model_fingerprint[:12]}... is not the task's pinned model "
                f"{task.model} ({task.model_fingerprint[:12]}...)"
            )
        unit = conn.execute(_UNIT_PG if lock else _UNIT, {"b_id": rep.unit_id}).one()
        view = replica_view(
            p.secret,
            lease_id,
            rep.seed,
            p.unit_pairs(unit.first_item, unit.last_item).item_ids,
            rep.gold_items,
        )
        scores, statuses = place_results(view, body.results, task)
        gold, _, on_checks = checks.check_submission(
            conn, task, unit.first_item, unit.n_items, rep.gold_items, scores, statuses
        )
        # a trusted contributor failed: does the server still stand by those answers?
        if (
            not gold.ok
            and not labels.is_label(task)  # the operator's labels stand: there is no model to re-ask
            and is_trusted(caller.valid_streak, task.trust_after)
            and checks.dispute(
                conn, p, task, caller.contributor_id, gold.failed_items, on_checks, scores, statuses
            )
        ):
            gold, _, on_checks = checks.check_submission(
                conn, task, unit.first_item, unit.n_items, rep.gold_items, scores, statuses
            )
        state = "pending" if gold.ok else "invalid"
        sub_id = conn.execute(
            _INSERT_SUBMISSION,
            dict(
                replica_id=lease_id,
                agent_id=caller.agent_id,
                contributor_id=caller.contributor_id,
                unit_id=unit.id,
                idempotency_key=body.idempotency_key,
                model_fingerprint=body.model_fingerprint,
                agent_version=body.agent_version,
                scores=scores.astype("<f4").tobytes(),
                statuses={str(k): v for k, v in statuses.items()},
                gold_ok=gold.ok,
                gold_max_error=gold.max_error,
                state=state,
                received_at=now,
                response=None,
            ),
        ).scalar_one()
        conn.execute(
            _FINISH_REPLICA,
            {"b_id": lease_id, "b_state": "submitted" if gold.ok else "invalid", "b_now": now},
        )
        version = body.agent_version
        if gold.checked:
            reputation.record(
                conn, caller.contributor_id, version, gold_pass=int(gold.ok), gold_fail=int(not gold.ok)
            )
        if not gold.ok:
            conn.execute(update(U).where(U.c.id == unit.id).values(issued=U.c.issued - 1))
            reputation.check_pause(
                conn,
                caller.contributor_id,
                f" (latest: unit {unit.id}, {gold.failed} of {gold.checked} wrong)",
            )
            detail = f"failed {gold.failed} of {gold.checked} hidden checks; not credited"
        else:
            ev = evaluate_unit(conn, p, task, unit)
            state = ev.outcome.get(sub_id, "pending")
            detail = DETAIL[(ev.state, state)]
            if state == "valid" and sub_id not in ev.credited:
                detail = LINKED
        points = ev.points if gold.ok and state == "valid" and sub_id in ev.credited else 0.0
        response: dict[str, Any] = dict(
            submission_id=sub_id,
            lease_id=lease_id,
            unit_id=unit.id,
            state=state,
            detail=detail,
            points_credited=points,
        )
        conn.execute(_SAVE_RESPONSE, {"b_id": sub_id, "b_response": response})
    return schemas.SubmissionOut.model_validate(response)


# Hot statements, built once (building a Core statement costs more than running it here).
_R, _U, _S = db.replicas, db.units, db.submissions
_REPLICA = select(_R).where(_R.c.id == bindparam("b_id"))
_REPLICA_PG = _REPLICA.with_for_update()
_UNIT = select(_U).where(_U.c.id == bindparam("b_id"))
_UNIT_PG = _UNIT.with_for_update()
_INSERT_SUBMISSION = insert(_S).returning(_S.c.id)
_FINISH_REPLICA = (
    update(_R)
    .where(_R.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), finished_at=bindparam("b_now"))
)
_SAVE_RESPONSE = (
    update(_S).where(_S.c.id == bindparam("b_id")).values(response=bindparam("b_response", type_=JSON))
)


def place_results(
    view: list[ViewItem], results: list[schemas.ItemResult], task: TaskInfo | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Put each result (a score, or a label task's class index) at its stored position; every item
    exactly once, nothing else."""
    where = {v.public_id: v.position for v in view}
    label_task = task is not None and labels.is_label(task)
    what = "a label" if label_task else "a score"
    scores = np.full(len(view), np.nan, dtype=np.float32)
    statuses: dict[int, str] = {}
    seen: set[str] = set()
    unknown: list[str] = []
    for r in results:
        pos = where.get(r.item_id)
        if pos is None:
            unknown.append(r.item_id)
            continue
        if r.item_id in seen:
            raise Rejected(f"item {r.item_id} appears twice")
        seen.add(r.item_id)
        if label_task and task is not None:
            try:
                value = labels.result_value(task, r)
            except ValueError as exc:
                raise Rejected(str(exc)) from None
        elif r.label is not None:
            raise Rejected(f"item {r.item_id}: this task wants scores, not labels")
        else:
            value = r.score
        if r.status == "ok":
            if value is None:
                raise Rejected(f"item {r.item_id}: status ok needs {what}")
            scores[pos] = value
        else:
            if value is not None:
                raise Rejected(f"item {r.item_id}: status {r.status} must not carry {what}")
            statuses[pos] = r.status
    if unknown:
        raise Rejected(f"{len(unknown)} results for items not in this unit (e.g. {unknown[0]!r})")
    if len(seen) != len(view):
        raise Rejected(f"{len(view) - len(seen)} of the unit's {len(view)} items have no result")
    return scores, statuses


def me(p: Platform, caller: Caller) -> schemas.Me:
    C = db.contributors
    with p.engine.connect() as conn:
        c = conn.execute(select(C).where(C.c.id == caller.contributor_id)).one()
        a = conn.execute(
            select(db.agents.c.quota_used, db.agents.c.quota_day).where(db.agents.c.id == caller.agent_id)
        ).one()
        trust_after = conn.execute(
            select(db.tasks.c.trust_after).order_by(db.tasks.c.id.desc()).limit(1)
        ).scalar()
    today = db.utcnow().date().isoformat()
    used = a.quota_used if a.quota_day == today else 0
    return schemas.Me(
        agent_id=caller.agent_id,
        agent_name=caller.agent_name,
        contributor_id=c.id,
        contributor=c.name,
        paused=c.paused,
        pause_reason=c.pause_reason,
        reputation=reputation.reputation(c.gold_pass, c.gold_fail, c.agree, c.disagree),
        points=c.points,
        valid_results=c.n_valid,
        trusted=c.valid_streak >= (trust_after or 10),
        quota_left=max(0, caller.daily_quota - used),
    )

"""Leases: hand a unit replica to an agent, renew it, take it back, and requeue expired ones.

Who gets which unit is decided by the server at random (a random place in the task's unit order,
then the first leasable unit from there), so nobody can predict or steer it: two accounts that
lease one after the other land on one unit only by chance. Caps on the leases an agent and a
contributor hold at once stop hoarding; walking away (handing back, letting expire) is allowed --
the contributor may even get that unit again, so no unit can be starved -- but counted, and past
`max_walkaways_per_hour` leasing waits for the next hour, so re-leasing cannot be used to shop for
a unit either.

Correct with many agents at once: on PostgreSQL the unit row is taken with
`FOR UPDATE SKIP LOCKED` (concurrent leases pick different units without waiting); on SQLite every
write transaction starts with `BEGIN IMMEDIATE`, so leases are serialised. The partial unique index
`uq_replicas_unit_contributor_live` makes "one live replica of a unit per contributor" hold in the
database itself, whatever the code does.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, func, insert, literal_column, select, text, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db, labels, links, schemas
from vlcurate.server.auth import Caller
from vlcurate.server.errors import Conflict, Forbidden, NotFound, TooMany
from vlcurate.server.platform import Platform, UnitPairs
from vlcurate.server.unit_view import ViewItem, replica_view

HEARTBEAT_FRACTION = 3  # agents renew every lease_seconds / 3
CAPPED_RETRY_SECONDS = 5.0  # what a capped agent is told to wait before asking again


def is_trusted(valid_streak: int, trust_after: int) -> bool:
    return valid_streak >= trust_after


def audit_rate(valid_streak: int, min_rate: float) -> float:
    """BOINC's adaptive replication: audit probability falls as 1/streak, never below `min_rate`."""
    return max(min_rate, 1.0 / max(valid_streak, 1))


def lease(
    p: Platform,
    caller: Caller,
    task_id: int | None = None,
    lease_key: str | None = None,
    *,
    origin: str | None = None,
) -> schemas.Lease | None:
    """Lease one unit replica to `caller`, or None when no unit can go to this contributor now.

    With `lease_key` (the `Idempotency-Key` header) a retried request gets the lease its first try
    made, so a lease whose answer was lost in transit is not orphaned. `origin` is the client's
    address (linked accounts, `links`).
    """
    links.note(p, caller.contributor_id, origin)
    if lease_key is not None:
        prior = _lease_by_key(p, caller, lease_key)
        if prior is not None:
            return prior
        try:
            return _new_lease(p, caller, task_id, lease_key)
        except IntegrityError:  # the same key raced in twice: one lease was made, answer with it
            prior = _lease_by_key(p, caller, lease_key)
            if prior is None:
                raise
            return prior
    return _new_lease(p, caller, task_id, None)


def lease_precheck(p: Platform, caller: Caller, task_id: int | None, now: dt.datetime) -> list[int]:
    """The tasks to lease from; a 403 when the contributor is paused, a 429 when the quota is used
    up or it walked away from too many leases this hour, a 404 for a task that does not exist (on
    either database)."""
    if caller.paused:
        raise Forbidden(f"contributor {caller.contributor!r} is paused: {caller.pause_reason}")
    cap = p.settings.max_walkaways_per_hour
    if caller.walkaway_hour == walkaway_hour(now) and caller.walkaways >= cap:
        next_hour = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        raise TooMany(
            f"handed back or let expire {caller.walkaways} leases this hour (cap {cap}); "
            "leasing resumes next hour",
            (next_hour - now).total_seconds(),
        )
    task_ids = [p.task(task_id).id] if task_id is not None else p.active_task_ids()
    if not task_ids:
        return []
    today = now.date().isoformat()
    used = caller.quota_used if caller.quota_day == today else 0
    if used >= caller.daily_quota:
        tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
        raise TooMany(f"daily quota of {caller.daily_quota} leases used up", (tomorrow - now).total_seconds())
    return task_ids


def _new_lease(
    p: Platform, caller: Caller, task_id: int | None, lease_key: str | None
) -> schemas.Lease | None:
    now = db.utcnow()
    task_ids = lease_precheck(p, caller, task_id, now)
    if not task_ids:
        return None
    today = now.date().isoformat()
    if p.engine.dialect.name == "postgresql":
        # One statement, so its own transaction: no BEGIN/COMMIT round trips around it.
        with p.autocommit.connect() as conn:
            got = conn.execute(_LEASE_PG, pg_lease_args(p, caller, task_ids, lease_key, now)).scalar_one()
        return None if got is None else lease_from_pg(p, got)
    with db.begin_write(p.engine) as conn:
        _check_caps(conn, p, caller)
        unit = _pick_unit(conn, caller.contributor_id, task_ids, random.random())
        if unit is None:
            return None
        task = p.task(unit.task_id)
        streak = caller.valid_streak
        seed = random.getrandbits(62)
        target = unit.target
        if unit.issued == 0:
            # Fresh start for this unit: a trusted contributor's result may stand alone, unless audited.
            rng = random.Random(seed)
            single = is_trusted(streak, task.trust_after) and rng.random() >= audit_rate(
                streak, task.min_audit_rate
            )
            target = 1 if single else max(task.quorum, unit.target if unit.replicas_total else task.quorum)
        gold_items: list[int] = []  # the unit's checks are its own items (`checks`)
        deadline = now + dt.timedelta(seconds=task.lease_seconds)
        lease_id = conn.execute(
            _INSERT_REPLICA,
            dict(
                unit_id=unit.id,
                task_id=unit.task_id,
                contributor_id=caller.contributor_id,
                agent_id=caller.agent_id,
                seed=seed,
                gold_items=gold_items,
                state="leased",
                leased_at=now,
                deadline=deadline,
                lease_key=lease_key,
                finished_at=None,
            ),
        ).scalar_one()
        conn.execute(_BUMP_UNIT, {"b_unit": unit.id, "b_target": target})
        conn.execute(
            _COUNT_LEASE, {"b_agent": caller.agent_id, "b_today": today, "b_day": today, "b_now": now}
        )
    return _lease_response(
        p, lease_id, seed, gold_items, unit.id, unit.task_id, unit.first_item, unit.last_item, deadline
    )


_LEASE_PG = text(
    "SELECT vlc_lease(CAST(:agent AS bigint), CAST(:contributor AS bigint), CAST(:tasks AS bigint[]), "
    "CAST(:single_tasks AS bigint[]), CAST(:start AS float8), CAST(:seed AS bigint), CAST(:key AS text), "
    "CAST(:now AS timestamptz), CAST(:max_agent AS int), CAST(:max_contributor AS int))"
)


def walkaway_hour(now: dt.datetime) -> str:
    """The UTC hour walk-aways are counted in."""
    return now.strftime("%Y-%m-%dT%H")


def _check_caps(conn: Connection, p: Platform, caller: Caller) -> None:
    """SQLite: a 429 when the agent or its contributor holds as many leases as allowed (`vlc_lease`
    counts the same on PostgreSQL)."""
    R = db.replicas
    for who, col, cap in (
        ("agent", R.c.agent_id == caller.agent_id, p.settings.max_leases_per_agent),
        ("contributor", R.c.contributor_id == caller.contributor_id, p.settings.max_leases_per_contributor),
    ):
        held = conn.execute(
            select(func.count()).select_from(R).where(col, R.c.state == literal_column("'leased'"))
        ).scalar_one()
        if held >= cap:
            raise TooMany(f"this {who} holds {held} active leases (cap {cap})", CAPPED_RETRY_SECONDS)


def pg_lease_args(
    p: Platform, caller: Caller, task_ids: list[int], lease_key: str | None, now: dt.datetime
) -> dict[str, Any]:
    """The arguments of `vlc_lease` (PostgreSQL): the decisions that need Python made up front.

    The trust and audit dice are rolled per task as `_new_lease` rolls them for a fresh unit; the
    random place in the unit order to pick from; the caps on leases held.
    """
    seed = random.getrandbits(62)
    u = random.Random(seed).random()
    single: list[int] = []
    for tid in task_ids:
        task = p.task(tid)
        if is_trusted(caller.valid_streak, task.trust_after) and u >= audit_rate(
            caller.valid_streak, task.min_audit_rate
        ):
            single.append(tid)
    return dict(
        agent=caller.agent_id,
        contributor=caller.contributor_id,
        tasks=task_ids,
        single_tasks=single,
        start=random.random(),
        seed=seed,
        key=lease_key,
        now=now,
        max_agent=p.settings.max_leases_per_agent,
        max_contributor=p.settings.max_leases_per_contributor,
    )


def lease_from_pg(p: Platform, got: dict[str, Any]) -> schemas.Lease:
    """The lease `vlc_lease` made, as the agent sees it (its pairs go to the per-process cache); a
    429 when it refused because of the caps on leases held."""
    if "capped" in got:
        raise TooMany(got["capped"], CAPPED_RETRY_SECONDS)
    items = got["items"]
    p.remember_unit_pairs(
        got["first_item"], got["last_item"], UnitPairs(tuple(i for i, _ in items), tuple(c for _, c in items))
    )
    return _lease_response(
        p,
        got["lease_id"],
        got["seed"],
        got["gold_items"],
        got["unit_id"],
        got["task_id"],
        got["first_item"],
        got["last_item"],
        dt.datetime.fromisoformat(got["deadline"]),
    )


def _lease_by_key(p: Platform, caller: Caller, key: str) -> schemas.Lease | None:
    R, U = db.replicas, db.units
    with p.engine.connect() as conn:
        row = conn.execute(
            select(
                R.c.id,
                R.c.seed,
                R.c.gold_items,
                R.c.state,
                R.c.deadline,
                U.c.id.label("unit_id"),
                U.c.task_id,
                U.c.first_item,
                U.c.last_item,
            )
            .join(U, U.c.id == R.c.unit_id)
            .where(R.c.agent_id == caller.agent_id, R.c.lease_key == key)
        ).first()
    if row is None:
        return None
    if row.state != "leased" or db.aware(row.deadline) < db.utcnow():
        raise Conflict(f"the lease made with this Idempotency-Key is {row.state}; use a new key")
    return _lease_response(
        p,
        row.id,
        row.seed,
        row.gold_items,
        row.unit_id,
        row.task_id,
        row.first_item,
        row.last_item,
        db.aware(row.deadline),
    )


def _lease_response(
    p: Platform,
    lease_id: int,
    seed: int,
    gold_items: list[int],
    unit_id: int,
    task_id: int,
    first: int,
    last: int,
    deadline: dt.datetime,
) -> schemas.Lease:
    task = p.task(task_id)
    pairs = p.unit_pairs(first, last)
    view = p.replica_view(lease_id, seed, pairs.item_ids, gold_items)
    gold_captions = _gold_captions(p, gold_items)
    return schemas.Lease(
        lease_id=lease_id,
        unit_id=unit_id,
        task=schemas.TaskSpec(
            id=task.id,
            kind=task.kind,
            model=task.model,
            model_fingerprint=task.model_fingerprint,
            preprocessing=task.preprocessing,
            classes=labels.task_classes(task),
        ),
        deadline=deadline,
        heartbeat_seconds=max(1, task.lease_seconds // HEARTBEAT_FRACTION),
        items=[
            schemas.UnitItem(
                item_id=v.public_id,
                caption=gold_captions[v.item_id] if v.is_gold else pairs.captions[v.position],
                image_url=f"/api/v1/leases/{lease_id}/images/{v.public_id}",
            )
            for v in view
        ],
    )


def _gold_captions(p: Platform, gold_items: list[int]) -> dict[int, str | None]:
    """Captions of a legacy replica's extra check items (leases made before in-unit checks)."""
    if not gold_items:
        return {}
    with p.engine.connect() as conn:
        return dict(
            conn.execute(select(db.items.c.id, db.items.c.caption).where(db.items.c.id.in_(gold_items))).all()
        )


@dataclass(frozen=True)
class _Unit:
    id: int
    task_id: int
    first_item: int
    last_item: int
    target: int
    issued: int
    replicas_total: int


# The hot statements are built once: building a Core statement costs more than running it here.
_u, _r, _A = db.units, db.replicas, db.agents
# One task at a time, lowest first, then the first leasable unit at or after a random place in its
# seq order (else the first before it), as `vlc_lease` does on PostgreSQL. The partial index
# `ix_units_open` holds exactly the units with "state = 'open' AND issued < target", which is why
# those terms are written out here, not bound; the contributor test is a scalar subquery: one probe
# of uq_replicas_unit_contributor_live per candidate.
_PICK_WHERE = (
    "SELECT un.id, un.task_id, un.first_item, un.last_item, un.target, un.issued, un.replicas_total "
    "FROM units un WHERE un.state = 'open' AND un.issued < un.target AND un.task_id = :b_task "
    "AND (SELECT 1 FROM replicas r WHERE r.unit_id = un.id AND r.contributor_id = :b_contributor "
    f"AND r.{db.LIVE_REPLICA} LIMIT 1) IS NULL "
)
_PICK_AFTER = text(_PICK_WHERE + "AND un.seq >= :b_start ORDER BY un.seq LIMIT 1")
_PICK_BEFORE = text(_PICK_WHERE + "AND un.seq < :b_start ORDER BY un.seq LIMIT 1")
_LAST_SEQ = text("SELECT max(seq) FROM units WHERE task_id = :b_task")
_INSERT_REPLICA = insert(_r).returning(_r.c.id)
_BUMP_UNIT = (
    update(_u)
    .where(_u.c.id == bindparam("b_unit"))
    .values(issued=_u.c.issued + 1, replicas_total=_u.c.replicas_total + 1, target=bindparam("b_target"))
)
# The quota counter restarts each UTC day; the database does the arithmetic so that two leases of
# one agent at the same moment both count.
_COUNT_LEASE = (
    update(_A)
    .where(_A.c.id == bindparam("b_agent"))
    .values(
        quota_used=case((_A.c.quota_day == bindparam("b_today"), _A.c.quota_used + 1), else_=1),
        quota_day=bindparam("b_day"),
        last_seen=bindparam("b_now"),
    )
)


def _pick_unit(conn: Connection, contributor_id: int, task_ids: list[int], start: float) -> _Unit | None:
    """SQLite (writes are serialised, so no row lock is needed); PostgreSQL picks in `vlc_lease`.
    `start` in [0, 1) is the random place in each task's unit order."""
    for task_id in sorted(set(task_ids)):
        last = conn.execute(_LAST_SEQ, {"b_task": task_id}).scalar()
        args = {"b_task": task_id, "b_contributor": contributor_id, "b_start": int(start * ((last or 0) + 1))}
        row = conn.execute(_PICK_AFTER, args).first() or conn.execute(_PICK_BEFORE, args).first()
        if row is not None:
            return _Unit(*row)
    return None


def heartbeat(p: Platform, caller: Caller, lease_id: int) -> schemas.HeartbeatOut:
    now = db.utcnow()
    with db.begin_write(p.engine) as conn:
        row = _held(conn, caller, lease_id, now)
        task = p.task(row.task_id)
        deadline = now + dt.timedelta(seconds=task.lease_seconds)
        conn.execute(update(db.replicas).where(db.replicas.c.id == lease_id).values(deadline=deadline))
    return schemas.HeartbeatOut(lease_id=lease_id, deadline=deadline)


def _held(conn: Connection, caller: Caller, lease_id: int, now: dt.datetime) -> Row[Any]:
    row = conn.execute(select(db.replicas).where(db.replicas.c.id == lease_id)).first()
    if row is None or row.agent_id != caller.agent_id:
        raise NotFound(f"lease {lease_id} is not held by this agent")
    if row.state != "leased":
        raise Conflict(f"lease {lease_id} is {row.state}, not active")
    if db.aware(row.deadline) < now:
        raise Conflict(f"lease {lease_id} expired at {db.aware(row.deadline).isoformat()}")
    return row


def release(p: Platform, caller: Caller, lease_id: int) -> None:
    """Hand a lease back: the replica goes to someone else at once (a walk-away, counted)."""
    with db.begin_write(p.engine) as conn:
        unit_id = conn.execute(
            update(db.replicas)
            .where(
                db.replicas.c.id == lease_id,
                db.replicas.c.agent_id == caller.agent_id,
                db.replicas.c.state == "leased",
            )
            .values(state="released", finished_at=db.utcnow())
            .returning(db.replicas.c.unit_id)
        ).scalar_one_or_none()
        if unit_id is None:
            raise Conflict(f"lease {lease_id} is not an active lease of this agent")
        conn.execute(update(db.units).where(db.units.c.id == unit_id).values(issued=db.units.c.issued - 1))
        _count_walkaways(conn, {caller.contributor_id: 1}, db.utcnow())


def _count_walkaways(conn: Connection, counts: dict[int, int], now: dt.datetime) -> None:
    C = db.contributors
    hour = walkaway_hour(now)
    for cid, n in sorted(counts.items()):
        conn.execute(
            update(C)
            .where(C.c.id == cid)
            .values(
                walkaways=case((C.c.walkaway_hour == hour, C.c.walkaways + n), else_=n),
                walkaway_hour=hour,
            )
        )


def expire_leases(p: Platform) -> int:
    """Requeue every replica whose deadline passed; returns how many."""
    now = db.utcnow()
    with db.begin_write(p.engine) as conn:
        ended = conn.execute(
            update(db.replicas)
            # 'leased' written out, so that the partial index ix_replicas_leased applies
            .where(db.replicas.c.state == literal_column("'leased'"), db.replicas.c.deadline < now)
            .values(state="expired", finished_at=now)
            .returning(db.replicas.c.unit_id, db.replicas.c.contributor_id)
        ).all()
        counts: dict[int, int] = {}
        walked: dict[int, int] = {}
        for uid, cid in ended:
            counts[uid] = counts.get(uid, 0) + 1
            walked[cid] = walked.get(cid, 0) + 1
        for uid, n in sorted(counts.items()):
            conn.execute(update(db.units).where(db.units.c.id == uid).values(issued=db.units.c.issued - n))
        _count_walkaways(conn, walked, now)
    return len(ended)


def lease_view(p: Platform, caller: Caller, lease_id: int) -> list[ViewItem]:
    """The lease's items, for serving images; only the holder may look, and only while it is active."""
    with p.engine.connect() as conn:
        row = conn.execute(select(db.replicas).where(db.replicas.c.id == lease_id)).first()
        if row is None or row.agent_id != caller.agent_id:
            raise NotFound(f"lease {lease_id} is not held by this agent")
        if row.state != "leased":
            raise Conflict(f"lease {lease_id} is {row.state}; its images are no longer served")
        if db.aware(row.deadline) < db.utcnow():
            raise Conflict(f"lease {lease_id} expired at {db.aware(row.deadline).isoformat()}")
        unit = conn.execute(
            select(db.units.c.first_item, db.units.c.last_item).where(db.units.c.id == row.unit_id)
        ).one()
    return replica_view(
        p.secret, lease_id, row.seed, p.unit_pairs(unit.first_item, unit.last_item).item_ids, row.gold_items
    )


def image_bytes(p: Platform, item_id: int) -> tuple[bytes, str | None]:
    with p.engine.connect() as conn:
        row = conn.execute(
            select(db.item_images.c.data, db.item_images.c.ext).where(db.item_images.c.item_id == item_id)
        ).first()
    if row is None:
        raise NotFound("this item has no image")
    return bytes(row.data), row.ext

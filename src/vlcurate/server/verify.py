"""Deciding what is true: hidden checks on each submission, then a quorum of agreeing replicas per
unit. Two results agree when their scores differ by at most the task's tolerance (what the pinned
model allows between honest machines, e.g. bf16 against fp32) on at least `agree_fraction` of the
pairs, and both fail on the same pairs."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from vlcurate.server import db, ledger, reputation
from vlcurate.server.context import Platform, TaskInfo

GOLD_PROMOTE_PER_UNIT = 2  # verified pairs that join the hidden-check pool, so it keeps growing


@dataclass(frozen=True)
class GoldOutcome:
    ok: bool
    checked: int
    failed: int
    max_error: float | None


def check_gold(
    conn: Connection,
    task: TaskInfo,
    gold_items: list[int],
    scores: np.ndarray,
    statuses: dict[int, str],
    offset: int,
) -> GoldOutcome:
    """Compare the answers on the replica's hidden items with the known ones."""
    if not gold_items:
        return GoldOutcome(True, 0, 0, None)
    known = {
        r.item_id: (r.score, r.status)
        for r in conn.execute(
            select(db.gold.c.item_id, db.gold.c.score, db.gold.c.status).where(
                db.gold.c.task_id == task.id, db.gold.c.item_id.in_(gold_items)
            )
        )
    }
    failed = checked = 0
    worst = 0.0
    for k, item in enumerate(gold_items):
        if item not in known:
            continue  # withdrawn since the lease (its unit was reopened): not a check any more
        checked += 1
        want_score, want_status = known[item]
        got = float(scores[offset + k])
        got_status = statuses.get(offset + k, "ok")
        if want_status != "ok" or want_score is None:
            failed += got_status == "ok"
            continue
        if got_status != "ok" or not np.isfinite(got):
            failed += 1
            continue
        err = abs(got - float(want_score))
        worst = max(worst, err)
        failed += err > task.tolerance
    return GoldOutcome(failed == 0, checked, failed, worst if checked else None)


def agree(a: np.ndarray, b: np.ndarray, tolerance: float, fraction: float) -> bool:
    both_missing = np.isnan(a) & np.isnan(b)
    close = np.abs(a - b) <= tolerance  # NaN compares False
    return bool(np.mean(both_missing | close) >= fraction) if len(a) else True


def largest_agreeing_group(vectors: list[np.ndarray], tolerance: float, fraction: float) -> list[int]:
    """The biggest set of replicas that all agree pairwise (greedy from each seed; first wins ties)."""
    n = len(vectors)
    ok = [[i == j or agree(vectors[i], vectors[j], tolerance, fraction) for j in range(n)] for i in range(n)]
    best: list[int] = []
    for i in range(n):
        group = [i]
        for j in range(n):
            if j != i and all(ok[j][g] for g in group):
                group.append(j)
        if len(group) > len(best):
            best = sorted(group)
    return best


_SUBMITTED = (
    select(
        db.submissions.c.id,
        db.submissions.c.scores,
        db.submissions.c.statuses,
        db.submissions.c.contributor_id,
        db.submissions.c.agent_id,
        db.submissions.c.agent_version,
        db.replicas.c.id.label("rid"),
    )
    .join(db.replicas, db.replicas.c.id == db.submissions.c.replica_id)
    .where(db.submissions.c.unit_id == bindparam("b_unit"), db.replicas.c.state == "submitted")
    .order_by(db.submissions.c.id)
)  # built once: the statement is run on every submission


@dataclass(frozen=True)
class Evaluation:
    """The unit's state afterwards ('open', 'verified', 'inconclusive') and each submission's fate."""

    state: str
    outcome: dict[int, str]
    points: float = 0.0


def evaluate_unit(conn: Connection, p: Platform, task: TaskInfo, unit: Any) -> Evaluation:
    """Once enough replicas are in: verify and pay, ask for another replica, or give up."""
    S, R = db.submissions, db.replicas
    subs = conn.execute(_SUBMITTED, {"b_unit": unit.id}).all()
    if len(subs) < unit.target:
        return Evaluation("open", {})
    n = unit.n_items
    vectors = [np.frombuffer(s.scores, dtype="<f4")[:n].astype(np.float64) for s in subs]
    group = largest_agreeing_group(vectors, task.tolerance, task.agree_fraction)
    if len(group) < min(task.quorum, unit.target):
        if len(subs) >= task.max_replicas:
            conn.execute(update(db.units).where(db.units.c.id == unit.id).values(state="inconclusive"))
            return Evaluation("inconclusive", {})
        conn.execute(update(db.units).where(db.units.c.id == unit.id).values(target=len(subs) + 1))
        return Evaluation("open", {})
    members = [subs[i] for i in group]
    stacked = np.stack([vectors[i] for i in group])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair nobody could score stays NaN
        verified = np.nanmean(stacked, axis=0)
    status: dict[str, str] = {}
    for pos in np.flatnonzero(np.isnan(verified)):
        votes = Counter(m.statuses.get(str(pos), "decode_error") for m in members)
        status[str(int(pos))] = votes.most_common(1)[0][0]
    single = len(group) == 1
    now = db.utcnow()
    conn.execute(
        update(db.units)
        .where(db.units.c.id == unit.id)
        .values(
            state="verified",
            verified_scores=verified.astype("<f4").tobytes(),
            verified_status=status,
            verified_at=now,
            single_trusted=single,
        )
    )
    points = task.points_per_pair * n
    how = "a trusted result, audit skipped" if single else f"{len(group)} agreeing replicas"
    conn.execute(update(S).where(S.c.id.in_([m.id for m in members])).values(state="valid"))
    conn.execute(update(R).where(R.c.id.in_([m.rid for m in members])).values(state="valid", finished_at=now))
    ledger.credit_group(
        conn,
        members,
        unit_id=unit.id,
        points=points,
        pairs=n,
        reason=f"validated unit {unit.id}: {n} pairs, {how}",
    )
    reputation.record(
        conn,
        [m.contributor_id for m in members],
        [m.agent_version for m in members],
        agree=0 if single else 1,
        valid=1,
    )
    outcome = {m.id: "valid" for m in members}
    for i, s in enumerate(subs):
        if i in group:
            continue
        outcome[s.id] = "invalid"
        conn.execute(update(S).where(S.c.id == s.id).values(state="invalid"))
        conn.execute(update(R).where(R.c.id == s.rid).values(state="invalid", finished_at=now))
        reputation.record(conn, s.contributor_id, s.agent_version, disagree=1)
        reputation.check_pause(conn, s.contributor_id, f" (latest: unit {unit.id})")
    _promote_gold(conn, task, unit, verified, status)
    return Evaluation("verified", outcome, points)


def _promote_gold(
    conn: Connection, task: TaskInfo, unit: Any, verified: np.ndarray, status: dict[str, str]
) -> None:
    if task.gold_per_unit <= 0:
        return
    ok = [k for k in range(len(verified)) if np.isfinite(verified[k])]
    rng = random.Random(unit.id)
    for k in rng.sample(ok, min(GOLD_PROMOTE_PER_UNIT, len(ok))):
        item_id = unit.first_item + k
        exists = conn.execute(
            select(db.gold.c.id).where(db.gold.c.task_id == task.id, db.gold.c.item_id == item_id)
        ).first()
        if exists is None:
            conn.execute(
                insert(db.gold).values(
                    task_id=task.id, item_id=item_id, score=float(verified[k]), status="ok", source="verified"
                )
            )

"""Deciding what is true: hidden checks on each submission, then a quorum of agreeing replicas per
unit. Two results agree when their scores differ by at most the task's tolerance (what the pinned
model allows between honest machines, e.g. bf16 against fp32) on at least `agree_fraction` of the
pairs, and both fail on the same pairs."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Sequence
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
    return grade_gold(task, gold_items, known, scores, statuses, offset)


def grade_gold(
    task: TaskInfo,
    gold_items: list[int],
    known: dict[int, tuple[float | None, str]],
    scores: np.ndarray,
    statuses: dict[int, str],
    offset: int,
) -> GoldOutcome:
    """`check_gold` once the known answers ({item id: (score, status)}) are at hand."""
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


@dataclass(frozen=True)
class Verdict:
    """What the submitted replicas of a unit decide, before anything is written.

    `action` is 'wait' (not all replicas in), 'more' (no quorum yet: want `target` replicas),
    'inconclusive' (gave up) or 'verified' (`group` indexes the agreeing submissions; `scores` and
    `status` are the verified values).
    """

    action: str
    target: int = 0
    group: tuple[int, ...] = ()
    scores: np.ndarray | None = None
    status: dict[str, str] | None = None


def judge(task: TaskInfo, target: int, n_items: int, subs: Sequence[Any]) -> Verdict:
    """Decide a unit from its submitted replicas (`subs` in id order, each with scores and statuses)."""
    if len(subs) < target:
        return Verdict("wait")
    vectors = [np.frombuffer(s.scores, dtype="<f4")[:n_items].astype(np.float64) for s in subs]
    group = largest_agreeing_group(vectors, task.tolerance, task.agree_fraction)
    if len(group) < min(task.quorum, target):
        if len(subs) >= task.max_replicas:
            return Verdict("inconclusive")
        return Verdict("more", target=len(subs) + 1)
    stacked = np.stack([vectors[i] for i in group])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair nobody could score stays NaN
        verified = np.nanmean(stacked, axis=0)
    status: dict[str, str] = {}
    for pos in np.flatnonzero(np.isnan(verified)):
        votes = Counter(subs[i].statuses.get(str(pos), "decode_error") for i in group)
        status[str(int(pos))] = votes.most_common(1)[0][0]
    return Verdict("verified", group=tuple(group), scores=verified, status=status)


def credit_reason(unit_id: int, n_items: int, group_size: int) -> str:
    how = "a trusted result, audit skipped" if group_size == 1 else f"{group_size} agreeing replicas"
    return f"validated unit {unit_id}: {n_items} pairs, {how}"


def evaluate_unit(conn: Connection, p: Platform, task: TaskInfo, unit: Any) -> Evaluation:
    """Once enough replicas are in: verify and pay, ask for another replica, or give up."""
    S, R = db.submissions, db.replicas
    subs = conn.execute(_SUBMITTED, {"b_unit": unit.id}).all()
    n = unit.n_items
    verdict = judge(task, unit.target, n, subs)
    if verdict.action == "wait":
        return Evaluation("open", {})
    if verdict.action == "inconclusive":
        conn.execute(update(db.units).where(db.units.c.id == unit.id).values(state="inconclusive"))
        return Evaluation("inconclusive", {})
    if verdict.action == "more":
        conn.execute(update(db.units).where(db.units.c.id == unit.id).values(target=verdict.target))
        return Evaluation("open", {})
    group = list(verdict.group)
    members = [subs[i] for i in group]
    assert verdict.scores is not None and verdict.status is not None
    verified, status = verdict.scores, verdict.status
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
    conn.execute(update(S).where(S.c.id.in_([m.id for m in members])).values(state="valid"))
    conn.execute(update(R).where(R.c.id.in_([m.rid for m in members])).values(state="valid", finished_at=now))
    ledger.credit_group(
        conn,
        members,
        unit_id=unit.id,
        points=points,
        pairs=n,
        reason=credit_reason(unit.id, n, len(group)),
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
    for item_id, score in gold_to_promote(task, unit.id, unit.first_item, verified):
        exists = conn.execute(
            select(db.gold.c.id).where(db.gold.c.task_id == task.id, db.gold.c.item_id == item_id)
        ).first()
        if exists is None:
            conn.execute(
                insert(db.gold).values(
                    task_id=task.id, item_id=item_id, score=score, status="ok", source="verified"
                )
            )


def gold_to_promote(
    task: TaskInfo, unit_id: int, first_item: int, verified: np.ndarray
) -> list[tuple[int, float]]:
    """(item id, verified score) of the pairs of a verified unit that join the hidden-check pool."""
    if task.gold_per_unit <= 0:
        return []
    ok = [k for k in range(len(verified)) if np.isfinite(verified[k])]
    rng = random.Random(unit_id)
    return [(first_item + k, float(verified[k])) for k in rng.sample(ok, min(GOLD_PROMOTE_PER_UNIT, len(ok)))]

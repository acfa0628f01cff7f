"""Deciding what is true: hidden checks on each submission (`checks`), then a quorum of agreeing,
independent replicas per unit. Two results agree when their scores differ by at most the task's
tolerance (what the pinned model allows between honest machines, e.g. bf16 against fp32) on at
least `agree_fraction` of the pairs, and both fail on the same pairs. Linked accounts (`links`)
count as one voice, and only the first of them is credited."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from vlcurate.server import db, labels, ledger, links, reputation
from vlcurate.server.platform import Platform, TaskInfo


def agree(a: np.ndarray, b: np.ndarray, tolerance: float, fraction: float) -> bool:
    both_missing = np.isnan(a) & np.isnan(b)
    close = np.abs(a - b) <= tolerance  # NaN compares False
    return bool(np.mean(both_missing | close) >= fraction) if len(a) else True


def largest_agreeing_group(
    vectors: list[np.ndarray],
    tolerance: float,
    fraction: float,
    weight: Callable[[list[int]], int] = len,
) -> list[int]:
    """The set of replicas that all agree pairwise with the most weight (independent voices; by
    default members), greedy from each seed; the first wins ties."""
    n = len(vectors)
    ok = [[i == j or agree(vectors[i], vectors[j], tolerance, fraction) for j in range(n)] for i in range(n)]
    best: list[int] = []
    best_key = (-1, -1)
    for i in range(n):
        group = [i]
        for j in range(n):
            if j != i and all(ok[j][g] for g in group):
                group.append(j)
        key = (weight(sorted(group)), len(group))
        if key > best_key:
            best, best_key = sorted(group), key
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
    """The unit's state afterwards ('open', 'verified', 'inconclusive'), each submission's fate, and
    which submissions were paid `points` (a linked account's agreeing submission is valid, unpaid)."""

    state: str
    outcome: dict[int, str]
    points: float = 0.0
    credited: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Verdict:
    """What the submitted replicas of a unit decide, before anything is written.

    `action` is 'wait' (not all replicas in), 'more' (no quorum of independent voices yet: want
    `target` replicas), 'inconclusive' (gave up) or 'verified' (`group` indexes the agreeing
    submissions, `credited` those paid: the first of each set of linked accounts; `scores` and
    `status` are the verified values).
    """

    action: str
    target: int = 0
    group: tuple[int, ...] = ()
    credited: tuple[int, ...] = ()
    scores: np.ndarray | None = None
    status: dict[str, str] | None = None


def judge(
    task: TaskInfo,
    target: int,
    n_items: int,
    subs: Sequence[Any],
    linked: set[frozenset[int]] | None = None,
) -> Verdict:
    """Decide a unit from its submitted replicas (`subs` in id order, each with scores, statuses and
    contributor_id); `linked` holds the pairs of contributors that count as one voice."""
    if len(subs) < target:
        return Verdict("wait")
    pairs = linked or set()
    cids = [s.contributor_id for s in subs]

    def voices(group: list[int]) -> list[list[int]]:
        return [[group[k] for k in v] for v in links.voices([cids[g] for g in group], pairs)]

    vectors = [np.frombuffer(s.scores, dtype="<f4")[:n_items].astype(np.float64) for s in subs]
    group = largest_agreeing_group(
        vectors, task.tolerance, task.agree_fraction, weight=lambda g: len(voices(g))
    )
    if len(voices(group)) < min(task.quorum, target):
        if len(subs) >= task.max_replicas:
            return Verdict("inconclusive")
        return Verdict("more", target=len(subs) + 1)
    stacked = np.stack([vectors[i] for i in group])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair nobody could score stays NaN
        verified = labels.majority(stacked) if labels.is_label(task) else np.nanmean(stacked, axis=0)
    status: dict[str, str] = {}
    for pos in np.flatnonzero(np.isnan(verified)):
        votes = Counter(subs[i].statuses.get(str(pos), "decode_error") for i in group)
        status[str(int(pos))] = votes.most_common(1)[0][0]
    credited = tuple(sorted(min(v) for v in voices(group)))
    return Verdict("verified", group=tuple(group), credited=credited, scores=verified, status=status)


def credit_reason(unit_id: int, n_items: int, group_size: int) -> str:
    how = "a trusted result, audit skipped" if group_size == 1 else f"{group_size} agreeing replicas"
    return f"validated unit {unit_id}: {n_items} pairs, {how}"


def evaluate_unit(conn: Connection, p: Platform, task: TaskInfo, unit: Any) -> Evaluation:
    """Once enough replicas are in: verify and pay, ask for another replica, or give up."""
    S, R = db.submissions, db.replicas
    subs = conn.execute(_SUBMITTED, {"b_unit": unit.id}).all()
    n = unit.n_items
    linked = links.linked_pairs(conn, [s.contributor_id for s in subs]) if len(subs) > 1 else set()
    verdict = judge(task, unit.target, n, subs, linked)
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
    paid = [subs[i] for i in verdict.credited]
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
        paid,
        unit_id=unit.id,
        points=points,
        pairs=n,
        reason=credit_reason(unit.id, n, len(group)),
    )
    reputation.record(  # a linked account's unpaid agreement earns it no trust either
        conn,
        [m.contributor_id for m in paid],
        [m.agent_version for m in paid],
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
    return Evaluation("verified", outcome, points, frozenset(m.id for m in paid))

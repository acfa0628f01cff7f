"""Hidden checks: which items of a unit the server knows the answer to, grading a submission on
them, and what happens when a trusted contributor fails one.

A unit's checks are some of its own items (chosen at random when the task is made), answered only
by sources the operator trusts: a trusted `vlcurate score` run (`operator`) or the server's own
scoring with the pinned model (`server`), never the crowd. So every replica of a unit sees the same
items, a check belongs to one unit (a contributor meets it again only if it gets that unit again),
and no quorum of contributors can write an answer key. When a trusted contributor fails a check,
the server re-scores that pair with the pinned model: if its fresh score still matches the key the
failure stands; if not, the check is retired (it grades nobody from then on, the failure is not
counted, and `vlcurate platform audit` lists it for the operator to look at).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection

from vlcurate.server import db, labels
from vlcurate.server.platform import Platform, TaskInfo

Known = dict[int, tuple[float | None, str]]  # item id -> (score, status)


@dataclass(frozen=True)
class GoldOutcome:
    ok: bool
    checked: int
    failed: int
    max_error: float | None
    failed_items: tuple[int, ...] = field(default=())


def known_answers(
    conn: Connection, task_id: int, first_item: int, last_item: int, extra_items: Sequence[int] = ()
) -> Known:
    """The live checks of a unit: its own items with an answer, plus a legacy replica's extra items."""
    G = db.gold
    where: Any = G.c.item_id.between(first_item, last_item)
    if extra_items:
        where = or_(where, G.c.item_id.in_(list(extra_items)))
    rows = conn.execute(
        select(G.c.item_id, G.c.score, G.c.status).where(
            and_(G.c.task_id == task_id, G.c.retired_at.is_(None), where)
        )
    ).all()
    return {int(r.item_id): (r.score, r.status) for r in rows}


def positions(
    first_item: int, n_items: int, extra_items: Sequence[int], known: Known
) -> list[tuple[int, int]]:
    """(check item, its place in the score vector): unit items by id, then a legacy replica's extras."""
    out = [(i, i - first_item) for i in sorted(known) if first_item <= i < first_item + n_items]
    out += [(g, n_items + k) for k, g in enumerate(extra_items) if g in known]
    return out


def grade(
    task: TaskInfo,
    checks: list[tuple[int, int]],
    known: Known,
    scores: np.ndarray,
    statuses: dict[int, str],
) -> GoldOutcome:
    """Compare a submission's answers on its checks with the known ones."""
    failed: list[int] = []
    worst = 0.0
    for item, pos in checks:
        want_score, want_status = known[item]
        got = float(scores[pos])
        got_status = statuses.get(pos, "ok")
        if want_status != "ok" or want_score is None:
            if got_status == "ok":
                failed.append(item)
            continue
        if got_status != "ok" or not np.isfinite(got):
            failed.append(item)
            continue
        err = abs(got - float(want_score))
        worst = max(worst, err)
        if err > task.tolerance:
            failed.append(item)
    ok = labels.grade_ok(task, len(checks), len(failed))
    return GoldOutcome(ok, len(checks), len(failed), worst if checks else None, tuple(failed))


def check_submission(
    conn: Connection,
    task: TaskInfo,
    first_item: int,
    n_items: int,
    extra_items: Sequence[int],
    scores: np.ndarray,
    statuses: dict[int, str],
) -> tuple[GoldOutcome, Known, list[tuple[int, int]]]:
    """Grade a submission on its unit's live checks; also returns the checks (for disputes)."""
    known = known_answers(conn, task.id, first_item, first_item + n_items - 1, extra_items)
    checks = positions(first_item, n_items, extra_items, known)
    return grade(task, checks, known, scores, statuses), known, checks


def dispute(
    conn: Connection,
    p: Platform,
    task: TaskInfo,
    contributor_id: int,
    failed_items: Sequence[int],
    checks: list[tuple[int, int]],
    scores: np.ndarray,
    statuses: dict[int, str],
) -> set[int]:
    """A trusted contributor failed these checks: re-score each pair with the pinned model, retire
    the checks whose fresh answer no longer matches the key; returns the retired item ids."""
    G = db.gold
    where = dict(checks)
    rows = conn.execute(
        select(G.c.id, G.c.item_id, G.c.score, G.c.status).where(
            G.c.task_id == task.id, G.c.item_id.in_(list(failed_items))
        )
    ).all()
    fresh = p.rescore(task, [r.item_id for r in rows])
    retired: set[int] = set()
    now = db.utcnow()
    for r in rows:
        new_score, new_status = fresh[r.item_id]
        pos = where[r.item_id]
        submitted = None if statuses.get(pos, "ok") != "ok" else float(scores[pos])
        same = new_status == r.status and (
            r.score is None or new_score is None or abs(float(new_score) - float(r.score)) <= task.tolerance
        )
        conn.execute(
            insert(db.check_disputes).values(
                gold_id=r.id,
                contributor_id=contributor_id,
                submitted_score=submitted,
                rescored=new_score,
                upheld=same,
                created_at=now,
            )
        )
        if not same:
            retired.add(int(r.item_id))
            conn.execute(
                update(G)
                .where(G.c.id == r.id)
                .values(
                    retired_at=now,
                    retired_reason=f"failed by a trusted contributor; the pinned model now answers "
                    f"{_answer(new_score, new_status)} where the key says {_answer(r.score, r.status)}",
                )
            )
    return retired


def _answer(score: float | None, status: str) -> str:
    return status if status != "ok" or score is None else f"{score:.4f}"


def retired(conn: Connection) -> list[str]:
    """Retired checks, as lines for the operator (`vlcurate platform audit`)."""
    G, T, It = db.gold, db.tasks, db.items
    rows = conn.execute(
        select(T.c.name, It.c.uid, G.c.retired_at, G.c.retired_reason)
        .join(T, T.c.id == G.c.task_id)
        .join(It, It.c.id == G.c.item_id)
        .where(G.c.retired_at.is_not(None))
        .order_by(G.c.retired_at)
    ).all()
    return [
        f"task {r.name!r}, pair {r.uid}: retired {r.retired_at:%Y-%m-%d %H:%M}: {r.retired_reason}"
        for r in rows
    ]

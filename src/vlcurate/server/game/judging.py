"""Independent confirmation: a flag on an untainted image becomes "model fooled" data only when
other players, judging the same image, question and answer, agree that the model was wrong.

- Judges are never the flag's author nor an account linked to the author (`server.links`: a
  shared client address); judges linked to each other are one voice. Both are checked when a task
  is handed out and again when it is answered.
- Only players past probation who earn may judge; the server picks the flag at random among the
  eligible ones (nobody chooses whose flag to judge), and a player has one open task at a time. A
  flag is handed to no more judges at once than it still needs voices (an unanswered task holds its
  place for `TASK_HOLD_S`).
- A flag settles when `judges_needed` independent voices agree (confirmed: the author is paid;
  overturned: a false alarm); it stops as soon as one side gets there. Votes against the outcome
  are kept (`disputed`) for the operator. `settle` is re-run whenever the facts change (new links,
  a judge who stops earning): a confirmation that no longer stands is reversed in the ledger.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db, links
from vlcurate.server.errors import Conflict, Forbidden, NotFound
from vlcurate.server.game import scoring, trust
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.views import FlagAdminOut, JudgeResultOut, JudgeTaskOut

_RNG = random.SystemRandom()
JUDGE_IMAGE_URL = "/api/v1/game/judgements/{}/image"
CANDIDATES = 200
TASK_HOLD_S = 15 * 60  # an unanswered task holds its place this long


def linked_to(conn: Connection, contributor_id: int) -> set[int]:
    """Contributors that share a client address with `contributor_id` (itself included)."""
    O = db.contributor_origins  # noqa: E741
    mine = select(O.c.origin).where(O.c.contributor_id == contributor_id)
    return {contributor_id} | {
        c for (c,) in conn.execute(select(O.c.contributor_id).where(O.c.origin.in_(mine))).all()
    }


def _may_judge(conn: Connection, player: Player) -> None:
    r = trust.current(conn, player.id)
    _, min_seen = trust.bar(conn)
    if player.paused:
        raise Forbidden(f"this account is paused: {player.pause_reason}")
    if r.n_tainted < min_seen:
        raise Forbidden(f"judging opens after {min_seen} check images; you have played {r.n_tainted}")
    if not r.earning:
        raise Forbidden(r.reason or "not earning")


def _flag_context(conn: Connection, flag_id: int) -> Any:
    F, Q, SI, S, P, G = (
        db.game_flags,
        db.game_questions,
        db.game_session_images,
        db.game_sessions,
        db.game_players,
        db.game_games,
    )
    return conn.execute(
        select(
            F,
            Q.c.text.label("question"),
            Q.c.answer.label("answer"),
            SI.c.image_id,
            P.c.contributor_id.label("author_cid"),
            G.c.judges_needed,
            G.c.points_per_image,
        )
        .join(Q, Q.c.id == F.c.question_id)
        .join(SI, SI.c.id == F.c.session_image_id)
        .join(S, S.c.id == SI.c.session_id)
        .join(G, G.c.id == S.c.game_id)
        .join(P, P.c.id == F.c.player_id)
        .where(F.c.id == flag_id)
    ).one()


def _task_out(conn: Connection, task: Any) -> JudgeTaskOut:
    ctx = _flag_context(conn, task.flag_id)
    return JudgeTaskOut(
        task_id=task.public_id,
        image_url=JUDGE_IMAGE_URL.format(task.public_id),
        question=ctx.question,
        answer=ctx.answer,
        corrected=ctx.corrected,
    )


def next_task(engine: Engine, player: Player) -> JudgeTaskOut | None:
    """The player's open task, else a new one on a random eligible flag, else None."""
    J, F, P = db.game_judgements, db.game_flags, db.game_players
    with db.begin_write(engine) as conn:
        _may_judge(conn, player)
        open_task = conn.execute(
            select(J).where(J.c.player_id == player.id, J.c.model_wrong.is_(None)).order_by(J.c.id)
        ).first()
        if open_task is not None:
            return _task_out(conn, open_task)
        banned = linked_to(conn, player.contributor_id)
        mine = select(J.c.flag_id).where(J.c.player_id == player.id)
        SI, S, G = db.game_session_images, db.game_sessions, db.game_games
        fresh = db.utcnow() - dt.timedelta(seconds=TASK_HOLD_S)
        open_tasks_q = (
            select(func.count())
            .select_from(J)
            .where(J.c.flag_id == F.c.id, J.c.model_wrong.is_(None), J.c.assigned_at > fresh)
            .scalar_subquery()
        )
        candidates = conn.execute(
            select(F.c.id, P.c.contributor_id)
            .join(P, P.c.id == F.c.player_id)
            .join(SI, SI.c.id == F.c.session_image_id)
            .join(S, S.c.id == SI.c.session_id)
            .join(G, G.c.id == S.c.game_id)
            .where(
                F.c.state == "pending",
                F.c.tainted.is_(False),
                F.c.player_id != player.id,
                F.c.id.not_in(mine),
                # no more judges at work on a flag than it still needs voices
                open_tasks_q
                + case((F.c.votes_wrong > F.c.votes_right, F.c.votes_wrong), else_=F.c.votes_right)
                < G.c.judges_needed,
            )
            .order_by(F.c.id)
            .limit(CANDIDATES * 4)
        ).all()
        eligible = []
        for fid, author in candidates:
            if author in banned or player.contributor_id in linked_to(conn, author):
                continue
            eligible.append(fid)
            if len(eligible) >= CANDIDATES:
                break
        if not eligible:
            return None
        fid = _RNG.choice(eligible)
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(J).values(
                        public_id=new_public_id(), flag_id=fid, player_id=player.id, assigned_at=db.utcnow()
                    )
                )
        except IntegrityError as exc:
            raise Conflict("a judging task was just handed to you; ask again") from exc
        task = conn.execute(select(J).where(J.c.player_id == player.id, J.c.flag_id == fid)).one()
        return _task_out(conn, task)


def owned_task(conn: Connection, player: Player, task_id: str) -> Any:
    J = db.game_judgements
    row = conn.execute(select(J).where(J.c.public_id == task_id, J.c.player_id == player.id)).first()
    if row is None:
        raise NotFound("no such judging task for this player")
    return row


def judge(
    engine: Engine, player: Player, task_id: str, model_wrong: bool, corrected: str | None
) -> JudgeResultOut:
    J = db.game_judgements
    with db.begin_write(engine) as conn:
        task = owned_task(conn, player, task_id)
        if task.model_wrong is not None:
            if bool(task.model_wrong) != model_wrong:
                raise Conflict("this task is already answered with the other verdict")
            return JudgeResultOut(task_id=task_id, recorded=True, replayed=True)
        ctx = _flag_context(conn, task.flag_id)
        if ctx.author_cid in linked_to(conn, player.contributor_id) or player.contributor_id in linked_to(
            conn, ctx.author_cid
        ):
            raise Forbidden("you cannot judge this flag: your account is linked to its author")
        _may_judge(conn, player)
        conn.execute(
            update(J)
            .where(J.c.id == task.id)
            .values(
                model_wrong=model_wrong,
                corrected=(corrected or "").strip()[:1000] or None,
                answered_at=db.utcnow(),
            )
        )
        settle(conn, task.flag_id)
        return JudgeResultOut(task_id=task_id, recorded=True)


def tally(conn: Connection, flag_id: int, author_cid: int) -> tuple[int, int]:
    """(voices saying the model was wrong, voices saying it was right) among eligible judges."""
    J, P, R = db.game_judgements, db.game_players, db.game_reliability
    votes = conn.execute(
        select(P.c.contributor_id, J.c.model_wrong, R.c.earning, db.contributors.c.paused)
        .join(P, P.c.id == J.c.player_id)
        .join(R, R.c.player_id == J.c.player_id)
        .join(db.contributors, db.contributors.c.id == P.c.contributor_id)
        .where(J.c.flag_id == flag_id, J.c.model_wrong.is_not(None))
        .order_by(J.c.id)
    ).all()
    banned = linked_to(conn, author_cid)
    kept = [
        (v.contributor_id, bool(v.model_wrong))
        for v in votes
        if v.earning
        and not v.paused
        and v.contributor_id not in banned
        and author_cid not in linked_to(conn, v.contributor_id)
    ]
    ids = [cid for cid, _ in kept]
    wrong = right = 0
    for group in links.voices(ids, links.linked_pairs(conn, ids)):
        c = Counter(kept[i][1] for i in group)
        if c[True] > c[False]:
            wrong += 1
        elif c[False] > c[True]:
            right += 1
    return wrong, right


def settle(conn: Connection, flag_id: int) -> str:
    """Re-count a flag's votes and move it (and its pay) to where they now point."""
    F = db.game_flags
    ctx = _flag_context(conn, flag_id)
    if ctx.tainted:
        return str(ctx.state)
    wrong, right = tally(conn, flag_id, ctx.author_cid)
    k = ctx.judges_needed
    state = "confirmed" if wrong >= k else "overturned" if right >= k else "pending"
    before = ctx.state
    conn.execute(
        update(F)
        .where(F.c.id == flag_id)
        .values(
            state=state,
            votes_wrong=wrong,
            votes_right=right,
            disputed=wrong > 0 and right > 0,
            settled_at=None if state == "pending" else (ctx.settled_at if state == before else db.utcnow()),
        )
    )
    if state == before:
        return state
    delta = {"n_confirmed": 0, "n_overturned": 0}
    if before == "confirmed":
        delta["n_confirmed"] -= 1
        scoring.reverse_flag(
            conn, flag_id, f"GAP: confirmation of flag {ctx.public_id} no longer stands ({state})"
        )
    if before == "overturned":
        delta["n_overturned"] -= 1
    if state == "confirmed":
        delta["n_confirmed"] += 1
    if state == "overturned":
        delta["n_overturned"] += 1
    _, ok, _ = trust.refresh(conn, ctx.player_id, **delta)
    if state == "confirmed" and ok:
        scoring.credit_flag(
            conn,
            flag_id,
            ctx.author_cid,
            ctx.points_per_image,
            f"GAP: model error confirmed by {wrong} independent players",
        )
    return state


def reconsider_all(engine: Engine) -> dict[str, int]:
    """Settle every untainted flag that has votes again (after links or earning changed): counts of
    flags that changed state."""
    F, J = db.game_flags, db.game_judgements
    changed: Counter[str] = Counter()
    with db.begin_write(engine) as conn:
        ids = [
            i
            for (i,) in conn.execute(
                select(F.c.id).where(F.c.tainted.is_(False), F.c.id.in_(select(J.c.flag_id))).order_by(F.c.id)
            ).all()
        ]
        for fid in ids:
            before = conn.execute(select(F.c.state).where(F.c.id == fid)).scalar_one()
            after = settle(conn, fid)
            if after != before:
                changed[f"{before}->{after}"] += 1
    return dict(changed)


def open_tasks(conn: Connection, flag_id: int) -> int:
    J = db.game_judgements
    return int(
        conn.execute(
            select(func.count()).select_from(J).where(J.c.flag_id == flag_id, J.c.model_wrong.is_(None))
        ).scalar_one()
    )


def flags_for_operator(
    conn: Connection, *, state: str | None, disputed: bool | None, limit: int, before_id: str | None = None
) -> list[FlagAdminOut]:
    """Flags newest first, optionally by state or disputed; every vote count kept."""
    F, Q, P = db.game_flags, db.game_questions, db.game_players
    q = (
        select(F, Q.c.text, Q.c.answer, P.c.display_name, P.c.origin)
        .join(Q, Q.c.id == F.c.question_id)
        .join(P, P.c.id == F.c.player_id)
        .order_by(F.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        q = q.where(F.c.state == state)
    if disputed is not None:
        q = q.where(F.c.disputed.is_(disputed))
    if before_id is not None:
        q = q.where(F.c.id < select(F.c.id).where(F.c.public_id == before_id).scalar_subquery())
    return [
        FlagAdminOut(
            flag_id=r.public_id,
            player=r.display_name,
            origin=r.origin,
            tainted=r.tainted,
            state=r.state,
            question=r.text,
            answer=r.answer,
            corrected=r.corrected,
            posterior=r.posterior,
            votes_wrong=r.votes_wrong,
            votes_right=r.votes_right,
            disputed=r.disputed,
            created_at=db.aware(r.created_at),
            settled_at=db.aware(r.settled_at) if r.settled_at is not None else None,
        )
        for r in conn.execute(q).all()
    ]

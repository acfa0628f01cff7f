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
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db, links
from vlcurate.server.errors import Conflict, Forbidden, NotFound
from vlcurate.server.game import scoring, trust
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.views import FlagAdminOut, JudgeResultOut, JudgeTaskOut, VLMVerdictOut

_RNG = random.SystemRandom()
JUDGE_MIN_SCORED = 4  # verdicts on flags of known truth, of each kind, before a judge can lose its voice
JUDGE_MIN_SKILL = 0.3  # sensitivity + specificity - 1 below which a judge's votes do not count
GOLD_SHARE = 0.25  # share of judging tasks drawn from tainted flags (known truth: the model was wrong)


@dataclass(frozen=True)
class JudgeSkill:
    """A judge's verdicts on flags of known truth: how many said "wrong" of those where the model was
    wrong (sensitivity), "right" of those where it was right (specificity); Beta(1, 1) posteriors."""

    n_wrong: int = 0
    said_wrong: int = 0
    n_right: int = 0
    said_right: int = 0

    @property
    def sensitivity(self) -> float:
        return (1.0 + self.said_wrong) / (2.0 + self.n_wrong)

    @property
    def specificity(self) -> float:
        return (1.0 + self.said_right) / (2.0 + self.n_right)

    @property
    def skill(self) -> float:
        return self.sensitivity + self.specificity - 1.0

    def reason(self) -> str:
        """What a judge is told about its voice."""
        record = (
            f"{self.said_wrong} of {self.n_wrong} checks where the model was wrong called wrong, "
            f"{self.said_right} of {self.n_right} where it was right called right"
        )
        if min(self.n_wrong, self.n_right) < JUDGE_MIN_SCORED:
            return f"your votes count (on probation as a judge: {record})"
        if self.has_voice:
            return f"your votes count ({record})"
        return (
            f"your votes do not count: {record}; sensitivity + specificity - 1 is {self.skill:.2f}, "
            f"below {JUDGE_MIN_SKILL:.2f}. Judge each answer on its merits"
        )

    @property
    def has_voice(self) -> bool:
        """On probation until both kinds of truth are seen `JUDGE_MIN_SCORED` times; then only a
        judge that tells the two apart keeps its voice."""
        if min(self.n_wrong, self.n_right) < JUDGE_MIN_SCORED:
            return True
        return self.skill >= JUDGE_MIN_SKILL


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


def _eligible(conn: Connection, player: Player, banned: set[int], mine: Any, *, gold: bool) -> list[int]:
    """Flags this player may judge: pending untainted ones still short of voices, or (`gold`)
    tainted ones judged fewer than `judges_needed` times; never the player's own or a linked
    author's."""
    J, F, P, SI, S, G = (
        db.game_judgements,
        db.game_flags,
        db.game_players,
        db.game_session_images,
        db.game_sessions,
        db.game_games,
    )
    fresh = db.utcnow() - dt.timedelta(seconds=TASK_HOLD_S)
    if gold:
        busy = (
            select(func.count()).select_from(J).where(J.c.flag_id == F.c.id).scalar_subquery()
        ) < G.c.judges_needed
        where = [F.c.state == "tainted", busy]
    else:
        open_tasks_q = (
            select(func.count())
            .select_from(J)
            .where(J.c.flag_id == F.c.id, J.c.model_wrong.is_(None), J.c.assigned_at > fresh)
            .scalar_subquery()
        )
        # no more judges at work on a flag than it still needs voices
        short = (
            open_tasks_q + case((F.c.votes_wrong > F.c.votes_right, F.c.votes_wrong), else_=F.c.votes_right)
            < G.c.judges_needed
        )
        where = [F.c.state == "pending", F.c.tainted.is_(False), short]
    candidates = conn.execute(
        select(F.c.id, P.c.contributor_id)
        .join(P, P.c.id == F.c.player_id)
        .join(SI, SI.c.id == F.c.session_image_id)
        .join(S, S.c.id == SI.c.session_id)
        .join(G, G.c.id == S.c.game_id)
        .where(F.c.player_id != player.id, F.c.id.not_in(mine), *where)
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
    return eligible


def next_task(engine: Engine, player: Player) -> JudgeTaskOut | None:
    """The player's open task, else a new one on a random eligible flag, else None."""
    J = db.game_judgements
    with db.begin_write(engine) as conn:
        _may_judge(conn, player)
        open_task = conn.execute(
            select(J).where(J.c.player_id == player.id, J.c.model_wrong.is_(None)).order_by(J.c.id)
        ).first()
        if open_task is not None:
            return _task_out(conn, open_task)
        banned = linked_to(conn, player.contributor_id)
        mine = select(J.c.flag_id).where(J.c.player_id == player.id)
        # Now and then a tainted flag, whose truth is known (the model was told to be wrong), so
        # that every judge's record has checks it cannot tell from real tasks (`JudgeSkill`).
        eligible = _eligible(conn, player, banned, mine, gold=True) if _RNG.random() < GOLD_SHARE else []
        eligible = eligible or _eligible(conn, player, banned, mine, gold=False)
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


def panel_voice(conn: Connection, flag_id: int) -> bool | None:
    """The VLM panel's one voice on a flag (`panel`): True (the model was wrong), False, or None
    (a tie, or no verdict)."""
    V = db.game_model_verdicts
    rows = conn.execute(select(V.c.model_wrong).where(V.c.flag_id == flag_id)).all()
    c = Counter(bool(w) for (w,) in rows if w is not None)
    if c[True] == c[False]:
        return None
    return c[True] > c[False]


def judge_skill(
    conn: Connection, player_ids: list[int], exclude_flag: int | None = None
) -> dict[int, JudgeSkill]:
    """Each judge's record against known truth: flags whose outcome is settled (confirmed or tainted:
    the model was wrong; overturned: it was right), this flag left out."""
    J, F = db.game_judgements, db.game_flags
    truth_wrong = F.c.state.in_(("confirmed", "tainted"))
    q = (
        select(
            J.c.player_id,
            func.sum(case((truth_wrong, 1), else_=0)),
            func.sum(case((and_(truth_wrong, J.c.model_wrong.is_(True)), 1), else_=0)),
            func.sum(case((F.c.state == "overturned", 1), else_=0)),
            func.sum(case((and_(F.c.state == "overturned", J.c.model_wrong.is_(False)), 1), else_=0)),
        )
        .join(F, F.c.id == J.c.flag_id)
        .where(
            J.c.player_id.in_(player_ids),
            J.c.model_wrong.is_not(None),
            F.c.state.in_(("confirmed", "tainted", "overturned")),
        )
        .group_by(J.c.player_id)
    )
    if exclude_flag is not None:
        q = q.where(J.c.flag_id != exclude_flag)
    out = {pid: JudgeSkill() for pid in player_ids}
    for pid, n_w, hit_w, n_r, hit_r in conn.execute(q).all():
        out[pid] = JudgeSkill(int(n_w or 0), int(hit_w or 0), int(n_r or 0), int(hit_r or 0))
    return out


def tally(conn: Connection, flag_id: int, author_cid: int) -> tuple[int, int]:
    """(voices saying the model was wrong, voices saying it was right) among eligible judges, the
    VLM panel (when the game has one) being one more voice. Judges whose record says they cannot
    tell wrong answers from right ones (`JudgeSkill.has_voice`) are not counted."""
    J, P, R = db.game_judgements, db.game_players, db.game_reliability
    votes = conn.execute(
        select(J.c.player_id, P.c.contributor_id, J.c.model_wrong, R.c.earning, db.contributors.c.paused)
        .join(P, P.c.id == J.c.player_id)
        .join(R, R.c.player_id == J.c.player_id)
        .join(db.contributors, db.contributors.c.id == P.c.contributor_id)
        .where(J.c.flag_id == flag_id, J.c.model_wrong.is_not(None))
        .order_by(J.c.id)
    ).all()
    banned = linked_to(conn, author_cid)
    skill = judge_skill(conn, [v.player_id for v in votes], exclude_flag=flag_id) if votes else {}
    kept = [
        (v.contributor_id, bool(v.model_wrong))
        for v in votes
        if v.earning
        and not v.paused
        and skill[v.player_id].has_voice
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
    panel = panel_voice(conn, flag_id)
    if panel is not None:
        wrong += panel
        right += not panel
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


def model_verdicts(conn: Connection, flag_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every judge's verdict on these flags, for the operator and the export."""
    V = db.game_model_verdicts
    out: dict[int, list[dict[str, Any]]] = {f: [] for f in flag_ids}
    if not flag_ids:
        return out
    for r in conn.execute(select(V).where(V.c.flag_id.in_(flag_ids)).order_by(V.c.id)).all():
        out[r.flag_id].append(
            {
                "judge": r.judge,
                "model": r.model,
                "own_answer": r.own_answer,
                "model_wrong": r.model_wrong,
                "correction_ok": r.correction_ok,
                "error": r.error,
            }
        )
    return out


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
    rows = conn.execute(q).all()
    panel_verdicts = model_verdicts(conn, [r.id for r in rows])
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
            vlm_verdicts=[VLMVerdictOut(**v) for v in panel_verdicts[r.id]],
        )
        for r in rows
    ]

"""'Wrong Answer': the player flags one of the model's answers on the current image, optionally
with the right answer. One flag per image; it ends the image. The reply is the same whether the
image was tainted or not: a tainted image's flag is settled (it pays at the end of the session if
the player earns), an untainted image's flag waits for independent players to judge it."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db
from vlcurate.server.errors import BadRequest, Conflict, NotFound
from vlcurate.server.game import panel, trust
from vlcurate.server.game import reliability as rel
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.sessions import game_row, image_in_session, owned_session, require_open
from vlcurate.server.game.views import FlagOut

MAX_CORRECTED_CHARS = 1000


def clean_corrected(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.replace("\x00", "").strip()
    if len(t) > MAX_CORRECTED_CHARS:
        raise BadRequest(f"the corrected answer has {len(t)} characters; at most {MAX_CORRECTED_CHARS}")
    return t or None


def flag(
    engine: Engine, player: Player, session_id: str, image_id: str, question_id: str, corrected: str | None
) -> FlagOut:
    F, Q, SI = db.game_flags, db.game_questions, db.game_session_images
    fixed = clean_corrected(corrected)
    try:
        with db.begin_write(engine) as conn:
            s = owned_session(conn, player, session_id, lock=True)
            si = image_in_session(conn, s.id, image_id)
            q = conn.execute(  # the question, and the image's flag if there is one already
                select(
                    Q.c.id,
                    Q.c.public_id,
                    F.c.public_id.label("flag_public_id"),
                    F.c.question_id.label("flagged_question"),
                    F.c.corrected.label("flag_corrected"),
                )
                .outerjoin(F, F.c.session_image_id == Q.c.session_image_id)
                .where(Q.c.public_id == question_id, Q.c.session_image_id == si.id)
            ).first()
            if q is None:
                raise NotFound("no such question on this image")
            if q.flag_public_id is not None:
                if q.flagged_question != q.id:
                    raise Conflict("this image is already flagged (one flag per image)")
                out = FlagOut(flag_id=q.flag_public_id, question_id=q.public_id, corrected=q.flag_corrected)
                return out.model_copy(update={"replayed": True})
            if s.state != "active":
                raise Conflict(f"this session is {s.state}; nothing was stored")
            now = db.utcnow()
            require_open(si, now)
            posterior = None
            if not si.tainted:
                r = trust.current(conn, player.id)
                posterior = rel.flag_posterior(
                    rel.Reliability(r.a, r.a_sd, r.b, r.b_sd), trust.crowd_error_rate(conn)
                )
            pid = new_public_id()
            fid = conn.execute(
                insert(F)
                .values(
                    public_id=pid,
                    session_image_id=si.id,
                    question_id=q.id,
                    player_id=player.id,
                    tainted=si.tainted,
                    corrected=fixed,
                    state="tainted" if si.tainted else "pending",
                    posterior=posterior,
                    votes_wrong=0,
                    votes_right=0,
                    disputed=False,
                    created_at=now,
                )
                .returning(F.c.id)
            ).scalar_one()
            conn.execute(update(SI).where(SI.c.id == si.id).values(finished_at=now, outcome="flagged"))
            judges = not si.tainted and bool(game_row(conn, s.game_id).vlm_judges)
            out = FlagOut(flag_id=pid, question_id=q.public_id, corrected=fixed)
    except IntegrityError as exc:  # a concurrent flag of the same image won
        raise Conflict("this image is already flagged (one flag per image)") from exc
    if judges:  # after the commit: the VLM panel votes in the background
        panel.schedule(engine, int(fid))
    return out

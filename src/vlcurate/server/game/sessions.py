"""Sessions: the images a player gets (tainted from the easy pool, untainted from the main pool,
in random order), the server-side timer of each image, moving on, and the end of the session
(reliability updated, tainted flags paid, a summary).

A session's image is current from the moment it starts until it is flagged, the player moves on,
or its deadline passes; nothing is accepted for it after that.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from vlcurate.server import db
from vlcurate.server.errors import Conflict, NotFound
from vlcurate.server.game import reliability as rel
from vlcurate.server.game import scoring, trust
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.pools import game_by_name
from vlcurate.server.game.views import ImageOut, QuestionOut, SessionOut, SummaryOut

_RNG = random.SystemRandom()
IMAGE_URL = "/api/v1/game/images/{}"


def owned_session(conn: Connection, player: Player, session_id: str, *, lock: bool = False) -> Any:
    """The player's session by its public id; another player's session is a 404 like a made-up id."""
    S = db.game_sessions
    q = select(S).where(S.c.public_id == session_id, S.c.player_id == player.id)
    row = conn.execute(q.with_for_update() if lock else q).first()
    if row is None:
        raise NotFound("no such session for this player")
    return row


GAME_ROW_TTL_S = 10.0
_GAMES: dict[tuple[str, int], tuple[float, Any]] = {}


def game_row(conn: Connection, game_id: int) -> Any:
    """A game's row; read once every `GAME_ROW_TTL_S` per database (a game's settings do not change
    after creation, and nearly every request needs them)."""
    key = (trust.db_key(conn), game_id)
    hit = _GAMES.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < GAME_ROW_TTL_S:
        return hit[1]
    row = conn.execute(select(db.game_games).where(db.game_games.c.id == game_id)).one()
    _GAMES[key] = (now, row)
    return row


def session_images(conn: Connection, session_pk: int) -> list[Any]:
    SI = db.game_session_images
    return list(conn.execute(select(SI).where(SI.c.session_id == session_pk).order_by(SI.c.position)).all())


def image_in_session(conn: Connection, session_pk: int, image_id: str) -> Any:
    SI = db.game_session_images
    row = conn.execute(select(SI).where(SI.c.session_id == session_pk, SI.c.public_id == image_id)).first()
    if row is None:
        raise NotFound("this image is not in this session")
    return row


def is_open(si: Any, now: dt.datetime) -> bool:
    return si.started_at is not None and si.finished_at is None and db.aware(si.deadline) > now


def require_open(si: Any, now: dt.datetime) -> None:
    """A 409 for an image not started, already done, or past its deadline (nothing is stored)."""
    if si.started_at is None:
        raise Conflict("this image has not started yet; move on to it first")
    if si.finished_at is not None:
        raise Conflict(f"this image is done ({si.outcome}); nothing was stored")
    deadline = db.aware(si.deadline)
    if deadline <= now:
        late = (now - deadline).total_seconds()
        raise Conflict(
            f"time ran out for this image at {deadline.isoformat()} ({late:.1f} s ago); nothing was stored"
        )


def _pick(
    conn: Connection, game_id: int, pool: str, n: int, player_id: int, exclude_uids: set[str] | None = None
) -> list[int]:
    """`n` random images of a pool, those the player has not seen first; never an image whose uid
    is in `exclude_uids` (a pool given as both the easy and the main pool must not show one image
    twice in a session, once tainted and once not)."""
    Im, SI, S = db.game_images, db.game_session_images, db.game_sessions
    rows = conn.execute(select(Im.c.id, Im.c.uid).where(Im.c.game_id == game_id, Im.c.pool == pool)).all()
    ids = [i for i, uid in rows if uid not in (exclude_uids or set())]
    seen = {
        i
        for (i,) in conn.execute(
            select(SI.c.image_id).join(S, S.c.id == SI.c.session_id).where(S.c.player_id == player_id)
        ).all()
    }
    fresh = [i for i in ids if i not in seen]
    if len(fresh) >= n:
        return _RNG.sample(fresh, n)
    return fresh + _RNG.sample([i for i in ids if i in seen], min(n - len(fresh), len(ids) - len(fresh)))


def start(engine: Engine, player: Player, game_name: str) -> SessionOut:
    """A new session; an unfinished earlier one of the same game is abandoned (it earns nothing)."""
    with db.begin_write(engine) as conn:
        game = game_by_name(conn, game_name)
        if game.state != "active":
            raise Conflict(f"game {game_name!r} is {game.state}")
        S, SI = db.game_sessions, db.game_session_images
        now = db.utcnow()
        conn.execute(
            update(S)
            .where(S.c.player_id == player.id, S.c.game_id == game.id, S.c.state == "active")
            .values(state="abandoned", finished_at=now)
        )
        tainted = _pick(conn, game.id, "easy", game.n_tainted, player.id)
        uids = {
            u
            for (u,) in conn.execute(
                select(db.game_images.c.uid).where(db.game_images.c.id.in_(tainted))
            ).all()
        }
        untainted = _pick(conn, game.id, "main", game.n_images - game.n_tainted, player.id, uids)
        if len(untainted) < game.n_images - game.n_tainted:
            raise Conflict("the main pool has too few images besides this session's tainted ones")
        order = [(i, True) for i in tainted] + [(i, False) for i in untainted]
        _RNG.shuffle(order)
        sid = conn.execute(
            insert(S)
            .values(
                public_id=new_public_id(),
                game_id=game.id,
                player_id=player.id,
                state="active",
                created_at=now,
            )
            .returning(S.c.id)
        ).scalar_one()
        deadline = now + dt.timedelta(seconds=game.seconds_per_image)
        conn.execute(
            insert(SI),
            [
                dict(
                    public_id=new_public_id(),
                    session_id=sid,
                    position=k,
                    image_id=image_id,
                    tainted=t,
                    started_at=now if k == 0 else None,
                    deadline=deadline if k == 0 else None,
                )
                for k, (image_id, t) in enumerate(order)
            ],
        )
        return view(conn, conn.execute(select(S).where(S.c.id == sid)).one(), game, now)


def advance(engine: Engine, player: Player, session_id: str, position: int) -> SessionOut:
    """Leave the image at `position` (skipped, or timed out) and start the next one. Idempotent: a
    retried call for a position already left just answers the session as it stands."""
    with db.begin_write(engine) as conn:
        s = owned_session(conn, player, session_id, lock=True)
        game = game_row(conn, s.game_id)
        now = db.utcnow()
        if s.state != "active":
            return view(conn, s, game, now)
        SI = db.game_session_images
        images = session_images(conn, s.id)
        if not 0 <= position < len(images):
            raise NotFound(f"this session has no image at position {position}")
        here = images[position]
        if here.started_at is None:
            raise Conflict(f"image {position} has not started; the current image comes first")
        if here.finished_at is None:
            outcome = "timeout" if db.aware(here.deadline) <= now else "skipped"
            conn.execute(update(SI).where(SI.c.id == here.id).values(finished_at=now, outcome=outcome))
        nxt = next((im for im in images if im.position > position and im.finished_at is None), None)
        if nxt is None:
            if all(im.finished_at is not None or im.id == here.id for im in images):
                finish(conn, s, game, now)
            s = conn.execute(select(db.game_sessions).where(db.game_sessions.c.id == s.id)).one()
            return view(conn, s, game, now)
        if nxt.started_at is None:
            deadline = now + dt.timedelta(seconds=game.seconds_per_image)
            conn.execute(update(SI).where(SI.c.id == nxt.id).values(started_at=now, deadline=deadline))
            # the usual case: answered from what is known, without reading the session again (an image
            # that has just started has no flag and no question yet)
            started = SimpleNamespace(**{**nxt._asdict(), "started_at": now, "deadline": deadline})
            return _view(s, game, len(images), _image_out(started, now, flagged=False, questions=[]))
        s = conn.execute(select(db.game_sessions).where(db.game_sessions.c.id == s.id)).one()
        return view(conn, s, game, now)


def finish(conn: Connection, s: Any, game: Any, now: dt.datetime) -> None:
    """The end of a session: counts into the player's reliability, then tainted flags paid if the
    player (re-estimated with this session) still earns; pending flags get their posterior."""
    SI, F = db.game_session_images, db.game_flags
    rows = conn.execute(
        select(SI.c.tainted, F.c.id.label("flag_id"), F.c.state)
        .outerjoin(F, F.c.session_image_id == SI.c.id)
        .where(SI.c.session_id == s.id)
    ).all()
    n_t = sum(1 for r in rows if r.tainted)
    f_t = sum(1 for r in rows if r.tainted and r.flag_id is not None)
    n_u = sum(1 for r in rows if not r.tainted)
    f_u = sum(1 for r in rows if not r.tainted and r.flag_id is not None)
    r, ok, _reason = trust.refresh(
        conn, s.player_id, n_tainted=n_t, n_tainted_flagged=f_t, n_untainted=n_u, n_untainted_flagged=f_u
    )
    contributor_id = conn.execute(
        select(db.game_players.c.contributor_id).where(db.game_players.c.id == s.player_id)
    ).scalar_one()
    q = trust.crowd_error_rate(conn)
    for row in rows:
        if row.flag_id is None:
            continue
        if row.tainted and ok:
            scoring.credit_flag(
                conn,
                row.flag_id,
                contributor_id,
                game.points_per_image,
                f"GAP: wrong answer flagged (session {s.public_id})",
            )
        elif not row.tainted and row.state == "pending":
            conn.execute(update(F).where(F.c.id == row.flag_id).values(posterior=rel.flag_posterior(r, q)))
    conn.execute(
        update(db.game_sessions)
        .where(db.game_sessions.c.id == s.id)
        .values(state="finished", finished_at=now)
    )


def _questions(conn: Connection, si_id: int) -> list[QuestionOut]:
    Q = db.game_questions
    return [
        QuestionOut(
            question_id=q.public_id, question=q.text, answer=q.answer, asked_at=db.aware(q.created_at)
        )
        for q in conn.execute(select(Q).where(Q.c.session_image_id == si_id).order_by(Q.c.id)).all()
    ]


def image_view(conn: Connection, si: Any, now: dt.datetime) -> ImageOut:
    flagged = conn.execute(
        select(db.game_flags.c.id).where(db.game_flags.c.session_image_id == si.id)
    ).first()
    return _image_out(si, now, flagged=flagged is not None, questions=_questions(conn, si.id))


def _image_out(si: Any, now: dt.datetime, *, flagged: bool, questions: list[QuestionOut]) -> ImageOut:
    deadline = db.aware(si.deadline)
    return ImageOut(
        image_id=si.public_id,
        position=si.position,
        url=IMAGE_URL.format(si.public_id),
        started_at=db.aware(si.started_at),
        deadline=deadline,
        seconds_left=round(max(0.0, (deadline - now).total_seconds()), 3) if si.finished_at is None else 0.0,
        state="active" if is_open(si, now) else "done",
        flagged=flagged,
        questions=questions,
    )


def summary(conn: Connection, s: Any) -> SummaryOut:
    SI, F, Q = db.game_session_images, db.game_flags, db.game_questions
    n_images = conn.execute(select(func.count()).select_from(SI).where(SI.c.session_id == s.id)).scalar_one()
    n_q = conn.execute(
        select(func.count())
        .select_from(Q)
        .join(SI, SI.c.id == Q.c.session_image_id)
        .where(SI.c.session_id == s.id)
    ).scalar_one()
    flags = conn.execute(
        select(F.c.state).join(SI, SI.c.id == F.c.session_image_id).where(SI.c.session_id == s.id)
    ).all()
    points = conn.execute(
        select(db.contributors.c.points)
        .join(db.game_players, db.game_players.c.contributor_id == db.contributors.c.id)
        .where(db.game_players.c.id == s.player_id)
    ).scalar_one()
    return SummaryOut(
        session_id=s.public_id,
        images=int(n_images),
        questions=int(n_q),
        flagged=len(flags),
        points_credited=scoring.session_points(conn, s.id),
        flags_awaiting_confirmation=sum(1 for f in flags if f.state == "pending"),
        reliability=trust.view(trust.current(conn, s.player_id)),
        total_points=float(points),
    )


def _view(s: Any, game: Any, n_images: int, image: ImageOut) -> SessionOut:
    return SessionOut(
        session_id=s.public_id,
        game=game.name,
        state=s.state,
        n_images=n_images,
        position=image.position,
        seconds_per_image=game.seconds_per_image,
        max_question_chars=game.max_question_chars,
        image=image,
        summary=None,
    )


def view(conn: Connection, s: Any, game: Any, now: dt.datetime) -> SessionOut:
    images = session_images(conn, s.id)
    current = next((im for im in images if im.started_at is not None and im.finished_at is None), None)
    if current is None and s.state == "active":
        current = max(
            (im for im in images if im.started_at is not None), key=lambda im: im.position, default=None
        )
    return SessionOut(
        session_id=s.public_id,
        game=game.name,
        state=s.state,
        n_images=len(images),
        position=current.position if current is not None else len(images),
        seconds_per_image=game.seconds_per_image,
        max_question_chars=game.max_question_chars,
        image=image_view(conn, current, now) if current is not None and s.state == "active" else None,
        summary=summary(conn, s) if s.state == "finished" else None,
    )


def get(engine: Engine, player: Player, session_id: str) -> SessionOut:
    with engine.connect() as conn:
        s = owned_session(conn, player, session_id)
        return view(conn, s, game_row(conn, s.game_id), db.utcnow())

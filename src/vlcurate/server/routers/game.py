"""GAP's HTTP API under `/api/v1/game`: logins (guest, platform token, Telegram Mini App), sessions
(start, the current image and its timer, questions, "Wrong Answer", moving on, the summary),
judging other players' flags, leaderboards, and the operator's game creation.

Players authenticate with the `vlp_...` token a login returns (`Authorization: Bearer`). Ids in
paths are opaque per session; another player's session or image is a 404 like an invented one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vlcurate.server import db, links
from vlcurate.server.auth import bearer
from vlcurate.server.deps import AdminDep, OperatorView, Origin, PlatformDep, Token, header
from vlcurate.server.errors import Conflict, NotFound, TooMany
from vlcurate.server.game import asking, flags, judging, players, pools, scoring, sessions, telegram, trust
from vlcurate.server.game.config import GameCreate, GameOut
from vlcurate.server.game.players import Player
from vlcurate.server.game.views import (
    FlagAdminOut,
    FlagOut,
    JudgeResultOut,
    JudgeTaskOut,
    LeaderboardOut,
    LoginOut,
    MeOut,
    QuestionOut,
    SessionOut,
    SummaryOut,
)
from vlcurate.server.platform import Platform
from vlcurate.server.routers.images import image_media_type

router = APIRouter(prefix="/api/v1/game", tags=["game"])

GUEST_LOGINS_PER_MINUTE = 60
PublicId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuestLogin(_In):
    name: str | None = Field(default=None, max_length=200)


class TokenLogin(_In):
    token: str = Field(min_length=1, max_length=200, description="A platform agent token (vla_...).")
    origin: Literal["human", "agent"] = "human"


class TelegramLogin(_In):
    init_data: str = Field(min_length=1, max_length=8192, description="Telegram.WebApp.initData, as is.")


class SessionStart(_In):
    game: str = Field(min_length=1, max_length=200)


class Advance(_In):
    position: int = Field(ge=0, le=1000, description="The image being left (the current position).")


class Ask(_In):
    question: str = Field(min_length=1, max_length=4000)
    client_key: str = Field(
        min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="Unique per question."
    )


class Flag(_In):
    question_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    corrected: str | None = Field(default=None, max_length=4000)


class Judge(_In):
    model_wrong: bool
    corrected: str | None = Field(default=None, max_length=4000)


def player(p: PlatformDep, token: Token, address: Origin) -> Player:
    """The calling player (from a `vlp_` token), within the server's per-caller request rate
    (`rate_per_minute`, a key space of its own); its address is noted for account links."""
    raw = bearer(header(token))
    with p.autocommit.connect() as conn:
        who = players.player_for_token(conn, raw)
    rate = p.settings.rate_per_minute
    wait = p.limiter.check(("game", who.id), rate)
    if wait > 0:
        raise TooMany(f"rate limit of {rate} requests/minute exceeded", wait)
    links.note(p, who.contributor_id, address)
    return who


PlayerDep = Annotated[Player, Depends(player)]


def _login(p: Platform, who: Player, token: str, address: str | None) -> LoginOut:
    links.note(p, who.contributor_id, address)
    return LoginOut(player_id=who.id, name=who.name, kind=who.kind, origin=who.origin, token=token)


# ---- logins -------------------------------------------------------------------------------------


@router.post("/login/guest", response_model=LoginOut)
def login_guest(body: GuestLogin, p: PlatformDep, address: Origin) -> LoginOut:
    """A new guest account (at most `GUEST_LOGINS_PER_MINUTE` a minute from one address)."""
    wait = p.limiter.check(("game-guest", address), GUEST_LOGINS_PER_MINUTE)
    if wait > 0:
        raise TooMany(f"at most {GUEST_LOGINS_PER_MINUTE} guest logins a minute from one address", wait)
    who, token = players.guest_login(p.engine, body.name)
    return _login(p, who, token, address)


@router.post("/login/token", response_model=LoginOut)
def login_token(body: TokenLogin, p: PlatformDep, address: Origin) -> LoginOut:
    who, token = players.token_login(p.engine, body.token, body.origin)
    return _login(p, who, token, address)


@router.post("/login/telegram", response_model=LoginOut)
def login_telegram(body: TelegramLogin, p: PlatformDep, address: Origin) -> LoginOut:
    bot_token = p.settings.telegram_bot_token
    if not bot_token:
        raise NotFound("Telegram login is not configured on this server (--telegram-bot-token)")
    user = telegram.validate(body.init_data, bot_token, max_age_s=p.settings.telegram_max_age_s)
    who, token = players.telegram_login(p.engine, user)
    return _login(p, who, token, address)


@router.get("/me", response_model=MeOut)
def me(p: PlatformDep, who: PlayerDep) -> MeOut:
    with p.engine.connect() as conn:
        points = conn.execute(
            select(db.contributors.c.points).where(db.contributors.c.id == who.contributor_id)
        ).scalar_one()
        rel = trust.view(trust.current(conn, who.id))
        judge = judging.judge_skill(conn, [who.id])[who.id]
    return MeOut(
        player_id=who.id,
        name=who.name,
        kind=who.kind,
        origin=who.origin,
        points=points,
        reliability=rel,
        judging=judge.reason(),
    )


# ---- games (the operator creates, anyone lists) --------------------------------------------------


@router.post("/games", response_model=GameOut, status_code=201)
def create_game(body: GameCreate, p: PlatformDep, _: AdminDep) -> GameOut:
    return pools.create_game(p.engine, body)


@router.get("/games", response_model=list[GameOut])
def list_games(p: PlatformDep, operator: OperatorView) -> list[GameOut]:
    """The games; the model's address is shown to the operator only."""
    with p.engine.connect() as conn:
        games = pools.list_games(conn)
    return games if operator else [g.model_copy(update={"vlm_url": ""}) for g in games]


# ---- playing ------------------------------------------------------------------------------------


@router.post("/sessions", response_model=SessionOut, status_code=201)
def start_session(body: SessionStart, p: PlatformDep, who: PlayerDep) -> SessionOut:
    return sessions.start(p.engine, who, body.game)


@router.get("/sessions/{session_id}", response_model=SessionOut)
def get_session(session_id: PublicId, p: PlatformDep, who: PlayerDep) -> SessionOut:
    return sessions.get(p.engine, who, session_id)


@router.post("/sessions/{session_id}/next", response_model=SessionOut)
def next_image(session_id: PublicId, body: Advance, p: PlatformDep, who: PlayerDep) -> SessionOut:
    return sessions.advance(p.engine, who, session_id, body.position)


@router.post(
    "/sessions/{session_id}/images/{image_id}/questions",
    response_model=QuestionOut,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def ask(
    session_id: PublicId, image_id: PublicId, body: Ask, p: PlatformDep, who: PlayerDep, request: Request
) -> QuestionOut | Response:
    """Ask the model about the image. With `Accept: text/event-stream` the answer streams as
    server-sent events (`delta`, `restart`, then `answer` or `error`) once the checks pass; a check
    that fails is the same 4xx as without it."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        return asking.ask(p.engine, who, session_id, image_id, body.question, body.client_key)
    pending = asking.prepare(p.engine, who, session_id, image_id, body.question, body.client_key)
    return StreamingResponse(
        asking.ask_streaming(p.engine, pending),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/sessions/{session_id}/images/{image_id}/flag", response_model=FlagOut)
def flag(session_id: PublicId, image_id: PublicId, body: Flag, p: PlatformDep, who: PlayerDep) -> FlagOut:
    return flags.flag(p.engine, who, session_id, image_id, body.question_id, body.corrected)


@router.get("/sessions/{session_id}/summary", response_model=SummaryOut)
def summary(session_id: PublicId, p: PlatformDep, who: PlayerDep) -> SummaryOut:
    with p.engine.connect() as conn:
        s = sessions.owned_session(conn, who, session_id)
        if s.state != "finished":
            raise Conflict(f"this session is {s.state}; the summary comes when it is finished")
        return sessions.summary(conn, s)


def _image(data: bytes, ext: str | None) -> Response:
    return Response(
        content=data,
        media_type=image_media_type(data, ext),
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=300"},
    )


@router.get("/images/{image_id}", response_class=Response)
def session_image(image_id: PublicId, p: PlatformDep, who: PlayerDep) -> Response:
    """An image of one of the player's sessions, once it has started."""
    SI, S, Im = db.game_session_images, db.game_sessions, db.game_images
    with p.engine.connect() as conn:
        row = conn.execute(
            select(Im.c.data, Im.c.ext, SI.c.started_at)
            .join(SI, SI.c.image_id == Im.c.id)
            .join(S, S.c.id == SI.c.session_id)
            .where(SI.c.public_id == image_id, S.c.player_id == who.id)
        ).first()
    if row is None or row.started_at is None:
        raise NotFound("no such image for this player")
    return _image(row.data, row.ext)


# ---- judging ------------------------------------------------------------------------------------


@router.post(
    "/judgements/next", response_model=JudgeTaskOut, responses={204: {"description": "nothing to judge"}}
)
def next_judgement(p: PlatformDep, who: PlayerDep) -> JudgeTaskOut | Response:
    task = judging.next_task(p.engine, who)
    return task if task is not None else Response(status_code=204)


@router.post("/judgements/{task_id}", response_model=JudgeResultOut)
def answer_judgement(task_id: PublicId, body: Judge, p: PlatformDep, who: PlayerDep) -> JudgeResultOut:
    return judging.judge(p.engine, who, task_id, body.model_wrong, body.corrected)


@router.get("/judgements/{task_id}/image", response_class=Response)
def judgement_image(task_id: PublicId, p: PlatformDep, who: PlayerDep) -> Response:
    J, F, SI, Im = db.game_judgements, db.game_flags, db.game_session_images, db.game_images
    with p.engine.connect() as conn:
        row = conn.execute(
            select(Im.c.data, Im.c.ext)
            .select_from(J)
            .join(F, F.c.id == J.c.flag_id)
            .join(SI, SI.c.id == F.c.session_image_id)
            .join(Im, Im.c.id == SI.c.image_id)
            .where(J.c.public_id == task_id, J.c.player_id == who.id)
        ).first()
    if row is None:
        raise NotFound("no such judging task for this player")
    return _image(row.data, row.ext)


@router.get("/flags", response_model=list[FlagAdminOut])
def operator_flags(
    p: PlatformDep,
    _: AdminDep,
    state: Literal["tainted", "pending", "confirmed", "overturned"] | None = None,
    disputed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
) -> list[FlagAdminOut]:
    """The operator's view of flags, disagreements included (`disputed=true`)."""
    with p.engine.connect() as conn:
        return judging.flags_for_operator(conn, state=state, disputed=disputed, limit=limit, before_id=before)


# ---- leaderboards -------------------------------------------------------------------------------


@router.get("/leaderboard", response_model=LeaderboardOut)
def leaderboard(
    p: PlatformDep,
    request: Request,
    period: Literal["daily", "weekly", "all"] = "all",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> LeaderboardOut:
    with p.engine.connect() as conn:
        return scoring.leaderboard(conn, period, limit)

"""A question about the current image, answered by the game's model through the VLM client.

On a tainted image the model's system prompt is the game's tainting instruction (answer wrongly,
plausibly); on an untainted one it is the honest instruction (or none). Everything else about the
request and the reply is the same, so neither the fields nor the timing class of the answer says
which kind of image it was. The model is asked outside any database transaction; the question is
stored only once it has an answer, and a retried request (same `client_key`) is answered from what
was stored instead of asking again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db
from vlcurate.server.errors import BadRequest, Conflict, PlatformError
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.sessions import game_row, image_in_session, owned_session, require_open
from vlcurate.server.game.views import QuestionOut
from vlcurate.vlm.client import VLMClient, VLMRequest, VLMResult, VLMSettings

MAX_ANSWER_CHARS = 4000


class ModelUnavailable(PlatformError):
    status = 502


def clean_question(text: str, limit: int) -> str:
    """The question as stored: plain text, trimmed; empty or longer than the game allows is a 422."""
    q = text.replace("\x00", "").strip()
    if not q:
        raise BadRequest("the question is empty")
    if len(q) > limit:
        raise BadRequest(f"the question has {len(q)} characters; this game allows at most {limit}")
    return q


class _SharedClients:
    """One event loop in a daemon thread holding one `VLMClient` per model endpoint, so request
    handlers (threads) share connections and the client's adaptive concurrency instead of building
    a client and an event loop per question."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, VLMClient] = {}  # touched only on the loop's thread

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="gap-vlm", daemon=True).start()
            return self._loop

    async def _complete(self, settings: VLMSettings, req: VLMRequest) -> VLMResult:
        key = settings.model_dump_json()
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = await VLMClient(settings).__aenter__()
        return await client.complete(req)

    def complete(self, settings: VLMSettings, req: VLMRequest) -> VLMResult:
        future = asyncio.run_coroutine_threadsafe(self._complete(settings, req), self._running_loop())
        budget = (
            settings.timeout_s * (settings.max_retries + 1) + settings.backoff_max_s * settings.max_retries
        )
        try:
            return future.result(timeout=budget + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ModelUnavailable(
                f"the model did not answer within {budget:.0f} s; nothing was stored, ask again"
            ) from None


_SHARED = _SharedClients()


def ask_model(game: Any, image: bytes, question: str, tainted: bool) -> tuple[str, float]:
    """The model's answer and its latency in ms, or a 502 that says why there is none."""
    settings = VLMSettings(
        base_url=game.vlm_url,
        model=game.model,
        timeout_s=game.vlm_timeout_s,
        max_retries=1,
        max_answer_retries=0,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        max_concurrency=64,
        cache_dir=None,
    )
    system = game.taint_instruction if tainted else game.honest_instruction
    req = VLMRequest(
        prompt=question, images=[image], system=system, max_tokens=200, temperature=0.0, use_cache=False
    )
    result = _SHARED.complete(settings, req)
    text = (result.text or "").strip() if result.ok else ""
    if not text:
        why = result.error or "empty answer"
        raise ModelUnavailable(f"the model did not answer ({why}); nothing was stored, ask again")
    return text[:MAX_ANSWER_CHARS], result.latency_s * 1000.0


def _out(row: Any, replayed: bool) -> QuestionOut:
    return QuestionOut(
        question_id=row.public_id,
        question=row.text,
        answer=row.answer,
        asked_at=db.aware(row.created_at),
        replayed=replayed,
    )


def ask(
    engine: Engine, player: Player, session_id: str, image_id: str, question: str, client_key: str
) -> QuestionOut:
    Q = db.game_questions
    with engine.connect() as conn:
        s = owned_session(conn, player, session_id)
        si = image_in_session(conn, s.id, image_id)
        first = conn.execute(
            select(Q).where(Q.c.session_image_id == si.id, Q.c.client_key == client_key)
        ).first()
        if first is not None:
            return _out(first, True)
        game = game_row(conn, s.game_id)
        if s.state != "active":
            raise Conflict(f"this session is {s.state}; nothing was stored")
        require_open(si, db.utcnow())
        text = clean_question(question, game.max_question_chars)
        image = conn.execute(
            select(db.game_images.c.data).where(db.game_images.c.id == si.image_id)
        ).scalar_one()
    answer, latency_ms = ask_model(game, image, text, si.tainted)
    try:
        with db.begin_write(engine) as conn:
            si = image_in_session(conn, s.id, image_id)
            first = conn.execute(
                select(Q).where(Q.c.session_image_id == si.id, Q.c.client_key == client_key)
            ).first()
            if first is not None:
                return _out(first, True)
            if si.finished_at is not None:
                raise Conflict(f"this image was {si.outcome} while the model answered; nothing was stored")
            row = conn.execute(
                insert(Q)
                .values(
                    public_id=new_public_id(),
                    session_image_id=si.id,
                    player_id=player.id,
                    client_key=client_key,
                    text=text,
                    answer=answer,
                    model=game.model,
                    latency_ms=latency_ms,
                    created_at=db.utcnow(),
                )
                .returning(*Q.c)
            ).one()
            return _out(row, False)
    except IntegrityError:  # the same key raced in from a retry: answer with what it stored
        with engine.connect() as conn:
            si = image_in_session(conn, s.id, image_id)
            first = conn.execute(
                select(Q).where(Q.c.session_image_id == si.id, Q.c.client_key == client_key)
            ).one()
            return _out(first, True)

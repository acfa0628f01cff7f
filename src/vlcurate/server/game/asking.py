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
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db
from vlcurate.server.errors import BadRequest, Conflict, NotFound, PlatformError
from vlcurate.server.game.ids import new_public_id
from vlcurate.server.game.players import Player
from vlcurate.server.game.sessions import game_row, image_in_session, require_open
from vlcurate.server.game.views import QuestionOut
from vlcurate.vlm.client import StreamEvent, VLMClient, VLMRequest, VLMResult, VLMSettings

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
        budget = _budget(settings)
        try:
            return future.result(timeout=budget + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ModelUnavailable(
                f"the model did not answer within {budget:.0f} s; nothing was stored, ask again"
            ) from None

    def stream(self, settings: VLMSettings, req: VLMRequest) -> Iterator[StreamEvent]:
        """`VLMClient.stream` for a request handler's thread: events as the model sends them, the
        last one holding the result. Closing the iterator early stops the model's stream."""
        events: queue.Queue[StreamEvent | BaseException] = queue.Queue()

        async def pump() -> None:
            try:
                key = settings.model_dump_json()
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = await VLMClient(settings).__aenter__()
                async for ev in client.stream(req):
                    events.put(ev)
            except BaseException as exc:
                events.put(exc)

        future = asyncio.run_coroutine_threadsafe(pump(), self._running_loop())
        deadline = time.monotonic() + _budget(settings) + 5.0
        try:
            while True:
                try:
                    ev = events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    budget = _budget(settings)
                    why = f"the model did not answer within {budget:.0f} s; nothing was stored, ask again"
                    raise ModelUnavailable(why) from None
                if isinstance(ev, BaseException):
                    raise ModelUnavailable(
                        f"the model did not answer ({type(ev).__name__}); nothing was stored"
                    )
                yield ev
                if ev.result is not None:
                    return
        finally:
            future.cancel()


def _budget(settings: VLMSettings) -> float:
    return settings.timeout_s * (settings.max_retries + 1) + settings.backoff_max_s * settings.max_retries


_SHARED = _SharedClients()


def model_request(game: Any, image: bytes, question: str, tainted: bool) -> tuple[VLMSettings, VLMRequest]:
    """The client settings and the request for one question (the same for both kinds of image but
    for the system prompt)."""
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
    return settings, req


def _answer_of(result: VLMResult) -> tuple[str, float]:
    text = (result.text or "").strip() if result.ok else ""
    if not text:
        why = result.error or "empty answer"
        raise ModelUnavailable(f"the model did not answer ({why}); nothing was stored, ask again")
    return text[:MAX_ANSWER_CHARS], result.latency_s * 1000.0


def ask_model(game: Any, image: bytes, question: str, tainted: bool) -> tuple[str, float]:
    """The model's answer and its latency in ms, or a 502 that says why there is none."""
    return _answer_of(_SHARED.complete(*model_request(game, image, question, tainted)))


def _out(row: Any, replayed: bool) -> QuestionOut:
    return QuestionOut(
        question_id=row.public_id,
        question=row.text,
        answer=row.answer,
        asked_at=db.aware(row.created_at),
        replayed=replayed,
    )


@dataclass(frozen=True)
class Pending:
    """A question that passed every check and waits for the model's answer."""

    session_pk: int
    image_id: str
    player_id: int
    client_key: str
    text: str
    game: Any
    image: bytes
    tainted: bool


def prepare(
    engine: Engine, player: Player, session_id: str, image_id: str, question: str, client_key: str
) -> Pending | QuestionOut:
    """The checks before the model is asked: the stored answer for a replayed `client_key`, a 404/409/
    422 for a session, image, timer or question that does not allow it, else what to ask."""
    Q, S, SI, Im = db.game_questions, db.game_sessions, db.game_session_images, db.game_images
    with engine.connect() as conn:
        # one statement: the session (the player's), the image in it, its bytes, and the question
        # already stored under this key if any (a replay)
        row = conn.execute(
            select(
                S.c.id.label("session_pk"),
                S.c.game_id,
                S.c.state.label("session_state"),
                SI.c.id.label("si_id"),
                SI.c.started_at,
                SI.c.finished_at,
                SI.c.outcome,
                SI.c.deadline,
                SI.c.tainted,
                Im.c.data,
                Q.c.id.label("replayed_id"),
            )
            .select_from(S)
            .outerjoin(SI, (SI.c.session_id == S.c.id) & (SI.c.public_id == image_id))
            .outerjoin(Im, Im.c.id == SI.c.image_id)
            .outerjoin(Q, (Q.c.session_image_id == SI.c.id) & (Q.c.client_key == client_key))
            .where(S.c.public_id == session_id, S.c.player_id == player.id)
        ).first()
        if row is None:
            raise NotFound("no such session for this player")
        if row.si_id is None:
            raise NotFound("this image is not in this session")
        if row.replayed_id is not None:
            return _out(conn.execute(select(Q).where(Q.c.id == row.replayed_id)).one(), True)
        game = game_row(conn, row.game_id)
        if row.session_state != "active":
            raise Conflict(f"this session is {row.session_state}; nothing was stored")
        require_open(row, db.utcnow())
        text = clean_question(question, game.max_question_chars)
    return Pending(row.session_pk, image_id, player.id, client_key, text, game, row.data, bool(row.tainted))


def store(engine: Engine, p: Pending, answer: str, latency_ms: float) -> QuestionOut:
    """Store the question with its one answer, unless the image ended meanwhile (a 409) or a retry
    with the same key stored it first (that answer is returned)."""
    Q = db.game_questions
    try:
        with db.begin_write(engine) as conn:
            SI = db.game_session_images
            si = conn.execute(  # the image as it stands now, and a retry's stored question if any
                select(SI.c.id, SI.c.finished_at, SI.c.outcome, Q.c.id.label("replayed_id"))
                .outerjoin(Q, (Q.c.session_image_id == SI.c.id) & (Q.c.client_key == p.client_key))
                .where(SI.c.session_id == p.session_pk, SI.c.public_id == p.image_id)
            ).one()
            if si.replayed_id is not None:
                return _out(conn.execute(select(Q).where(Q.c.id == si.replayed_id)).one(), True)
            if si.finished_at is not None:
                raise Conflict(f"this image was {si.outcome} while the model answered; nothing was stored")
            row = conn.execute(
                insert(Q)
                .values(
                    public_id=new_public_id(),
                    session_image_id=si.id,
                    player_id=p.player_id,
                    client_key=p.client_key,
                    text=p.text,
                    answer=answer,
                    model=p.game.model,
                    latency_ms=latency_ms,
                    created_at=db.utcnow(),
                )
                .returning(*Q.c)
            ).one()
            return _out(row, False)
    except IntegrityError:  # the same key raced in from a retry: answer with what it stored
        with engine.connect() as conn:
            si = image_in_session(conn, p.session_pk, p.image_id)
            first = conn.execute(
                select(Q).where(Q.c.session_image_id == si.id, Q.c.client_key == p.client_key)
            ).one()
            return _out(first, True)


def ask(
    engine: Engine, player: Player, session_id: str, image_id: str, question: str, client_key: str
) -> QuestionOut:
    p = prepare(engine, player, session_id, image_id, question, client_key)
    if isinstance(p, QuestionOut):
        return p
    answer, latency_ms = ask_model(p.game, p.image, p.text, p.tainted)
    return store(engine, p, answer, latency_ms)


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def ask_streaming(engine: Engine, p: Pending | QuestionOut) -> Iterator[bytes]:
    """The answer as server-sent events while the model writes it: `delta` ({"text"}) events,
    `restart` when a broken model stream is asked again (drop what was shown), then one `answer`
    (the stored question, as the JSON endpoint returns it) or one `error` ({"status", "detail"}).
    Where the model server does not stream, the whole answer is one delta. Exactly one answer is
    stored, after the model finished, under the same rules as `ask`."""
    if isinstance(p, QuestionOut):
        yield _event("answer", p.model_dump(mode="json"))
        return
    try:
        result: VLMResult | None = None
        for ev in _SHARED.stream(*model_request(p.game, p.image, p.text, p.tainted)):
            if ev.result is not None:
                result = ev.result
            elif ev.restart:
                yield _event("restart", {})
            elif ev.delta:
                yield _event("delta", {"text": ev.delta})
        assert result is not None
        answer, latency_ms = _answer_of(result)
        out = store(engine, p, answer, latency_ms)
    except PlatformError as exc:
        yield _event("error", {"status": exc.status, "detail": str(exc)})
        return
    yield _event("answer", out.model_dump(mode="json"))

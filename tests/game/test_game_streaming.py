"""Answers that stream: `Accept: text/event-stream` on the ask endpoint gives the model's words as
they come, then the one stored answer; checks that fail are the usual 4xx; a broken model stream is
an error event and nothing is stored."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.game.conftest import Game, Pools, make_game
from tests.vlm_live import VLMServer

from vlcurate.server import db

SSE = {"Accept": "text/event-stream"}
QUESTION = "Describe the picture in one sentence."


def ask_streaming(c: TestClient, sid: str, iid: str, q: str, key: str) -> tuple[int, list[tuple[str, Any]]]:
    """(status, [(event, data), ...]) of one streamed question."""
    with c.stream(
        "POST",
        f"/api/v1/game/sessions/{sid}/images/{iid}/questions",
        json={"question": q, "client_key": key},
        headers=SSE,
    ) as r:
        if not r.headers["content-type"].startswith("text/event-stream"):
            r.read()
            return r.status_code, [("json", r.json())]
        out, name = [], ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
        return r.status_code, out


def _questions(g: Game) -> int:
    with g.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(db.game_questions)).scalar_one())


def test_answers_stream_word_by_word_and_one_answer_is_stored(game: Game) -> None:
    c = game.guest()
    s = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
    sid, iid = s["session_id"], s["image"]["image_id"]
    key = uuid.uuid4().hex
    status, events = ask_streaming(c, sid, iid, QUESTION, key)
    assert status == 200, events
    names = [n for n, _ in events]
    assert names[-1] == "answer" and set(names[:-1]) == {"delta"} and len(names) >= 3, names
    streamed = "".join(d["text"] for n, d in events if n == "delta")
    final = events[-1][1]
    assert streamed.strip() == final["answer"] and final["question"] == QUESTION and not final["replayed"]
    assert _questions(game) == 1
    # the same answer as the JSON endpoint gives, and the session shows the stored one
    plain = game.ask(c, sid, iid, QUESTION)
    assert plain.status_code == 200 and plain.json()["answer"] == final["answer"]
    shown = c.get(f"/api/v1/game/sessions/{sid}").json()["image"]["questions"]
    assert shown[0]["question_id"] == final["question_id"]
    # a replayed key streams nothing new: the stored answer, marked replayed
    status, again = ask_streaming(c, sid, iid, QUESTION, key)
    assert status == 200 and [n for n, _ in again] == ["answer"] and again[0][1]["replayed"]
    assert again[0][1]["question_id"] == final["question_id"] and _questions(game) == 2


def test_a_streamed_question_after_the_timer_or_too_long_is_refused_before_streaming(game: Game) -> None:
    c = game.guest()
    s = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
    sid, iid = s["session_id"], s["image"]["image_id"]
    status, events = ask_streaming(c, sid, iid, "x" * 600, uuid.uuid4().hex)
    assert status == 422 and "at most 500" in events[0][1]["detail"]
    game.expire(iid)
    status, events = ask_streaming(c, sid, iid, QUESTION, uuid.uuid4().hex)
    assert status == 409 and "time ran out" in events[0][1]["detail"]
    other = game.guest("other")
    status, events = ask_streaming(other, sid, iid, QUESTION, uuid.uuid4().hex)
    assert status == 404
    assert _questions(game) == 0


@pytest.fixture(scope="module")
def cutting_vlm() -> Iterator[VLMServer]:
    with VLMServer(["--faults", "malformed=1.0"]) as server:
        yield server


def test_a_model_stream_cut_short_is_an_error_and_nothing_is_stored(
    tmp_path: Path, pools: Pools, cutting_vlm: VLMServer
) -> None:
    g = make_game(str(tmp_path / "g.db"), pools, cutting_vlm, vlm_timeout_s=5)
    try:
        c = g.guest()
        s = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
        status, events = ask_streaming(c, s["session_id"], s["image"]["image_id"], QUESTION, uuid.uuid4().hex)
        assert status == 200
        names = [n for n, _ in events]
        assert names[-1] == "error" and "answer" not in names
        assert events[-1][1]["status"] == 502 and "stream cut short" in events[-1][1]["detail"]
        assert "restart" in names  # the client asked again after the first broken stream
        assert _questions(g) == 0
    finally:
        g.engine.dispose()

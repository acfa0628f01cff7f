"""Streaming (`stream: true`) over real HTTP: the tiny-synth server's SSE chunks, and the VLM
client's `stream` (deltas, retries of a broken stream, fallback where a server does not stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from tests.offline_vlm.helpers import body, content, data_url
from tests.platform_live import InThreadServer
from tests.vlm_live import VLMServer

from vlcurate.synth import scene_from_seed
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.client import StreamEvent, VLMClient, VLMRequest, VLMSettings

SCENE = scene_from_seed(5, 1)
QUESTION = "How many objects are there?"


def events(server: VLMServer, payload: dict[str, Any]) -> list[str]:
    """The `data:` payloads of one streamed request, in order."""
    with httpx.stream("POST", server.base_url + "/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_server_streams_openai_chunks(vlm_server: VLMServer) -> None:
    prompt = vp.caption_prompt()
    whole = content(vlm_server, prompt, data_url(SCENE), temperature=0)
    data = events(vlm_server, body(prompt, data_url(SCENE), temperature=0, stream=True))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    first, last = chunks[0]["choices"][0], chunks[-1]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""} and first["finish_reason"] is None
    assert last["delta"] == {} and last["finish_reason"] == "stop"
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(deltas) == len(whole.split()) > 3  # one word a chunk
    assert "".join(deltas) == whole
    assert all("usage" not in c for c in chunks)  # not asked for


def test_server_streams_usage_when_asked(vlm_server: VLMServer) -> None:
    payload = body(QUESTION, data_url(SCENE), stream=True, stream_options={"include_usage": True})
    chunks = [json.loads(d) for d in events(vlm_server, payload)[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    answer = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert usage["completion_tokens"] == len(answer.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_server_stream_respects_max_tokens(vlm_server: VLMServer) -> None:
    payload = body(vp.caption_prompt(), data_url(SCENE), stream=True, max_tokens=2)
    chunks = [json.loads(d) for d in events(vlm_server, payload)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(text.split()) == 2 and chunks[-1]["choices"][0]["finish_reason"] == "length"


def _settings(server: VLMServer, **kw: Any) -> VLMSettings:
    return VLMSettings(base_url=server.base_url, backoff_base_s=0.01, backoff_max_s=0.05, **kw)


async def _collect(settings: VLMSettings, req: VLMRequest) -> list[StreamEvent]:
    async with VLMClient(settings) as client:
        return [ev async for ev in client.stream(req)]


def _shown(evs: list[StreamEvent]) -> str:
    """What a reader of the events would show: deltas appended, cleared on a restart."""
    text = ""
    for ev in evs:
        text = "" if ev.restart else text + ev.delta
    return text


def test_client_stream_yields_deltas_and_the_whole_answer(vlm_server: VLMServer) -> None:
    req = VLMRequest(prompt=vp.caption_prompt(), images=[SCENE.encode("png")], use_cache=False)
    evs = asyncio.run(_collect(_settings(vlm_server), req))
    res = evs[-1].result
    assert res is not None and res.ok and res.attempts == 1 and res.finish_reason == "stop"
    assert len([e for e in evs if e.delta]) > 3 and not any(e.restart for e in evs)
    assert _shown(evs) == res.text == content(vlm_server, vp.caption_prompt(), data_url(SCENE), temperature=0)
    assert res.completion_tokens == len(res.text.split()) and res.prompt_tokens > 0
    bad = asyncio.run(_collect(_settings(vlm_server), req.model_copy(update={"n": 2})))
    assert bad[-1].result is not None and "n=1" in (bad[-1].result.error or "")


@pytest.fixture(scope="module")
def cutting_server() -> Iterator[VLMServer]:
    """Half of the streams end half way (the 'malformed' fault), from a fixed seed."""
    with VLMServer(["--faults", "malformed=0.5", "--fault-seed", "4"]) as server:
        yield server


def test_client_treats_a_cut_stream_as_an_error_and_asks_again(cutting_server: VLMServer) -> None:
    req = VLMRequest(prompt=vp.caption_prompt(), images=[SCENE.encode("png")], use_cache=False)
    restarted = failed = 0
    for _ in range(6):
        no_retry = asyncio.run(_collect(_settings(cutting_server, max_retries=0), req))
        res = no_retry[-1].result
        assert res is not None
        if not res.ok:  # a cut stream is an error, never the shorter text
            failed += 1
            assert "stream cut short" in (res.error or "") and res.texts == []
        retried = asyncio.run(_collect(_settings(cutting_server, max_retries=8), req))
        res = retried[-1].result
        assert res is not None and res.ok
        assert _shown(retried) == res.text  # what was shown before a break was cleared
        restarted += any(e.restart for e in retried)
    assert failed >= 1 and restarted >= 1


def _plain_server(mode: str) -> FastAPI:
    """A server that does not stream: it refuses `stream` (400) or ignores it (one JSON body)."""
    app = FastAPI()
    app.state.streamed_asks = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        payload = await request.json()
        if payload.get("stream"):
            app.state.streamed_asks += 1
            if mode == "refuses":
                err = {"message": "stream is not supported", "type": "invalid_request_error", "code": None}
                return JSONResponse({"error": err}, status_code=400)
        message = {"role": "assistant", "content": "two circles"}
        answer = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse({"choices": [answer], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})

    return app


@pytest.mark.parametrize("mode", ["refuses", "ignores"])
def test_client_stream_falls_back_to_a_whole_answer(mode: str) -> None:
    app = _plain_server(mode)
    with InThreadServer(app=_with_engine(app)) as srv:
        settings = VLMSettings(base_url=srv.url + "/v1", model="m")
        req = VLMRequest(prompt="What is there?", use_cache=False)

        async def twice() -> list[list[StreamEvent]]:
            async with VLMClient(settings) as client:
                out = []
                for _ in range(2):
                    out.append([ev async for ev in client.stream(req)])
                return out

        first, second = asyncio.run(twice())
    for evs in (first, second):
        assert [e.delta for e in evs[:-1]] == ["two circles"]
        res = evs[-1].result
        assert res is not None and res.ok and res.text == "two circles" and res.completion_tokens == 2
    # a server that refused once is not asked to stream again by the same client
    assert app.state.streamed_asks == (1 if mode == "refuses" else 2)


def _with_engine(app: FastAPI) -> FastAPI:
    app.state.engine = None  # InThreadServer reads it; this app has no database
    return app

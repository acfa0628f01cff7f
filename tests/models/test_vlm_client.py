"""The VLM client against the real tiny-synth server (`vlcurate vlm serve`) over real HTTP.

Four server processes (plain; json-schema ignored + API key; json-schema rejected; faults) start in
parallel once for the module, so the whole file costs about one start-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.vlm_live import VLMServer

from vlcurate.synth.scene import Scene, scene_from_seed
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.cache import CACHE_FILE
from vlcurate.vlm.client import (
    VLMClient,
    VLMRequest,
    VLMResult,
    VLMSettings,
    check_answer,
    run_many,
    run_many_with_usage,
)

API_KEY = "sk-test-0123456789"
FAULTS = "429=0.15,500=0.1,timeout=0.05,malformed=0.1,empty=0.05"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, VLMServer]]:
    procs = {
        "plain": VLMServer(),
        "ignored": VLMServer(["--json-schema", "ignored"], api_key=API_KEY),
        "rejected": VLMServer(["--json-schema", "rejected"]),
        "faults": VLMServer(["--faults", FAULTS, "--fault-seed", "3", "--hang-s", "1.5"]),
        "victim": VLMServer(["--latency-ms", "40"]),  # killed by the outage test
    }
    try:
        with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda s: s.start(), procs.values()))
        yield procs
    finally:
        for s in procs.values():
            s.stop()


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [scene_from_seed(11, i) for i in range(40)]


@pytest.fixture(scope="module")
def png_site(scenes: list[Scene]) -> Iterator[str]:
    """A local http.server thread serving scene PNGs at /scene/<i>.png (404 for anything else)."""
    files = {f"/scene/{i}.png": s.encode("png") for i, s in enumerate(scenes[:4])}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path)
            self.send_response(200 if data else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def settings(server: VLMServer, **kw: Any) -> VLMSettings:
    base: dict[str, Any] = {"base_url": server.base_url, "backoff_base_s": 0.02, "backoff_max_s": 0.2}
    return VLMSettings(**{**base, **kw})


def count_q(scene: Scene) -> VLMRequest:
    return VLMRequest(
        prompt=vp.question_prompt("How many objects are there?"), images=[scene.encode()], seed=0
    )


def server_requests(server: VLMServer) -> int:
    return int(httpx.get(server.url + "/health", timeout=5).json()["requests"])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------------------------- images, choices, cache


def test_data_url_and_url_images(servers: dict[str, VLMServer], scenes: list[Scene], png_site: str) -> None:
    plain = servers["plain"]
    direct = run_many(settings(plain), [count_q(s) for s in scenes[:4]])
    assert all(r.ok for r in direct), [r.error for r in direct]
    assert [r.text for r in direct] == [str(s.n_objects) for s in scenes[:4]]
    urls = [f"{png_site}/scene/{i}.png" for i in range(4)]
    q = vp.question_prompt("How many objects are there?")
    for transport in ("url", "data_url"):  # the server fetches, or the client fetches and inlines
        res = run_many(
            settings(plain, image_transport=transport),
            [VLMRequest(prompt=q, images=[u], seed=0) for u in urls],
        )
        assert [r.text for r in res] == [str(s.n_objects) for s in scenes[:4]], transport
    # a local path is inlined as a data URL too
    res = run_many(settings(plain), [VLMRequest(prompt=q, images=[str(_write(scenes[0]))], seed=0)])
    assert res[0].text == str(scenes[0].n_objects)


def _write(scene: Scene) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"vlm-test-{os.getpid()}.png"
    path.write_bytes(scene.encode("png"))
    return path


def test_missing_url_image_names_the_image(servers: dict[str, VLMServer], png_site: str) -> None:
    for transport in ("url", "data_url"):
        [r] = run_many(
            settings(servers["plain"], image_transport=transport),
            [VLMRequest(prompt="What is this?", images=[f"{png_site}/nope.png"])],
        )
        assert not r.ok and r.texts == []
        assert "image 0" in (r.error or "") and "404" in (r.error or ""), r.error


def test_n_choices_finish_reason_and_tokens(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    s = settings(servers["plain"], input_cost_per_mtok=2.0, output_cost_per_mtok=10.0)
    reqs = [
        VLMRequest(prompt=vp.caption_prompt("detailed"), images=[scenes[0].encode()], n=3, temperature=1.0),
        VLMRequest(prompt=vp.caption_prompt("detailed"), images=[scenes[1].encode()], max_tokens=2),
    ]
    (three, cut), usage = run_many_with_usage(s, reqs)
    assert three.ok and len(three.texts) == len(three.finish_reasons) == 3
    assert three.finish_reasons == ["stop"] * 3
    assert cut.ok and cut.finish_reason == "length" and len(cut.text.split()) == 2
    assert three.prompt_tokens > 0 and three.completion_tokens > 0
    assert three.cost == pytest.approx((three.prompt_tokens * 2 + three.completion_tokens * 10) / 1e6)
    assert usage.cost == pytest.approx(three.cost + cut.cost)
    assert usage.prompt_tokens == three.prompt_tokens + cut.prompt_tokens
    assert usage.requests == 2 and usage.ok == 2 and usage.retries == 0


def test_cache_rerun_makes_no_requests(
    servers: dict[str, VLMServer], scenes: list[Scene], tmp_path: Path
) -> None:
    plain = servers["plain"]
    s = settings(plain, cache_dir=str(tmp_path))
    reqs = [count_q(sc) for sc in scenes[:12]]
    first, u1 = run_many_with_usage(s, reqs)
    assert u1.requests == 12 and u1.cache_hits == 0 and all(r.ok for r in first)
    before = server_requests(plain)
    second, u2 = run_many_with_usage(s, reqs)  # a second client on the same cache folder
    assert server_requests(plain) == before and u2.requests == 0 and u2.cache_hits == 12
    assert all(r.cached and r.attempts == 0 and r.cost == 0 for r in second)
    assert [r.texts for r in second] == [r.texts for r in first]
    # the key covers the prompt, sampling parameters and image bytes: any change asks again
    changed = [
        reqs[0].model_copy(update={"max_tokens": 17}),
        reqs[0].model_copy(update={"images": [scenes[20].encode()]}),
        reqs[0].model_copy(update={"prompt": reqs[0].prompt + " "}),
    ]
    _, u3 = run_many_with_usage(s, changed)
    assert u3.requests == 3 and u3.cache_hits == 0


def test_corrupt_cache_file_is_rebuilt(
    servers: dict[str, VLMServer], scenes: list[Scene], tmp_path: Path
) -> None:
    s = settings(servers["plain"], cache_dir=str(tmp_path))
    (tmp_path / CACHE_FILE).write_bytes(b"this is not a database" * 100)
    res, usage = run_many_with_usage(s, [count_q(scenes[0])])
    assert res[0].ok and usage.cache_rebuilt and usage.requests == 1
    assert list(tmp_path.glob(CACHE_FILE + ".corrupt-*")), "the unreadable file is kept aside"
    res, usage = run_many_with_usage(s, [count_q(scenes[0])])
    assert res[0].cached and usage.requests == 0 and not usage.cache_rebuilt


# ----------------------------------------------------------------------------- structured output


def cot_req(scene: Scene, schema: dict[str, Any] | None = None) -> VLMRequest:
    qa = scene.qa[0]
    return VLMRequest(
        prompt=vp.cot_prompt(qa.question, qa.answer),
        images=[scene.encode()],
        json_schema=schema or vp.COT_SCHEMA,
    )


def test_structured_output_supported(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    res, usage = run_many_with_usage(settings(servers["plain"]), [cot_req(s) for s in scenes[:3]])
    assert usage.structured_mode == "json_schema" and usage.requests == 3
    for r, sc in zip(res, scenes[:3], strict=True):
        assert r.ok and r.parsed[0] is not None
        assert set(r.parsed[0]) == {"reasoning", "answer"}
        assert vp.normalize_answer(r.parsed[0]["answer"]) == vp.normalize_answer(sc.qa[0].answer)


@pytest.mark.parametrize("mode", ["ignored", "rejected"])
def test_structured_output_falls_back_to_prompt(
    servers: dict[str, VLMServer], scenes: list[Scene], mode: str
) -> None:
    """The client learns that the server will not honour response_format and asks in the prompt.

    The model follows the schema given in the prompt (as instruction-tuned VLMs do), and the client
    validates what comes back against the schema.
    """
    s = settings(servers[mode], api_key=API_KEY, max_answer_retries=1, max_concurrency=1)
    reqs = [cot_req(sc) for sc in scenes[:3]]

    async def go() -> tuple[list[VLMResult], Any]:
        async with VLMClient(s) as client:
            first = await client.complete(reqs[0])
            assert client.usage().structured_mode == "prompt"
            rest = await client.complete_many(reqs[1:])
            return [first, *rest], client.usage()

    res, usage = run(go())
    assert usage.structured_mode == "prompt"
    # first request: one probe with response_format, then 1 + max_answer_retries in the prompt
    assert res[0].attempts <= 3
    for r in res[1:]:
        assert r.attempts <= 2, "once learnt, later requests go straight to prompt mode"
    for r in res:
        assert r.ok, r.error
        assert r.parsed[0] is not None and check_answer(r.text, vp.COT_SCHEMA)[1] is None
        assert set(r.parsed[0]) == {"reasoning", "answer"}


def test_free_text_answer_to_forced_json_schema_is_recorded(
    servers: dict[str, VLMServer], scenes: list[Scene]
) -> None:
    """A server that silently ignores response_format answers in prose: with structured output forced
    to json_schema the client re-asks a bounded number of times, then records the error."""
    s = settings(servers["ignored"], api_key=API_KEY, max_answer_retries=1, structured_output="json_schema")
    res, usage = run_many_with_usage(s, [cot_req(sc) for sc in scenes[:2]])
    for r in res:
        assert not r.ok and r.texts == []
        assert "not JSON" in (r.error or "") and r.attempts == 2, r.error
    assert usage.errors.get("not_json") == 4


def test_schema_violation_retried_then_recorded(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["zebra"]}},
        "required": ["answer"],
    }
    res, usage = run_many_with_usage(
        settings(servers["plain"], max_answer_retries=2), [cot_req(scenes[0], schema)]
    )
    r = res[0]
    assert not r.ok and r.attempts == 3 and "does not match the schema at answer" in (r.error or "")
    assert usage.errors.get("schema") == 3 and usage.requests == 3
    [bad] = run_many(settings(servers["plain"]), [cot_req(scenes[0], {"type": "nonsense"})])
    assert bad.attempts == 0 and "invalid json_schema" in (bad.error or "")


# ----------------------------------------------------------------------------- bad input and errors


def test_rejected_image_is_not_retried(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    broken_png = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20
    reqs = [
        VLMRequest(prompt="What is this?", images=[scenes[0].encode(), broken_png]),
        VLMRequest(prompt="What is this?", images=[b"hello, not an image"]),
        VLMRequest(prompt="What is this?", images=["/no/such/file.png"]),
    ]
    (server_side, unknown, missing), usage = run_many_with_usage(settings(servers["plain"]), reqs)
    assert server_side.attempts == 1 and "HTTP 400" in (server_side.error or "")
    assert "image 1 (bytes, png, 168 bytes" in (server_side.error or ""), server_side.error
    assert unknown.attempts == 0 and "image 0 (bytes): not a JPEG, PNG" in (unknown.error or "")
    assert missing.attempts == 0 and "no such file" in (missing.error or "")
    assert usage.requests == 1 and usage.retries == 0 and usage.failed == 3


def test_api_key(servers: dict[str, VLMServer], scenes: list[Scene], monkeypatch: pytest.MonkeyPatch) -> None:
    srv = servers["ignored"]
    [bad] = run_many(settings(srv, api_key="wrong-key"), [count_q(scenes[0])])
    assert bad.attempts == 1 and bad.texts == []
    assert "authentication failed (HTTP 401)" in (bad.error or "") and "VLCURATE_VLM_API_KEY" in (
        bad.error or ""
    )
    monkeypatch.setenv("VLCURATE_VLM_API_KEY", API_KEY)
    [good] = run_many(settings(srv), [count_q(scenes[0])])
    assert good.ok and good.text == str(scenes[0].n_objects)


def test_wrong_model_and_unreachable_server(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    [r] = run_many(settings(servers["plain"], model="no-such-model"), [count_q(scenes[0])])
    assert r.attempts == 1 and "HTTP 404" in (r.error or "") and "no-such-model" in (r.error or "")
    dead = VLMServer()  # a free port nobody listens on
    reqs = [count_q(s) for s in scenes[:6]]
    res, usage = run_many_with_usage(settings(dead, max_retries=2, max_concurrency=2), reqs)
    assert all("cannot reach" in (x.error or "") for x in res)
    # the first requests use their retry budget; after that the client knows the server is gone
    assert max(x.attempts for x in res) == 3 and min(x.attempts for x in res) == 1
    assert usage.requests < 3 * len(reqs)


def test_run_many_from_threads_and_running_loops(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    s = settings(servers["plain"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: run_many(s, [count_q(scenes[i])]), range(2)))
    assert [o[0].text for o in outs] == [str(scenes[i].n_objects) for i in range(2)]

    async def inside_a_loop() -> list[VLMResult]:
        return run_many(s, [count_q(scenes[2])])

    assert run(inside_a_loop())[0].text == str(scenes[2].n_objects)


# ----------------------------------------------------------------------------- faults and outages


def test_fault_server_loses_and_duplicates_nothing(
    servers: dict[str, VLMServer], scenes: list[Scene]
) -> None:
    # every question of 12 scenes, twice (~120 requests; few images, so the server's encoder is
    # not what is measured); every answer known from a fault-free run
    reqs = [
        VLMRequest(prompt=vp.question_prompt(qa.question), images=[sc.encode()], seed=0)
        for sc in scenes[:12]
        for qa in sc.qa
    ] * 2
    half = len(reqs) // 2
    expected = [r.text for r in run_many(settings(servers["plain"]), reqs)]
    assert len(set(expected)) > 3 and expected[:half] == expected[half:]
    faulty = servers["faults"]
    before = server_requests(faulty)
    res, usage = run_many_with_usage(settings(faulty, timeout_s=1.0, max_concurrency=16), reqs)
    assert len(res) == len(reqs) and usage.results == len(reqs)
    assert usage.ok + usage.failed == len(reqs)
    for r, want in zip(res, expected, strict=True):  # in order: each answer is its own scene's count
        assert (r.ok and r.text == want) or (not r.ok and r.texts == [] and r.error)
    assert usage.ok >= len(reqs) - 2
    for kind in ("429", "500", "timeout", "malformed", "empty"):
        assert usage.errors.get(kind, 0) > 0, (kind, usage.errors)
    assert usage.retries == usage.requests - len(reqs)
    assert server_requests(faulty) - before == usage.requests, "every attempt reached the server once"
    assert usage.min_concurrency < usage.max_concurrency == 16, "the adaptive limit went down"


def test_server_killed_mid_run_then_rerun_resumes(
    servers: dict[str, VLMServer], scenes: list[Scene], tmp_path: Path
) -> None:
    srv = servers["victim"]
    s = settings(srv, cache_dir=str(tmp_path), max_retries=2, max_concurrency=4, timeout_s=5)
    reqs = [count_q(sc) for sc in scenes[:10]] * 12  # 120 requests
    reqs = [r.model_copy(update={"seed": i}) for i, r in enumerate(reqs)]

    async def run_and_kill() -> tuple[list[VLMResult], Any]:
        async with VLMClient(s) as client:
            task = asyncio.create_task(client.complete_many(reqs))
            while client.usage().ok < 20:
                await asyncio.sleep(0.01)
            assert srv.proc is not None
            os.killpg(srv.proc.pid, signal.SIGKILL)  # a crash: no clean shutdown
            srv.proc.wait(10)
            return await task, client.usage()

    first, u1 = run(run_and_kill())
    assert len(first) == len(reqs) and u1.ok + u1.failed == len(reqs)
    assert 20 <= u1.ok < len(reqs)
    assert all(r.ok or "cannot reach" in (r.error or "") for r in first), {r.error for r in first}

    # the server stays down; a re-run against a replacement server (the cache does not depend on
    # the URL) asks only for what failed
    second, u2 = run_many_with_usage(s.model_copy(update={"base_url": servers["plain"].base_url}), reqs)
    assert all(r.ok for r in second)
    assert u2.cache_hits == u1.ok and u2.requests == u1.failed
    texts = [r.text for r in second]
    assert all(texts[i] == texts[i % 10] for i in range(len(texts))), "each answer is its own request's"
    assert all(a.text == b.text for a, b in zip(first, second, strict=True) if a.ok)


def test_limiter_halves_and_recovers() -> None:
    from vlcurate.vlm.usage import AdaptiveLimiter

    async def go() -> None:
        lim = AdaptiveLimiter(8)
        epochs = [await lim.acquire() for _ in range(4)]
        for e in epochs:  # four failures from the same window count once
            await lim.release(e, "overload")
        assert lim.limit == 4 and lim.lowest == 4
        e = await lim.acquire()
        await lim.release(e, "overload")
        assert lim.limit == 2
        for _ in range(10):  # one request at a time does not prove that more would be fine
            e = await lim.acquire()
            await lim.release(e, "ok")
        assert lim.limit == 3
        for _ in range(6):  # successes while the limit is in use raise it back to the bound
            epochs = [await lim.acquire() for _ in range(lim.limit)]
            for e in epochs:
                await lim.release(e, "ok")
        assert lim.limit == 8 and lim.lowest == 2

    run(go())


def test_timeouts_are_bounded(servers: dict[str, VLMServer], scenes: list[Scene]) -> None:
    t0 = time.monotonic()
    res, usage = run_many_with_usage(
        settings(servers["faults"], timeout_s=0.3, max_retries=0, max_answer_retries=0),
        [count_q(scenes[0])] * 8,
    )
    assert time.monotonic() - t0 < 5
    assert all(r.ok or r.error for r in res) and usage.results == 8

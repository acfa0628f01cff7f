"""Server modes over real HTTP: API key, adversarial answers, json_schema support, faults, latency."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest
from tests.offline_vlm.helpers import body, chat, content, data_url
from tests.vlm_live import VLMServer

from vlcurate.synth import iter_scenes, scene_from_seed
from vlcurate.vlm import prompts as vp

pytestmark = pytest.mark.slow  # each test starts its own server (~5 s each)

SCENE = scene_from_seed(9, 1)
COT_FMT = {"type": "json_schema", "json_schema": {"name": "cot", "schema": vp.COT_SCHEMA, "strict": True}}


def test_api_key_wrong_answers_rejected_schema_and_extra_name(vlm_server: VLMServer) -> None:
    args = ["--wrong-rate", "1", "--wrong-kinds", "colour", "--json-schema", "rejected"]
    args += ["--served-model-name", "my-vlm", "--max-image-bytes", "2048"]
    with VLMServer(args, api_key="sekrit") as vlm:
        bare = httpx.post(vlm.base_url + "/chat/completions", json=body("hi"))
        assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.get(vlm.base_url + "/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        names = [m["id"] for m in httpx.get(vlm.base_url + "/models", headers=vlm.headers).json()["data"]]
        assert names == ["tiny-synth", "my-vlm"]
        url = data_url(SCENE)
        bg = content(vlm, vp.question_prompt("What colour is the background?"), url, model="my-vlm")
        assert bg != SCENE.background  # every colour answer is wrong on purpose
        count = content(vlm, vp.question_prompt("How many objects are there?"), url)
        honest = content(vlm_server, vp.question_prompt("How many objects are there?"), url)
        assert count == honest  # counts are not in --wrong-kinds
        r = chat(vlm, vp.cot_prompt("How many objects are there?", "1"), url, response_format=COT_FMT)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"
        big = "data:image/png;base64," + "A" * 8000
        r = chat(vlm, "hi", big)
        assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"


def test_wrong_rate_is_deterministic_and_near_its_rate() -> None:
    scenes = list(iter_scenes(5, seed=5))
    with VLMServer(["--wrong-rate", "0.5"]) as vlm:
        first = [content(vlm, vp.question_prompt(q.question), data_url(s)) for s in scenes for q in s.qa]
        again = [content(vlm, vp.question_prompt(q.question), data_url(s)) for s in scenes for q in s.qa]
    truth = [q.answer for s in scenes for q in s.qa]
    assert first == again
    wrong = sum(a != t for a, t in zip(first, truth, strict=True)) / len(truth)
    assert 0.3 <= wrong <= 0.85


def test_json_schema_ignored_gives_free_text_and_latency_is_concurrent() -> None:
    with VLMServer(["--json-schema", "ignored", "--latency-ms", "300"]) as vlm:
        text = content(
            vlm, vp.cot_prompt("How many objects are there?", "1"), data_url(SCENE), response_format=COT_FMT
        )
        assert vp.final_answer(text) is not None
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)

        async def many() -> float:
            async with httpx.AsyncClient(timeout=30) as client:
                t = time.monotonic()
                rs = await asyncio.gather(
                    *[
                        client.post(
                            vlm.base_url + "/chat/completions", json=body(vp.question_prompt("Is it?"))
                        )
                        for _ in range(8)
                    ]
                )
                assert all(r.status_code == 200 for r in rs)
                return time.monotonic() - t

        assert asyncio.run(many()) < 8 * 0.3 / 2  # waits overlap: not 8 x 300 ms in a row


def test_each_fault_happens_at_its_rate() -> None:
    rates = {"429": 0.15, "500": 0.1, "timeout": 0.05, "malformed": 0.1, "empty": 0.1}
    spec = ",".join(f"{k}={v}" for k, v in rates.items())
    n = 300
    with VLMServer(["--faults", spec, "--fault-seed", "3", "--hang-s", "0.05"]) as vlm:
        seen: Counter[str] = Counter()
        with httpx.Client(timeout=30) as client:
            for _ in range(n):
                t = time.monotonic()
                r = client.post(
                    vlm.base_url + "/chat/completions", json=body(vp.question_prompt("How many?"))
                )
                slow = time.monotonic() - t >= 0.05
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
                    seen["429"] += 1
                elif r.status_code == 500:
                    assert r.json()["error"]["type"] == "server_error"
                    seen["500"] += 1
                else:
                    assert r.status_code == 200
                    try:
                        msg = r.json()["choices"][0]["message"]["content"]
                    except json.JSONDecodeError:
                        seen["malformed"] += 1
                        continue
                    if msg == "":
                        seen["empty"] += 1
                    elif slow:
                        seen["timeout"] += 1
        counts = httpx.get(vlm.url + "/health").json()["faults"]
    for kind, p in rates.items():
        assert counts[kind] == seen[kind] or kind == "timeout", (kind, counts, seen)
        assert abs(counts[kind] / n - p) <= 0.06, (kind, counts[kind] / n, p)
    assert seen["timeout"] >= counts["timeout"] * 0.8


def test_bad_server_options_fail_clearly() -> None:
    import subprocess
    import sys

    for args in (["--faults", "418=0.5"], ["--wrong-kinds", "size", "--json-schema", "maybe"]):
        r = subprocess.run(
            [sys.executable, "-m", "vlcurate.cli.main", "vlm", "serve", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "error" in r.stderr.lower(), (args, r.stderr)

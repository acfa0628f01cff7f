"""The OpenAI protocol over real HTTP: shapes, usage, n, max_tokens, structured output, errors."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from tests.offline_vlm.helpers import body, chat, data_url
from tests.vlm_live import VLMServer

from vlcurate.synth import scene_from_seed
from vlcurate.vlm import prompts as vp

SCENE = scene_from_seed(3, 0)


def _error(r: httpx.Response, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type", "code"} <= set(err) and err["message"]
    return dict(err)


def test_models(vlm_server: VLMServer) -> None:
    r = httpx.get(vlm_server.base_url + "/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny-synth"]
    assert httpx.get(vlm_server.base_url + "/models/tiny-synth").json()["id"] == "tiny-synth"
    _error(httpx.get(vlm_server.base_url + "/models/gpt-9"), 404)


def test_completion_shape_and_usage(vlm_server: VLMServer) -> None:
    r = chat(vlm_server, vp.caption_prompt(), data_url(SCENE, "jpg"))
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny-synth"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    words = len(choice["message"]["content"].split())
    prompt_words = len(vp.caption_prompt().split())
    assert out["usage"] == {
        "prompt_tokens": prompt_words + 64,
        "completion_tokens": words,
        "total_tokens": prompt_words + 64 + words,
    }


def test_n_candidates_vary_and_are_deterministic_by_seed(vlm_server: VLMServer) -> None:
    url = data_url(SCENE)
    a = chat(vlm_server, vp.caption_prompt(), url, n=5, temperature=1.0, seed=7).json()
    b = chat(vlm_server, vp.caption_prompt(), url, n=5, temperature=1.0, seed=7).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert len(texts) == 5 and [c["index"] for c in a["choices"]] == [0, 1, 2, 3, 4]
    assert texts == [c["message"]["content"] for c in b["choices"]]
    assert len(set(texts)) >= 2
    greedy = chat(vlm_server, vp.caption_prompt(), url, n=3, temperature=0).json()
    assert len({c["message"]["content"] for c in greedy["choices"]}) == 1
    assert texts[0] == greedy["choices"][0]["message"]["content"]  # the first candidate is the best


def test_max_tokens_cuts_with_length(vlm_server: VLMServer) -> None:
    r = chat(vlm_server, vp.cot_prompt("How many objects are there?", "2"), data_url(SCENE), max_tokens=3)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 3
    assert r.json()["usage"]["completion_tokens"] == 3


def test_json_schema_and_json_object(vlm_server: VLMServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "cot", "schema": vp.COT_SCHEMA, "strict": True}}
    q = SCENE.qa[0]
    r = chat(vlm_server, vp.cot_prompt(q.question, q.answer), data_url(SCENE), response_format=fmt)
    out = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(out) == {"reasoning", "answer"} and out["reasoning"].startswith("I see")
    schema = {"type": "object", "properties": {"caption": {"type": "string"}}, "required": ["caption"]}
    fmt2 = {"type": "json_schema", "json_schema": {"name": "cap", "schema": schema}}
    r = chat(vlm_server, vp.caption_prompt(), data_url(SCENE), response_format=fmt2)
    assert set(json.loads(r.json()["choices"][0]["message"]["content"])) == {"caption"}
    r = chat(
        vlm_server, vp.question_prompt(q.question), data_url(SCENE), response_format={"type": "json_object"}
    )
    assert "answer" in json.loads(r.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"model": "tiny-synth"}, "invalid_request"),  # no messages
        ({"model": "tiny-synth", "messages": []}, "invalid_request"),
        ({"model": "tiny-synth", "messages": [{"role": "wizard", "content": "hi"}]}, "invalid_request"),
        (body("hi", n=0), "invalid_request"),
        (body("hi", temperature=5), "invalid_request"),
        (body("hi", max_tokens=0), "invalid_request"),
        (body("hi", stream=True, n=2), "unsupported_parameter"),
        (body("hi", response_format={"type": "xml"}), "invalid_request"),
        (body("hi", response_format={"type": "json_schema"}), "invalid_request"),
        (
            body(
                "hi",
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}},
            ),
            "invalid_request",
        ),
        (body("hi", "data:image/png;base64,@@@not-base64@@@"), "invalid_image"),
        (body("hi", "data:image/png;base64," + base64.b64encode(b"not an image").decode()), "invalid_image"),
        (body("hi", "ftp://example.com/x.png"), "invalid_image_url"),
        (body("hi", "data:image/png,rawbytes"), "invalid_image_url"),
        (body("hi", "http://127.0.0.1:9/missing.png"), "image_fetch_failed"),
        (
            {"model": "tiny-synth", "messages": [{"role": "system", "content": "only a system prompt"}]},
            "invalid_request",
        ),
    ],
)
def test_bad_requests_get_400(vlm_server: VLMServer, payload: dict[str, object], code: str) -> None:
    r = httpx.post(vlm_server.base_url + "/chat/completions", json=payload, timeout=30)
    assert _error(r, 400)["code"] == code


def test_invalid_json_too_many_images_unknown_model(vlm_server: VLMServer) -> None:
    url = vlm_server.base_url + "/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert _error(r, 400)["code"] == "invalid_json"
    img = {"type": "image_url", "image_url": {"url": data_url(SCENE)}}
    msg = {"role": "user", "content": [{"type": "text", "text": "hi"}, *[img] * 5]}
    r = httpx.post(url, json={"model": "tiny-synth", "messages": [msg]}, timeout=30)
    assert _error(r, 400)["code"] == "too_many_images"
    assert _error(chat(vlm_server, "hi", model="gpt-4o"), 404)["code"] == "model_not_found"
    assert _error(httpx.get(vlm_server.url + "/v1/nothing"), 404)["code"] == "not_found"


def test_image_from_http_url(vlm_server: VLMServer, tmp_path: object) -> None:
    # The server fetches http(s) image URLs itself: serve a scene from a tiny in-thread HTTP server.
    import http.server
    import threading

    png = SCENE.encode("png")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/scene.png"
        by_url = chat(vlm_server, vp.caption_prompt(), url).json()["choices"][0]["message"]["content"]
        by_data = chat(vlm_server, vp.caption_prompt(), data_url(SCENE)).json()["choices"][0]["message"][
            "content"
        ]
        assert by_url == by_data
    finally:
        httpd.shutdown()

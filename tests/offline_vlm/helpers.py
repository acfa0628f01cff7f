"""Small request builders for the tiny-synth VLM server tests (plain httpx, OpenAI's JSON shapes)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
from tests.vlm_live import VLMServer

from vlcurate.synth import Scene


def data_url(scene: Scene, fmt: str = "png") -> str:
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(scene.encode(fmt)).decode()


def body(text: str, image: str | None = None, model: str = "tiny-synth", **kw: Any) -> dict[str, Any]:
    content: Any = text
    if image is not None:
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


def chat(server: VLMServer, text: str, image: str | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(
        server.base_url + "/chat/completions",
        json=body(text, image, **kw),
        headers=server.headers,
        timeout=60,
    )


def content(server: VLMServer, text: str, image: str | None = None, **kw: Any) -> str:
    r = chat(server, text, image, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])

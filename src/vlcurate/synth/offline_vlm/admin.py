"""Weaknesses and memory on the running server: `POST /admin/memory`, `GET /admin/weaknesses`.

`install_weaknesses(app, brain, settings)` gives the brain its planted weaknesses (`weakness.py`),
loads `--memory` at start-up, and adds the two routes, so a loop can hand the "model" new training
data and have it "learn" without a restart. The routes need the server's API key when one is set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlcurate.synth.offline_vlm.answers import Brain
from vlcurate.synth.offline_vlm.memory import MemoryLoadError
from vlcurate.synth.offline_vlm.protocol import error_body
from vlcurate.synth.offline_vlm.settings import VLMServerSettings
from vlcurate.synth.offline_vlm.weakness import Weaknesses, parse_weaknesses


class MemoryRequest(BaseModel):
    """Body of `POST /admin/memory`: the path (file or folder) of the training samples to remember."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)


def install_weaknesses(app: FastAPI, brain: Brain, settings: VLMServerSettings) -> Weaknesses:
    """Attach weaknesses and memory to `brain` and mount the admin routes on `app`."""
    weak = Weaknesses(parse_weaknesses(settings.weakness), min_samples=settings.memory_min)
    if settings.memory:
        weak.load(settings.memory)  # a bad --memory fails at start-up (MemoryLoadError is a ValueError)
    brain.weakness = weak
    app.state.weaknesses = weak

    def denied(request: Request) -> JSONResponse | None:
        if settings.api_key and request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            body = error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return JSONResponse(body, status_code=401)
        return None

    @app.get("/admin/weaknesses")
    async def weaknesses(request: Request) -> Any:
        return denied(request) or weak.status()

    @app.post("/admin/memory")
    async def memory(request: Request) -> Any:
        if (no := denied(request)) is not None:
            return no
        try:
            req = MemoryRequest.model_validate_json(await request.body())
            await asyncio.to_thread(weak.load, req.path)
        except ValidationError as exc:
            first = exc.errors()[0]
            msg = f"invalid request: {'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg')}"
            return JSONResponse(error_body(msg, "invalid_request_error", "invalid_request"), status_code=400)
        except (MemoryLoadError, OSError, ValueError) as exc:
            body = error_body(f"cannot load memory: {exc}", "invalid_request_error", "invalid_memory")
            return JSONResponse(body, status_code=400)
        return weak.status()

    return weak

"""The FastAPI app: `GET /v1/models` and `POST /v1/chat/completions`, OpenAI's shapes and errors.

Model work never runs on the event loop: images from concurrent requests are encoded together by
a micro-batching worker, and each task runs in a worker thread (the brain holds one model lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlcurate.synth.offline_vlm.admin import install_weaknesses
from vlcurate.synth.offline_vlm.answers import Brain
from vlcurate.synth.offline_vlm.faults import FaultPlan
from vlcurate.synth.offline_vlm.images import BadRequest, LoadedImage, data_url_bytes, decode, fetch_url
from vlcurate.synth.offline_vlm.intent import detect
from vlcurate.synth.offline_vlm.protocol import (
    ChatRequest,
    count_tokens,
    error_body,
    sse,
    stream_pieces,
    truncate_tokens,
)
from vlcurate.synth.offline_vlm.settings import VLMServerSettings
from vlcurate.synth.offline_vlm.tasks import as_json, run_task, split_schema_instruction
from vlcurate.vlm import prompts as vp


class ImageBatcher:
    """Collects the images of concurrent requests and encodes up to `max_batch` of them at once."""

    def __init__(self, brain: Brain, executor: ThreadPoolExecutor, max_batch: int) -> None:
        self.brain = brain
        self.executor = executor
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[LoadedImage, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.batches = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def embed(self, image: LoadedImage) -> np.ndarray:
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put((image, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            images = [b[0] for b in batch]
            try:
                embs = await loop.run_in_executor(
                    self.executor, self.brain.embed_images, [i.array for i in images], [i.key for i in images]
                )
                self.batches += 1
                for (_, fut), e in zip(batch, embs, strict=True):
                    if not fut.done():
                        fut.set_result(e)
            except Exception as exc:  # a model failure fails these requests, not the worker
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)


def _error(status: int, message: str, type_: str, code: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers or None)


def _bad(message: str, code: str = "invalid_request") -> JSONResponse:
    return _error(400, message, "invalid_request_error", code)


STREAM_WORD_S = 0.005  # the pace of a streamed answer: 200 words a second


async def _stream(
    head: dict[str, Any], choice: dict[str, Any], usage: dict[str, int] | None, *, cut: bool
) -> AsyncIterator[bytes]:
    """OpenAI's chat.completion.chunk events for one choice: the role, one delta a word, the finish
    reason, usage when asked for (`stream_options.include_usage`), then `[DONE]`. `cut` (the
    "malformed" fault) ends the stream half way, as a dropped connection would."""
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [c]} | ({"usage": None} if usage is not None else {}))

    yield chunk({"role": "assistant", "content": ""})
    pieces = stream_pieces(choice["message"]["content"])
    for i, piece in enumerate(pieces):
        if cut and i >= len(pieces) // 2:
            return
        yield chunk({"content": piece})
        await asyncio.sleep(STREAM_WORD_S)  # each word leaves as its own chunk, as it would be written
    if cut:
        return
    yield chunk({}, choice["finish_reason"])
    if usage is not None:
        yield sse({**base, "choices": [], "usage": usage})
    yield sse("[DONE]")


def create_app(settings: VLMServerSettings, brain: Brain | None = None) -> FastAPI:
    """The app; loads the model now (so a missing model fails at start-up, not on a request)."""
    if brain is None:
        from vlcurate.models.loader import load_scorer

        scorer = load_scorer(settings.model, device=settings.device)
        if scorer.device.type == "cpu":
            import torch

            torch.set_num_threads(settings.threads)
        brain = Brain(scorer, wrong_rate=settings.wrong_rate, wrong_kinds=settings.wrong_kinds)
    compute = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlm-task")
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm-image")
    faults = FaultPlan(settings.faults, settings.fault_seed)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = ImageBatcher(brain, encoder, settings.max_batch)
        app.state.batcher.start()
        async with httpx.AsyncClient() as client:
            app.state.http = client
            yield
        await app.state.batcher.stop()
        compute.shutdown(wait=False, cancel_futures=True)
        encoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vlcurate tiny-synth VLM", lifespan=lifespan)
    app.state.settings = settings
    app.state.brain = brain
    app.state.faults = faults
    install_weaknesses(app, brain, settings)  # --weakness, --memory, /admin/memory (weakness.py)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return _error(exc.status_code, str(exc.detail), "invalid_request_error", code)

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if settings.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if given != f"Bearer {settings.api_key}":
                return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return await call_next(request)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "vlcurate"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "faults": faults.counts, "requests": faults.requests}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in settings.model_names]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> Any:
        if name not in settings.model_names:
            return _error(
                404, f"The model `{name}` does not exist.", "invalid_request_error", "model_not_found"
            )
        return model_card(name)

    async def load_images(req: ChatRequest) -> list[LoadedImage]:
        urls = [u for m in req.messages for u in m.image_urls()]
        if len(urls) > settings.max_images:
            raise BadRequest(
                f"too many images: {len(urls)} (this server accepts at most {settings.max_images})",
                "too_many_images",
            )
        out = []
        for url in urls:
            if url.startswith("data:"):
                data = data_url_bytes(url, settings.max_image_bytes)
            elif url.startswith(("http://", "https://")):
                data = await fetch_url(
                    app.state.http, url, settings.max_image_bytes, settings.fetch_timeout_s
                )
            else:
                raise BadRequest("image_url must be a data: URL or an http(s) URL", "invalid_image_url")
            if len(data) > settings.max_image_bytes:
                raise BadRequest(
                    f"image is larger than the limit of {settings.max_image_bytes} bytes", "image_too_large"
                )
            out.append(
                await asyncio.get_running_loop().run_in_executor(compute, decode, data, brain.image_size)
            )
        return out

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_request_bytes:
            return _error(
                413, f"request body exceeds {settings.max_request_bytes} bytes", "invalid_request_error"
            )
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _bad(f"request body is not valid JSON: {exc}", "invalid_json")
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            return _bad(f"invalid request: {where}: {first.get('msg')}", "invalid_request")
        if req.model not in settings.model_names:
            return _error(
                404, f"The model `{req.model}` does not exist.", "invalid_request_error", "model_not_found"
            )
        if req.stream and req.n > 1:
            return _bad("stream=true takes n=1 on this server", "unsupported_parameter")
        schema: dict[str, Any] | None = None
        fmt = req.response_format
        structured = fmt is not None and fmt.type in ("json_object", "json_schema")
        if fmt is not None and fmt.type == "json_schema":
            if settings.json_schema == "rejected":
                return _bad(
                    "response_format json_schema is not supported by this server", "unsupported_parameter"
                )
            if fmt.json_schema is None:
                return _bad("response_format.json_schema is required when type is json_schema")
            schema = fmt.json_schema.schema_
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                return _bad(f"response_format.json_schema.schema is not a valid JSON schema: {exc.message}")
        if settings.json_schema == "ignored":
            structured, schema = False, None
        users = [m for m in req.messages if m.role == "user"]
        if not users:
            return _bad("messages must contain a user message")
        try:
            images = await load_images(req)
        except BadRequest as exc:
            return _bad(exc.message, exc.code)

        fault = faults.draw()
        if fault == "429":
            return _error(
                429,
                "Rate limit reached; retry later.",
                "rate_limit_error",
                "rate_limit_exceeded",
                **{"Retry-After": "1"},
            )
        if fault == "500":
            return _error(
                500,
                "The server had an error while processing your request.",
                "server_error",
                "internal_error",
            )
        if fault == "timeout":
            await asyncio.sleep(settings.hang_s)
        if settings.latency_ms > 0:
            await asyncio.sleep(settings.latency_ms / 1000.0)

        prompt, prompt_schema = split_schema_instruction(users[-1].text())
        if prompt_schema is not None and not structured:
            # Asked in the prompt for JSON (a client's fallback where response_format is not
            # supported): follow the instruction like an instruction-tuned model would.
            structured, schema = True, prompt_schema
        intent = detect(prompt)
        tainted = any(
            vp.asks_for_wrong_answers(m.text()) for m in req.messages if m.role in ("system", "developer")
        )
        image = images[-1] if images else None
        emb = await app.state.batcher.embed(image) if image is not None else None
        temperature = 1.0 if req.temperature is None else req.temperature
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "big")
        outputs = await asyncio.get_running_loop().run_in_executor(
            compute,
            lambda: run_task(
                brain,
                intent,
                emb,
                image.key if image else None,
                n=req.n,
                temperature=temperature,
                seed=seed,
                tainted=tainted,
            ),
        )
        choices, completion_tokens = [], 0
        for i, out in enumerate(outputs):
            content = as_json(out, schema) if structured else out.text
            if fault == "empty":
                content = ""
            content, cut = truncate_tokens(content, req.token_limit)
            completion_tokens += count_tokens(content)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if cut else "stop",
                    "logprobs": None,
                }
            )
        prompt_tokens = sum(count_tokens(m.text()) for m in req.messages) + settings.image_tokens * sum(
            len(m.image_urls()) for m in req.messages
        )
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": f"tiny-synth-{brain.scorer.fingerprint[:12]}",
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if req.stream:
            with_usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(
                _stream(head, choices[0], usage if with_usage else None, cut=fault == "malformed"),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        payload = {**head, "object": "chat.completion", "choices": choices, "usage": usage}
        text = json.dumps(payload)
        if fault == "malformed":
            text = text[: len(text) // 2]
        return Response(text, media_type="application/json")

    return app

"""One async client for any OpenAI-compatible chat-completions server with image inputs.

vLLM, SGLang, Ollama, llama.cpp's server, LMDeploy, OpenAI and our own `vlcurate vlm serve` all
speak `/v1/chat/completions`; this client adds what a data pipeline needs on top of the protocol:
bounded concurrency that adapts to rate limits and errors (AIMD, see `vlm_usage`), retries with
backoff that honour `Retry-After`, a total timeout per attempt, a persistent response cache
(`vlm_cache`), JSON-schema structured output with a validating fallback for servers that ignore
or reject `response_format`, and token/cost accounting. Request-level failures never raise: every
request ends with a `VLMResult` that holds either the answer or the reason it failed.

Transport: the `openai` SDK's `AsyncOpenAI` with `max_retries=0` (our own retry, timeout and
concurrency rules replace the SDK's), called through `with_raw_response` so that we read the raw
body ourselves. Why raw: a 200 with a malformed or truncated body must become a retryable
"malformed" failure rather than an exception deep inside the SDK's parser, and a 429's
`Retry-After` header is read from the response the SDK hands us. Remote images that must be
inlined as data URLs are fetched with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlcurate.base.aio import run_sync
from vlcurate.vlm.cache import ResponseCache
from vlcurate.vlm.usage import AdaptiveLimiter, UsageCounter, UsageStats
from vlcurate.vlm.wire import (
    SCHEMA_INSTRUCTION,
    STREAM_DONE,
    Attempt,
    ChatBody,
    ChatMessage,
    Choice,
    ImageInputError,
    PreparedImage,
    StreamChunk,
    TokenUsage,
    check_answer,
    extract_json_object,
    fetch_image,
    prepare_image,
    retry_after_s,
    schema_validator,
    server_message,
    sse_data,
)

__all__ = [
    "SCHEMA_INSTRUCTION",
    "ImageInputError",
    "StreamEvent",
    "UsageStats",
    "VLMClient",
    "VLMRequest",
    "VLMResult",
    "VLMSettings",
    "build_messages",
    "cache_key",
    "check_answer",
    "extract_json_object",
    "run_many",
    "run_many_with_usage",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8300/v1"
_CACHE_VERSION = 1


class VLMSettings(BaseModel):
    """Where the server is and how hard to push it; embedded in recipe params and CLI options."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    model: str = "tiny-synth"
    api_key: str | None = None  # else env VLCURATE_VLM_API_KEY, else OPENAI_API_KEY, else "none"
    max_concurrency: int = Field(16, ge=1, le=4096)  # upper bound; the live limit adapts below it
    timeout_s: float = Field(60.0, gt=0)  # total time for one attempt
    max_retries: int = Field(6, ge=0)  # transport retries: 429, 5xx, timeouts, connection errors, bad bodies
    max_answer_retries: int = Field(2, ge=0)  # re-asks for empty, non-JSON or schema-violating answers
    backoff_base_s: float = Field(0.5, ge=0)  # retry n waits ~base * 2**(n-1), with jitter, capped below
    backoff_max_s: float = Field(30.0, ge=0)
    cache_dir: str | None = None  # persistent response cache (SQLite file in that folder); None = off
    # the weights behind `model` (a checkpoint, a training round): answers cached under another tag are
    # not reused, so a retrained model served under the same name is asked again
    cache_tag: str | None = None
    image_transport: Literal["data_url", "url"] = "data_url"  # data_url: remote images are inlined
    structured_output: Literal["auto", "json_schema", "prompt"] = "auto"
    input_cost_per_mtok: float = Field(0.0, ge=0)
    output_cost_per_mtok: float = Field(0.0, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # server-specific fields (vLLM's top_k ...)

    def resolved_api_key(self) -> str:
        return (
            self.api_key
            or os.environ.get("VLCURATE_VLM_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
            or "none"
        )

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_cost_per_mtok + completion_tokens * self.output_cost_per_mtok
        ) / 1e6


class VLMRequest(BaseModel):
    """One chat completion: a prompt with images (bytes -> data URL; str -> URL or local path)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    images: list[bytes | str] = Field(default_factory=list)
    system: str | None = None
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    n: int = Field(1, ge=1)
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    use_cache: bool = True  # False: always ask (the answer is still stored)


@dataclass
class StreamEvent:
    """One step of `VLMClient.stream`: text to append, a restart (drop what was shown: a broken
    stream is asked again), or, last, the result (the whole answer or why there is none)."""

    delta: str = ""
    restart: bool = False
    result: VLMResult | None = None


@dataclass
class VLMResult:
    """The answer to one request (one entry per choice), or the reason it failed for good.

    Token counts and cost are what this call spent, over all its attempts: a cached answer
    reports 0 tokens and 0 cost, so that summing results gives the run's bill.
    """

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    parsed: list[dict[str, Any] | None] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0
    error: str | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0] if self.finish_reasons else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(
    model: str, req: VLMRequest, image_keys: Sequence[str], extra_body: dict[str, Any], tag: str | None = None
) -> str:
    """sha256 of everything that shapes the answer: model (and its weights' tag), messages text,
    sampling, schema, images."""
    payload: dict[str, Any] = {
        "v": _CACHE_VERSION,
        "model": model,
        "system": req.system,
        "prompt": req.prompt,
        "images": list(image_keys),
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "n": req.n,
        "seed": req.seed,
        "json_schema": req.json_schema,
        "schema_name": req.schema_name if req.json_schema else None,
        "extra_body": extra_body,
    }
    if tag is not None:  # only when set: keys made without a tag stay valid
        payload["tag"] = tag
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_messages(
    req: VLMRequest, image_urls: Sequence[str], schema_in_prompt: bool
) -> list[dict[str, Any]]:
    """System message, then one user message: images first (the LLaVA/Qwen habit), then the text."""
    text = req.prompt
    if schema_in_prompt and req.json_schema is not None:
        text = f"{text}\n\n{SCHEMA_INSTRUCTION}\n{json.dumps(req.json_schema)}"
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    if image_urls:
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
        parts.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": parts})
    else:
        messages.append({"role": "user", "content": text})
    return messages


# ----------------------------------------------------------------------------- the client


class VLMClient:
    """Async client; use `async with VLMClient(settings) as c: await c.complete_many(reqs)`."""

    def __init__(self, settings: VLMSettings | None = None, **overrides: Any) -> None:
        base = settings or VLMSettings()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.limiter = AdaptiveLimiter(self.settings.max_concurrency)
        self._counter = UsageCounter()
        self._cache = ResponseCache(self.settings.cache_dir) if self.settings.cache_dir else None
        # structured output learnt per client: None until a server answer tells us
        self._mode: Literal["json_schema", "prompt"] | None = (
            None if self.settings.structured_output == "auto" else self.settings.structured_output
        )
        self._server_down = False  # set when a request ran out of retries on connection errors
        self._streams: bool | None = None  # False once the server refused `stream: true`
        self._openai: openai.AsyncOpenAI | None = None
        self._http: httpx.AsyncClient | None = None

    # lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> VLMClient:
        self._transport()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._openai is not None:
            await self._openai.close()
            self._openai = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._cache is not None:
            self._cache.close()

    def _transport(self) -> openai.AsyncOpenAI:
        if self._openai is None:
            self._openai = openai.AsyncOpenAI(
                api_key=self.settings.resolved_api_key(),
                base_url=self.settings.base_url,
                max_retries=0,
                timeout=self.settings.timeout_s,
            )
        return self._openai

    def usage(self) -> UsageStats:
        return self._counter.snapshot(
            concurrency=self.limiter.limit,
            min_concurrency=self.limiter.lowest,
            max_concurrency=self.limiter.upper,
            structured_mode=self._mode or "auto",
            cache_rebuilt=bool(self._cache and self._cache.rebuilt),
        )

    # public ----------------------------------------------------------------
    async def complete(self, req: VLMRequest) -> VLMResult:
        """Answer one request; failures come back as a result with `error` set, never as exceptions."""
        t0 = time.monotonic()
        try:
            res = await self._complete(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the sample: record it
            log.exception("VLM request failed unexpectedly")
            res = VLMResult(error=f"internal error: {type(exc).__name__}: {exc}")
        res.latency_s = time.monotonic() - t0
        c = self._counter
        c.results += 1
        c.ok += res.ok
        c.failed += not res.ok
        c.cache_hits += res.cached
        return res

    async def complete_many(
        self, reqs: Sequence[VLMRequest], *, progress: bool | str = False
    ) -> list[VLMResult]:
        """Answer all requests, in order; the adaptive limit bounds how many are in flight."""
        reqs = list(reqs)
        results: list[VLMResult | None] = [None] * len(reqs)
        todo = iter(range(len(reqs)))
        bar = _Bar(progress, len(reqs))

        async def worker() -> None:
            for i in todo:  # one shared iterator: each index is taken by exactly one worker
                res = await self.complete(reqs[i])
                results[i] = res
                bar.advance(res)

        n_workers = min(len(reqs), 2 * self.settings.max_concurrency)
        with bar:
            await asyncio.gather(*(worker() for _ in range(n_workers)))
        return [r if r is not None else VLMResult(error="internal error: not run") for r in results]

    async def stream(self, req: VLMRequest) -> AsyncGenerator[StreamEvent, None]:
        """Answer one request as it is generated: events with text deltas, then one with the result.

        The same retries, timeout per attempt, concurrency and accounting as `complete`. A stream
        that breaks (cut short, timed out, an error event) is an error, never a shorter answer: it is
        asked again within the retry budget, after an event with `restart=True` when deltas were
        already given, else the result holds the error. Where the server does not stream (it
        rejects `stream`, or answers with one JSON body) the whole answer comes as one delta.
        Streaming takes `n=1` and no `json_schema`."""
        t0 = time.monotonic()
        res: VLMResult | None = None
        try:
            async with contextlib.aclosing(self._stream(req)) as events:
                async for ev in events:
                    if ev.result is not None:
                        res = ev.result
                        break
                    yield ev
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not lose the sample: record it
            log.exception("VLM stream failed unexpectedly")
            res = VLMResult(error=f"internal error: {type(exc).__name__}: {exc}")
        if res is None:
            res = VLMResult(error="internal error: the stream ended without a result")
        res.latency_s = time.monotonic() - t0
        c = self._counter
        c.results += 1
        c.ok += res.ok
        c.failed += not res.ok
        c.cache_hits += res.cached
        yield StreamEvent(result=res)

    # internals -------------------------------------------------------------
    async def _stream(self, req: VLMRequest) -> AsyncGenerator[StreamEvent, None]:
        s, c = self.settings, self._counter
        if req.n != 1 or req.json_schema is not None:
            c.errors["bad_input"] += 1
            yield StreamEvent(result=VLMResult(error="streaming takes n=1 and no json_schema; use complete"))
            return
        try:
            images = [prepare_image(im, i, s.image_transport) for i, im in enumerate(req.images)]
        except ValueError as exc:
            c.errors["bad_input"] += 1
            yield StreamEvent(result=VLMResult(error=str(exc)))
            return
        key = cache_key(s.model, req, [im.key for im in images], s.extra_body, s.cache_tag)
        hit = self._recall(key) if req.use_cache else None
        if hit is not None and hit.texts:
            yield StreamEvent(delta=hit.texts[0])
            yield StreamEvent(result=hit)
            return
        try:
            images = await self._resolve(images)
        except ImageInputError as exc:
            c.errors["bad_input"] += 1
            yield StreamEvent(result=VLMResult(error=str(exc)))
            return
        res: VLMResult | None = None
        if self._streams is not False:
            async with contextlib.aclosing(self._ask_stream(req, images)) as events:
                async for ev in events:
                    if ev.result is not None:
                        res = ev.result
                        break
                    yield ev
        if res is None:  # this server does not stream: the whole answer as one delta
            res = await self._ask(req, images)
            if res.ok:
                yield StreamEvent(delta=res.text)
        if res.ok:
            self._remember(key, res)
        yield StreamEvent(result=res)

    async def _ask_stream(
        self, req: VLMRequest, images: list[PreparedImage]
    ) -> AsyncGenerator[StreamEvent, None]:
        """`_ask`'s retry loop over streamed attempts; ends without a result where the server
        refuses to stream (the caller then asks for the whole answer)."""
        s, c = self.settings, self._counter
        urls = [im.url or "" for im in images]
        attempts = transport_retries = answer_retries = 0
        p_tok = c_tok = 0
        while True:
            attempts += 1
            c.requests += 1
            if attempts > 1:
                c.retries += 1
            shown: list[str] = []
            a: Attempt | None = None
            epoch = await self.limiter.acquire()
            outcome = "neutral"
            try:
                async with contextlib.aclosing(self._send_stream(req, urls, images)) as parts:
                    async for part in parts:
                        if isinstance(part, Attempt):
                            a = part
                            break
                        shown.append(part)
                        yield StreamEvent(delta=part)
                assert a is not None
                outcome = "overload" if a.overload else "ok" if a.body is not None else "neutral"
            finally:
                await self.limiter.release(epoch, outcome)

            if a.body is None:
                c.errors[a.kind] += 1
                if a.status == 400 and "stream" in a.message.lower() and not shown:
                    self._streams = False  # the server refuses to stream: ask for whole answers
                    return
                final = not a.retryable or transport_retries >= s.max_retries
                if a.kind == "connection" and self._server_down:
                    final = True
                if final:
                    if a.kind == "connection" and a.retryable:
                        self._server_down = True
                    note = f" (after {attempts} attempts)" if attempts > 1 else ""
                    yield StreamEvent(result=self._failed(a.message + note, attempts, p_tok, c_tok))
                    return
                transport_retries += 1
                if shown:
                    yield StreamEvent(restart=True)
                await asyncio.sleep(self._backoff(transport_retries, a.retry_after))
                continue

            self._server_down = False
            usage = a.body.usage or TokenUsage()
            p_tok += usage.prompt_tokens or 0
            c_tok += usage.completion_tokens or 0
            choice = a.body.choices[0]
            text = choice.content()
            if not shown and text:
                yield StreamEvent(delta=text)  # a server that ignored `stream` and sent one body
            if not text.strip():
                c.errors["empty"] += 1
                if answer_retries >= s.max_answer_retries:
                    why = f"empty answer (after {attempts} attempts)"
                    yield StreamEvent(result=self._failed(why, attempts, p_tok, c_tok))
                    return
                answer_retries += 1
                if text:
                    yield StreamEvent(restart=True)
                continue
            yield StreamEvent(result=self._succeeded([text], [choice], [None], attempts, p_tok, c_tok))
            return

    async def _send_stream(
        self, req: VLMRequest, urls: list[str], images: list[PreparedImage]
    ) -> AsyncGenerator[str | Attempt, None]:
        """One streamed HTTP attempt: text deltas, then an `Attempt` (the whole answer, or why not).
        The attempt's timeout covers the whole stream, not each read."""
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model,
            "messages": build_messages(req, urls, schema_in_prompt=False),
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            **s.extra_body,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if self._http is None:
            self._http = httpx.AsyncClient()
        headers = {"Authorization": f"Bearer {s.resolved_api_key()}", "Accept": "text/event-stream"}
        url = s.base_url.rstrip("/") + "/chat/completions"
        deadline = time.monotonic() + s.timeout_s
        timed_out = Attempt(
            kind="timeout", message=f"timed out after {s.timeout_s:g}s", retryable=True, overload=True
        )
        parts: list[str] = []

        def cut(why: str) -> Attempt:
            got = sum(len(p) for p in parts)
            return Attempt(kind="malformed", message=f"stream cut short after {got} characters: {why}",
                           retryable=True)  # fmt: skip

        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    resp = await asyncio.wait_for(
                        stack.enter_async_context(
                            self._http.stream("POST", url, json=body, headers=headers, timeout=s.timeout_s)
                        ),
                        timeout=s.timeout_s,
                    )
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    yield timed_out
                    return
                if resp.status_code != 200:
                    raw = await resp.aread()
                    try:
                        err: Any = json.loads(raw)
                    except ValueError:
                        err = raw.decode("utf-8", "replace")
                    msg = server_message(err, f"HTTP {resp.status_code}")
                    yield self._status_attempt(resp.status_code, msg, resp.headers, images)
                    return
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raw = await resp.aread()  # the server ignored `stream`: one whole body
                    try:
                        yield Attempt(body=ChatBody.model_validate_json(raw))
                    except ValidationError:
                        yield Attempt(kind="malformed", message=f"malformed response body: {raw[:120]!r}",
                                      retryable=True)  # fmt: skip
                    return
                finish: str | None = None
                usage: TokenUsage | None = None
                done = False
                lines = resp.aiter_lines()
                while not done:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        yield timed_out
                        return
                    try:
                        line = await asyncio.wait_for(lines.__anext__(), timeout=left)
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        yield timed_out
                        return
                    data = sse_data(line)
                    if data is None or not data:
                        continue
                    if data == STREAM_DONE:
                        done = True
                        break
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        yield cut(f"an event that is not JSON: {data[:120]!r}")
                        return
                    if isinstance(obj, dict) and "error" in obj:
                        msg = server_message(obj, "an error event")
                        yield Attempt(kind="stream_error", message=f"the server broke off the answer: {msg}",
                                      retryable=True, overload=True)  # fmt: skip
                        return
                    try:
                        chunk = StreamChunk.model_validate(obj)
                    except ValidationError:
                        yield cut(f"an event that is not a chunk: {data[:120]!r}")
                        return
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for ch in chunk.choices:
                        if ch.delta is not None and ch.delta.content:
                            parts.append(ch.delta.content)
                            yield ch.delta.content
                        if ch.finish_reason is not None:
                            finish = ch.finish_reason
                if finish is None:
                    yield cut("no finish_reason" + ("" if done else " and no [DONE]"))
                    return
        except httpx.TimeoutException:
            yield timed_out
            return
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            why = f"cannot reach {s.base_url}: {type(exc).__name__}: {exc}"
            yield Attempt(kind="connection", message=why, retryable=True)
            return
        except (httpx.HTTPError, OSError) as exc:
            yield cut(f"{type(exc).__name__}: {exc}")
            return
        whole = Choice(message=ChatMessage(content="".join(parts)), finish_reason=finish)
        yield Attempt(body=ChatBody(choices=[whole], usage=usage))

    async def _complete(self, req: VLMRequest) -> VLMResult:
        s = self.settings
        try:
            images = [prepare_image(im, i, s.image_transport) for i, im in enumerate(req.images)]
            if req.json_schema is not None:
                schema_validator(req.json_schema)
        except ValueError as exc:  # ImageInputError or a bad schema: nothing to send
            self._counter.errors["bad_input"] += 1
            return VLMResult(error=str(exc))
        key = cache_key(s.model, req, [im.key for im in images], s.extra_body, s.cache_tag)
        hit = self._recall(key) if req.use_cache else None
        if hit is not None:
            return hit
        try:
            images = await self._resolve(images)
        except ImageInputError as exc:
            self._counter.errors["bad_input"] += 1
            return VLMResult(error=str(exc))
        res = await self._ask(req, images)
        if res.ok:
            self._remember(key, res)
        return res

    def _recall(self, key: str) -> VLMResult | None:
        """A cached result, or None (no cache, a miss, or an entry of another shape)."""
        if self._cache is None:
            return None
        hit = self._cache.get(key)
        if hit is None:
            return None
        try:
            return VLMResult(
                texts=[str(t) for t in hit["texts"]],
                finish_reasons=list(hit.get("finish_reasons") or [None] * len(hit["texts"])),
                parsed=list(hit.get("parsed") or [None] * len(hit["texts"])),
                cached=True,
            )
        except (TypeError, KeyError):
            return None

    def _remember(self, key: str, res: VLMResult) -> None:
        if self._cache is not None:
            self._cache.put(
                key,
                {
                    "texts": res.texts,
                    "finish_reasons": res.finish_reasons,
                    "parsed": res.parsed,
                    "prompt_tokens": res.prompt_tokens,
                    "completion_tokens": res.completion_tokens,
                },
            )

    async def _resolve(self, images: list[PreparedImage]) -> list[PreparedImage]:
        """Fetch remote images that must go inline (data_url transport)."""
        if all(im.url is not None for im in images):
            return images
        if self._http is None:
            self._http = httpx.AsyncClient()
        out = []
        for i, im in enumerate(images):
            out.append(
                im if im.url is not None else await fetch_image(self._http, im, i, self.settings.timeout_s)
            )
        return out

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.settings
        step = min(s.backoff_max_s, s.backoff_base_s * 2 ** (retry - 1))
        delay = step / 2 + random.uniform(0, step / 2)  # "equal jitter": never ~0, never in lockstep
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s))
        return delay

    async def _ask(self, req: VLMRequest, images: list[PreparedImage]) -> VLMResult:
        """The retry loop: transport failures back off; bad answers are asked again right away."""
        s, c = self.settings, self._counter
        urls = [im.url or "" for im in images]
        mode: Literal["json_schema", "prompt"] | None = None
        if req.json_schema is not None:
            mode = self._mode or "json_schema"
        probing = req.json_schema is not None and s.structured_output == "auto" and self._mode is None
        attempts = transport_retries = answer_retries = 0
        p_tok = c_tok = 0
        while True:
            attempts += 1
            c.requests += 1
            if attempts > 1:
                c.retries += 1
            epoch = await self.limiter.acquire()
            outcome = "neutral"
            try:
                a = await self._send(req, urls, mode, images)
                outcome = "overload" if a.overload else "ok" if a.body is not None else "neutral"
            finally:
                await self.limiter.release(epoch, outcome)

            if a.body is None:
                c.errors[a.kind] += 1
                if probing and mode == "json_schema" and a.status in (400, 422):
                    mode = "prompt"  # rejected response_format? ask again with the schema in the prompt
                    continue
                final = not a.retryable or transport_retries >= s.max_retries
                if a.kind == "connection" and self._server_down:
                    final = True  # the server has been unreachable for a full retry budget: fail fast
                if final:
                    if a.kind == "connection" and a.retryable:
                        self._server_down = True
                    note = f" (after {attempts} attempts)" if attempts > 1 else ""
                    return self._failed(a.message + note, attempts, p_tok, c_tok)
                transport_retries += 1
                await asyncio.sleep(self._backoff(transport_retries, a.retry_after))
                continue

            self._server_down = False
            if probing and mode == "prompt":
                self._mode = "prompt"  # response_format was refused, the same request without it was not
            usage = a.body.usage or TokenUsage()
            p_tok += usage.prompt_tokens or 0
            c_tok += usage.completion_tokens or 0
            choices = sorted(a.body.choices, key=lambda ch: ch.index)
            texts = [ch.content() for ch in choices]
            problem: str | None = None
            kind = ""
            parsed: list[dict[str, Any] | None] = [None for _ in texts]
            if any(not t.strip() for t in texts):
                problem, kind = "empty answer", "empty"
            elif req.json_schema is not None:
                parsed_ok: list[dict[str, Any] | None] = []
                for t in texts:
                    obj, why = check_answer(t, req.json_schema)
                    if why is not None and problem is None:
                        problem, kind = why, "not_json" if obj is None and "not JSON" in why else "schema"
                    parsed_ok.append(obj)
                parsed = parsed_ok
                if problem is not None and probing and mode == "json_schema" and kind == "not_json":
                    c.errors[kind] += 1
                    self._mode = mode = "prompt"  # the server ignored response_format: ask in the prompt
                    continue
            if problem is not None:
                c.errors[kind] += 1
                if answer_retries >= s.max_answer_retries:
                    return self._failed(f"{problem} (after {attempts} attempts)", attempts, p_tok, c_tok)
                answer_retries += 1
                continue
            if probing and mode is not None:
                self._mode = mode  # this server handles structured output this way: remember it
            return self._succeeded(texts, choices, parsed, attempts, p_tok, c_tok)

    def _account(self, p_tok: int, c_tok: int) -> float:
        c = self._counter
        cost = self.settings.cost_of(p_tok, c_tok)
        c.prompt_tokens += p_tok
        c.completion_tokens += c_tok
        c.cost += cost
        return cost

    def _failed(self, error: str, attempts: int, p_tok: int, c_tok: int) -> VLMResult:
        cost = self._account(p_tok, c_tok)
        return VLMResult(
            error=error, attempts=attempts, prompt_tokens=p_tok, completion_tokens=c_tok, cost=cost
        )

    def _succeeded(
        self,
        texts: list[str],
        choices: list[Choice],
        parsed: list[dict[str, Any] | None],
        attempts: int,
        p_tok: int,
        c_tok: int,
    ) -> VLMResult:
        cost = self._account(p_tok, c_tok)
        return VLMResult(
            texts=texts,
            finish_reasons=[ch.finish_reason for ch in choices],
            parsed=parsed,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            cost=cost,
            attempts=attempts,
        )

    async def _send(
        self, req: VLMRequest, urls: list[str], mode: str | None, images: list[PreparedImage]
    ) -> Attempt:
        """One HTTP attempt, classified; never raises for transport or server trouble."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": build_messages(req, urls, schema_in_prompt=mode == "prompt"),
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        }
        if req.n != 1:
            kwargs["n"] = req.n
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if mode == "json_schema" and req.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": req.schema_name, "schema": req.json_schema},
            }
        if s.extra_body:
            kwargs["extra_body"] = s.extra_body
        call = self._transport().chat.completions.with_raw_response.create(**kwargs)
        try:
            raw = await asyncio.wait_for(call, timeout=s.timeout_s)
            text = raw.text
        except (asyncio.TimeoutError, openai.APITimeoutError):
            return Attempt(
                kind="timeout", message=f"timed out after {s.timeout_s:g}s", retryable=True, overload=True
            )
        except openai.APIStatusError as exc:
            return self._status_failure(exc, images)
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            return Attempt(
                kind="connection",
                message=f"cannot reach {s.base_url}: {type(cause).__name__}: {cause}",
                retryable=True,
            )
        except (openai.APIError, httpx.HTTPError, OSError) as exc:  # a body cut short, a broken stream
            return Attempt(
                kind="malformed", message=f"bad response: {type(exc).__name__}: {exc}", retryable=True
            )
        try:
            body = ChatBody.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            return Attempt(
                kind="malformed",
                message=f"malformed response body ({first['type']}: {first['msg'][:120]}): {text[:120]!r}",
                retryable=True,
            )
        return Attempt(body=body)

    def _status_failure(self, exc: openai.APIStatusError, images: list[PreparedImage]) -> Attempt:
        return self._status_attempt(
            exc.status_code, server_message(exc.body, str(exc)), exc.response.headers, images
        )

    def _status_attempt(self, status: int, msg: str, headers: Any, images: list[PreparedImage]) -> Attempt:
        kind = str(status)
        if status == 429:
            ra = retry_after_s(headers)
            return Attempt(kind=kind, message=f"rate limited (HTTP 429): {msg}", status=status,
                            retryable=True, overload=True, retry_after=ra)  # fmt: skip
        if status >= 500 or status == 408:
            ra = retry_after_s(headers)
            return Attempt(kind=kind, message=f"server error (HTTP {status}): {msg}", status=status,
                            retryable=True, overload=True, retry_after=ra)  # fmt: skip
        if status == 409:
            return Attempt(kind=kind, message=f"conflict (HTTP 409): {msg}", status=status, retryable=True)
        if status in (401, 403):
            text = (
                f"authentication failed (HTTP {status}) at {self.settings.base_url}: {msg}. "
                "Set VLMSettings.api_key, or VLCURATE_VLM_API_KEY / OPENAI_API_KEY."
            )
            return Attempt(kind=kind, message=text, status=status)
        if status == 404:
            text = (
                f"not found (HTTP 404) at {self.settings.base_url}: {msg}. Check that base_url ends in /v1 "
                f"and that the server serves model {self.settings.model!r}."
            )
            return Attempt(kind=kind, message=text, status=status)
        text = f"the server rejected the request (HTTP {status}): {msg}"
        if images:
            text += "; request images: " + "; ".join(im.label for im in images)
        return Attempt(kind=kind, message=text, status=status)


class _Bar:
    """A rich progress bar on stderr for `complete_many` (silent when disabled)."""

    def __init__(self, progress: bool | str, total: int) -> None:
        self._progress: Any = None
        self._task: Any = None
        if not progress:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        label = progress if isinstance(progress, str) else "vlm"
        self._progress = Progress(
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[err]} failed[/] {task.fields[hit]} cached"
            ),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(label, total=total, ok=0, err=0, hit=0)
        self._counts = {"ok": 0, "err": 0, "hit": 0}

    def advance(self, res: VLMResult) -> None:
        if self._progress is None:
            return
        self._counts["ok" if res.ok else "err"] += 1
        self._counts["hit"] += res.cached
        self._progress.update(self._task, advance=1, **self._counts)

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# ----------------------------------------------------------------------------- sync entry points


def run_many_with_usage(
    settings: VLMSettings, reqs: Sequence[VLMRequest], *, progress: bool | str = False
) -> tuple[list[VLMResult], UsageStats]:
    """Like `run_many`, also returning the client's usage (requests, retries, tokens, cost)."""

    async def go() -> tuple[list[VLMResult], UsageStats]:
        async with VLMClient(settings) as client:
            results = await client.complete_many(reqs, progress=progress)
            return results, client.usage()

    return run_sync(go())


def run_many(
    settings: VLMSettings, reqs: Sequence[VLMRequest], *, progress: bool | str = False
) -> list[VLMResult]:
    """Synchronous `complete_many` for operators: a fresh event loop; safe from any thread."""
    return run_many_with_usage(settings, reqs, progress=progress)[0]

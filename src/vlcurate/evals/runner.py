"""`run_eval`: ask a model every benchmark question, score each reply, log it, summarise.

Requests go through the project's VLM client (`vlm.client.VLMClient`): its adaptive concurrency,
retries, response cache and usage accounting are the run's. Each (item, repeat) becomes one line of
RUN/samples.jsonl (`evals.results.SampleResult`) as soon as it is answered, so a killed run keeps
everything it finished; a re-run reads the file back and asks only what is missing (and, with
`retry_errors`, what failed on a request error). With the same `cache_dir`, a re-run into a fresh
folder is answered from the cache.

Per item: a benchmark item without a reference answer is logged `missing_answer` and not asked;
an image that is named but cannot be read is `missing_image`; a request that fails for good is
`error` with the client's reason; an empty reply is `no_answer`, a refusal `refused`, a reply with
no readable answer `unparsed` (all three scored wrong); the judge, when configured, is asked with
structured output (`vlm.prompts.JUDGE_SCHEMA`) and a judge that fails or times out makes the
item `error` ("judge: ...") while the run goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from vlcurate.base.aio import run_sync
from vlcurate.base.atomic import write_json_atomic
from vlcurate.evals.bench import BenchItem, bench_file, read_benchmark
from vlcurate.evals.config import EvalConfig
from vlcurate.evals.extract import LETTERS, Scored, score_reply
from vlcurate.evals.results import (
    CONFIG_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    EvalSummary,
    SampleResult,
    iter_samples,
    summarize,
)
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.client import VLMClient, VLMRequest, VLMResult, VLMSettings
from vlcurate.vlm.usage import UsageStats

EMPTY_ANSWER = "empty answer"  # how the client names a reply that stayed empty after its re-asks


class RunConfigMismatch(ValueError):
    """The run folder holds a run made with other settings (model, benchmark, sampling, mode)."""


def select_items(items: list[BenchItem], config: EvalConfig) -> list[BenchItem]:
    """The items this run asks: by id and category, then the first `limit`."""
    if config.ids is not None:
        wanted = set(config.ids)
        items = [i for i in items if i.id in wanted]
    if config.categories is not None:
        cats = set(config.categories)
        items = [i for i in items if i.category in cats]
    return items[: config.limit] if config.limit is not None else items


def _fingerprint(config: EvalConfig) -> dict[str, Any]:
    """What decides the answers: the config's fingerprint fields and the benchmark file's bytes."""
    digest = hashlib.sha256(bench_file(config.bench).read_bytes()).hexdigest()
    return {**config.fingerprint(), "bench_sha256": digest}


def _check_config(out: Path, mine: dict[str, Any]) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise RunConfigMismatch(f"{path} is not valid JSON; use a fresh --out folder") from None
    before = {k: old.get("fingerprint", {}).get(k) for k in mine}
    diff = [
        f"{k}: {before[k]!r} -> {mine[k]!r}" for k in mine if before[k] != mine[k] and k != "bench_sha256"
    ]
    if not diff and before["bench_sha256"] != mine["bench_sha256"]:
        diff = ["the benchmark file's content changed"]
    if diff:
        raise RunConfigMismatch(
            f"{out} holds a run made with other settings ({'; '.join(diff)}); use a fresh --out folder"
        )


def _repair_tail(path: Path) -> None:
    """Cut a last line left half-written by a kill, so that appending starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)


def _load_image(
    image: str | None, ref: str | None, data: bytes | None
) -> tuple[bytes | str | None, str | None]:
    """(the image to send, why it cannot be sent): bytes for local and embedded images, URLs as they are."""
    if data is None:
        if ref is None:
            return None, None
        if ref.startswith(("http://", "https://", "data:")):
            return ref, None
        if not os.path.isfile(ref):
            return None, f"image not found: {ref}"
        try:
            data = Path(ref).read_bytes()
        except OSError as exc:
            return None, f"image unreadable: {ref}: {exc}"
    try:
        Image.open(io.BytesIO(data))  # the header only: catches empty files and non-images
    except (UnidentifiedImageError, OSError) as exc:
        return None, f"image unreadable: {image or 'embedded'}: {type(exc).__name__}"
    return data, None


def _load_images(item: BenchItem) -> tuple[list[bytes | str], str | None]:
    """Every image of an item in order (the image, then image_2, ...); one that cannot be sent is the
    item's problem: a multi-image question asked with an image missing would be another question."""
    out: list[bytes | str] = []
    for w, r, d in [
        (item.image, item.image_ref, item.image_bytes),
        *((m.image, m.image_ref, m.image_bytes) for m in item.more_images),
    ]:
        got, problem = _load_image(w, r, d)
        if problem is not None:
            return [], problem
        if got is not None:
            out.append(got)
    return out, None


def _question(item: BenchItem, config: EvalConfig) -> str:
    text = item.question if item.type == "caption" else vp.question_prompt(item.question, item.choices)
    return f"{config.prompt_prefix.strip()}\n{text}" if config.prompt_prefix.strip() else text


def _reference_text(item: BenchItem) -> str:
    ref = item.answers[0]
    if item.type == "mc" and item.choices:
        if len(ref) == 1 and ref in LETTERS[: len(item.choices)]:
            return f"{ref}. {item.choices[LETTERS.index(ref)]}"
        return " or ".join(item.answers)
    return " or ".join(item.answers)


class _Asker:
    """Answers one (item, repeat) with the clients; never raises for a request that fails."""

    def __init__(self, config: EvalConfig, client: VLMClient, judge: VLMClient | None) -> None:
        self.config = config
        self.client = client
        self.judge = judge
        # One description per (image, repeat) for the whole run: items about the same image share it.
        self._described: dict[tuple[str, int], asyncio.Task[VLMResult]] = {}

    def _describe(self, item: BenchItem, images: list[bytes | str], repeat: int) -> asyncio.Task[VLMResult]:
        data = item.image_bytes
        ref = hashlib.sha256(data).hexdigest() if data is not None else (item.image_ref or item.id)
        key = (ref, repeat)
        if key not in self._described:
            req = self._req(vp.DESCRIBE_PROMPT, images, repeat)
            self._described[key] = asyncio.ensure_future(self.client.complete(req))
        return self._described[key]

    def _req(self, prompt: str, images: list[bytes | str], repeat: int) -> VLMRequest:
        c = self.config
        return VLMRequest(
            prompt=prompt,
            images=images,
            system=c.system,
            max_tokens=c.max_tokens,
            temperature=c.temperature,
            seed=c.seed + repeat,
        )

    async def answer(self, item: BenchItem, repeat: int) -> SampleResult:
        c = self.config
        base: dict[str, Any] = {
            "id": item.id,
            "repeat": repeat,
            "category": item.category,
            "type": item.type,
            "question": item.question,
            "choices": item.choices,
            "answer": item.answer,
            "image": item.image,
            "meta": item.meta,
            "mode": c.image_mode,
        }
        if len(item.answers) > 1:
            base["references"] = item.answers
        if not item.answers:
            return SampleResult(**base, status="missing_answer", error="the benchmark item has no answer")
        needs_image = c.image_mode == "image" or (
            c.image_mode == "description" and c.description_from == "model"
        )
        images, problem = _load_images(item) if needs_image else ([], None)
        if problem is not None:
            return SampleResult(**base, status="missing_image", error=problem)
        latency = 0.0
        response: str | None
        if c.image_mode == "description":
            if c.description_from == "bench":
                if not item.description:
                    return SampleResult(**base, status="error", error="the benchmark item has no description")
                description = item.description
            else:
                d = await asyncio.shield(self._describe(item, images, repeat))
                latency += d.latency_s
                if not d.ok:
                    return SampleResult(
                        **base, status="error", error=f"describe: {d.error}", latency_s=latency
                    )
                description = d.text.strip()
            base["description"] = description
            if item.type == "caption":
                res = VLMResult(texts=[description])
            else:
                prompt = vp.from_description_prompt(description, item.question, item.choices)
                res = await self.client.complete(self._req(prompt, [], repeat))
        else:
            res = await self.client.complete(
                self._req(_question(item, c), images if c.image_mode == "image" else [], repeat)
            )
        latency += res.latency_s
        base["latency_s"] = round(latency, 4)
        base["cached"] = res.cached
        if not res.ok:
            err = res.error or "request failed"
            if err.startswith(EMPTY_ANSWER):
                return SampleResult(**base, response="", status="no_answer", correct=False, error=err)
            return SampleResult(**base, status="error", error=err)
        response = res.text
        scored = score_reply(
            item.type, response, item.answers, item.choices, caption_threshold=c.caption_threshold
        )
        extra: dict[str, Any] = {"score": scored.score} if scored.score is not None else {}
        if self.judge is not None and self._judged(item, scored):
            j = await self.judge.complete(
                VLMRequest(
                    prompt=vp.judge_prompt(item.question, _reference_text(item), response),
                    json_schema=dict(vp.JUDGE_SCHEMA),
                    schema_name="judgement",
                    temperature=0.0,
                    max_tokens=128,
                )
            )
            base["latency_s"] = round(latency + j.latency_s, 4)
            judge_name = self.judge.settings.model
            if not j.ok or not j.parsed or j.parsed[0] is None:
                return SampleResult(
                    **base,
                    **extra,
                    response=response,
                    extracted=scored.extracted,
                    status="error",
                    error=f"judge: {j.error or 'no verdict'}",
                    judge=judge_name,
                )
            verdict = j.parsed[0]
            correct = bool(verdict.get("correct"))
            status = "ok" if scored.status == "unparsed" and correct else scored.status
            return SampleResult(
                **base,
                **extra,
                response=response,
                extracted=scored.extracted,
                correct=correct,
                status=status,
                error=scored.error if status != "ok" else None,
                judge=judge_name,
                judge_reason=str(verdict.get("reason", "")),
            )
        return SampleResult(
            **base,
            **extra,
            response=response,
            extracted=scored.extracted,
            correct=scored.correct,
            status=scored.status,
            error=scored.error,
        )

    def _judged(self, item: BenchItem, scored: Scored) -> bool:
        if item.type == "caption" or scored.status not in ("ok", "unparsed"):
            return False
        return self.config.judge_mode == "always" or not scored.correct


class _Log:
    """RUN/samples.jsonl, appended one whole line per answer and flushed at once."""

    def __init__(self, path: Path) -> None:
        _repair_tail(path)
        self._fh = path.open("ab")

    def write(self, sample: SampleResult) -> None:
        self._fh.write(sample.model_dump_json().encode("utf-8") + b"\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class _Bar:
    """A rich progress bar on stderr (answers, accuracy so far, cache hits); silent when disabled."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._p: Any = None
        self.right = self.scored = self.hits = self.failed = 0
        if not enabled or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[acc]} [red]{task.fields[failed]} failed[/] {task.fields[hits]} cached"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._p.add_task(label, total=total, acc="", failed=0, hits=0)

    def advance(self, s: SampleResult) -> None:
        self.scored += s.correct is not None
        self.right += bool(s.correct)
        self.hits += s.cached
        self.failed += s.status == "error"
        if self._p is not None:
            acc = f"acc {self.right / self.scored:.3f}" if self.scored else ""
            self._p.update(self._task, advance=1, acc=acc, failed=self.failed, hits=self.hits)

    def __enter__(self) -> _Bar:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


def _settings(config: EvalConfig) -> VLMSettings:
    return VLMSettings(
        base_url=config.endpoint,
        model=config.model,
        api_key=config.api_key,
        max_concurrency=config.concurrency,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
        cache_dir=str(config.cache_dir) if config.cache_dir else None,
        cache_tag=config.cache_tag,
    )


def _judge_settings(config: EvalConfig) -> VLMSettings | None:
    if not config.judged:
        return None
    return VLMSettings(
        base_url=config.judge_endpoint or config.endpoint,
        model=config.judge_model or config.model,
        api_key=config.judge_api_key or config.api_key,
        max_concurrency=config.concurrency,
        timeout_s=config.judge_timeout_s,
        max_retries=1,  # a judge that does not answer in time fails the item, it does not stall the run
        max_answer_retries=1,
        cache_dir=str(config.cache_dir) if config.cache_dir else None,
    )


async def _ask_all(
    config: EvalConfig, todo: Sequence[tuple[BenchItem, int]], log: _Log, progress: bool
) -> tuple[UsageStats, UsageStats | None]:
    queue = iter(todo)
    judge_settings = _judge_settings(config)
    async with VLMClient(_settings(config)) as client:
        judge = VLMClient(judge_settings) if judge_settings is not None else None
        try:
            asker = _Asker(config, client, judge)
            with _Bar(progress, len(todo), f"eval {config.model}") as bar:

                async def worker() -> None:
                    for item, repeat in queue:  # one shared iterator: each pair is taken once
                        sample = await asker.answer(item, repeat)
                        log.write(sample)
                        bar.advance(sample)

                await asyncio.gather(*(worker() for _ in range(min(len(todo), config.concurrency) or 1)))
            return client.usage(), judge.usage() if judge is not None else None
        finally:
            if judge is not None:
                await judge.aclose()


def run_eval(config: EvalConfig, *, progress: bool = True) -> EvalSummary:
    """Evaluate `config.model` on `config.bench` into `config.out`; resumes what is already there."""
    from vlcurate.evals.report import write_eval_report

    items = select_items(read_benchmark(config.bench, image_root=config.image_root), config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config)
    _check_config(out, fingerprint)
    write_json_atomic(
        out / CONFIG_FILE, {**config.model_dump(mode="json"), "fingerprint": fingerprint, "items": len(items)}
    )
    samples_path = out / SAMPLES_FILE
    _repair_tail(samples_path)
    done: dict[tuple[str, int], SampleResult] = {}
    if samples_path.is_file():
        done = {s.key: s for s in iter_samples(out)}
    todo = [
        (item, r)
        for item in items
        for r in range(config.repeats)
        if (item.id, r) not in done or (config.retry_errors and done[(item.id, r)].status == "error")
    ]
    t0 = time.monotonic()
    log = _Log(samples_path)
    usage: tuple[UsageStats, UsageStats | None] | None = None
    try:
        if todo:
            usage = run_sync(_ask_all(config, todo, log, progress))
    finally:
        log.close()
        elapsed = time.monotonic() - t0
        expected = {(i.id, r) for i in items for r in range(config.repeats)}
        rows = [s for s in {s.key: s for s in iter_samples(out)}.values() if s.key in expected]
        summary = summarize(rows, model=config.model, bench=str(config.bench), expected=len(expected))
        write_json_atomic(out / SUMMARY_FILE, summary.model_dump(mode="json"))
        write_eval_report(
            out,
            summary,
            rows,
            run={
                "asked": len(todo),
                "elapsed_s": round(elapsed, 3),
                "items_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
                "usage": usage[0].model_dump(mode="json") if usage else None,
                "judge_usage": usage[1].model_dump(mode="json") if usage and usage[1] else None,
            },
        )
    return summary

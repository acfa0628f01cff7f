"""Throughput of the VLM client (`vlcurate.vlm.client`) against a local `vlcurate vlm serve`, and
whether it holds, losing and duplicating nothing, under a server that returns 429s, 500s,
timeouts, malformed JSON and empty answers.

Why: every model-made-data operator (recaption, chain-of-thought rewriting, blind-answer checks)
sends thousands of requests through this client, so its concurrency must pay off when the server
is slow (a real VLM takes tens to hundreds of ms per request) and it must finish a run with an
answer or a recorded error for every sample when the server misbehaves.

* Throughput: the tiny-synth server started twice, with `--latency-ms 50` (generation latency,
  so concurrency matters) and with 0 (the client and server CPU costs alone); count questions
  about distinct synthetic scenes at 1, 8 and 64 concurrent requests; requests/s and the ratio
  against concurrency 1 measured in the same run. The response cache is off.
* Faults: the same requests against a server with
  `--faults 429=0.1,500=0.05,timeout=0.02,malformed=0.05,empty=0.02 --latency-ms 50`, at 16
  concurrent requests; completed, errors, lost (requests without exactly one result: 0),
  duplicated (0), mismatched (an ok answer that differs from the fault-free answer to the same
  request: 0), retries, the lowest adaptive limit, and throughput as a ratio against the
  fault-free run at the same concurrency.

Run: `.venv/bin/python benchmarks/vlm_client.py --json-out .bench/vlm_client.json` (~2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.vlm_live import VLMServer  # noqa: E402

from _common import emit, log, machine_info  # noqa: E402
from vlcurate.synth.scene import scene_from_seed  # noqa: E402
from vlcurate.vlm import prompts as vp  # noqa: E402
from vlcurate.vlm.client import VLMClient, VLMRequest, VLMResult, VLMSettings  # noqa: E402
from vlcurate.vlm.usage import UsageStats  # noqa: E402

FAULTS = "429=0.1,500=0.05,timeout=0.02,malformed=0.05,empty=0.02"


def make_requests(n: int, images: int = 16, seed: int = 7) -> list[VLMRequest]:
    """n questions about a pool of `images` synthetic scenes (request i: scene i mod images, and
    that scene's questions in turn), so answers differ between requests while the server's image
    embeddings, warmed once, stay cached: the run measures the client and the protocol, not the
    server's image encoder."""
    scenes = [scene_from_seed(seed, i) for i in range(images)]
    encoded = [s.encode() for s in scenes]
    reqs = []
    for i in range(n):
        k = i % images
        qa = scenes[k].qa[(i // images) % len(scenes[k].qa)]
        reqs.append(VLMRequest(prompt=vp.question_prompt(qa.question), images=[encoded[k]], seed=0))
    return reqs


def warm_up(server: VLMServer, reqs: list[VLMRequest]) -> None:
    """Every image and question once, so that the measured runs find them in the server's caches."""
    timed_run(VLMSettings(base_url=server.base_url, max_concurrency=8, backoff_base_s=0.05), reqs)


class CountingClient(VLMClient):
    """Counts how many results each request index got, to detect loss or duplication."""

    async def complete_indexed(self, reqs: list[VLMRequest]) -> tuple[list[VLMResult], list[int]]:
        seen = [0] * len(reqs)
        index = {id(r): i for i, r in enumerate(reqs)}
        original = self.complete

        async def counted(req: VLMRequest) -> VLMResult:
            res = await original(req)
            seen[index[id(req)]] += 1
            return res

        self.complete = counted  # type: ignore[method-assign]
        try:
            return await self.complete_many(reqs), seen
        finally:
            del self.complete


def timed_run(
    settings: VLMSettings, reqs: list[VLMRequest]
) -> tuple[list[VLMResult], list[int], UsageStats, float]:
    async def go() -> tuple[list[VLMResult], list[int], UsageStats, float]:
        async with CountingClient(settings) as client:
            t0 = time.perf_counter()
            results, seen = await client.complete_indexed(reqs)
            return results, seen, client.usage(), time.perf_counter() - t0

    return asyncio.run(go())


def throughput(
    server: VLMServer, reqs: list[VLMRequest], levels: list[int], sizes: dict[int, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = VLMSettings(base_url=server.base_url, timeout_s=30)
    for c in levels:
        sub = reqs[: sizes[c]]
        results, _, _, secs = timed_run(base.model_copy(update={"max_concurrency": c}), sub)
        ok = sum(r.ok for r in results)
        out[str(c)] = {
            "requests": len(sub),
            "ok": ok,
            "seconds": round(secs, 3),
            "requests_per_s": round(len(sub) / secs, 2),
            "p50_latency_s": round(sorted(r.latency_s for r in results)[len(results) // 2], 4),
        }
        log(f"  concurrency {c}: {len(sub)} requests in {secs:.2f}s = {len(sub) / secs:.1f}/s (ok {ok})")
    one = out[str(levels[0])]["requests_per_s"]
    for v in out.values():
        v["ratio_vs_concurrency_1"] = round(v["requests_per_s"] / one, 2)
    return out


def fault_run(
    clean: VLMServer, faulty: VLMServer, reqs: list[VLMRequest], concurrency: int
) -> dict[str, Any]:
    common = {"max_concurrency": concurrency, "backoff_base_s": 0.1, "backoff_max_s": 2.0}
    ref, _, ref_usage, ref_secs = timed_run(
        VLMSettings(base_url=clean.base_url, timeout_s=30, **common), reqs
    )
    log(f"  fault-free: {len(reqs)} requests in {ref_secs:.2f}s")
    before = httpx.get(faulty.url + "/health", timeout=5).json()
    settings = VLMSettings(base_url=faulty.base_url, timeout_s=2.0, **common)
    results, seen, usage, secs = timed_run(settings, reqs)
    after = httpx.get(faulty.url + "/health", timeout=5).json()
    log(f"  faults: {len(reqs)} requests in {secs:.2f}s, {usage.retries} retries, errors {usage.errors}")
    injected = {k: after["faults"][k] - before["faults"].get(k, 0) for k in after["faults"]}
    mismatched = sum(1 for r, f in zip(results, ref, strict=True) if r.ok and f.ok and r.texts != f.texts)
    return {
        "faults": FAULTS,
        "concurrency": concurrency,
        "requests": len(reqs),
        "completed_ok": usage.ok,
        "errors": usage.failed,
        "error_messages": sorted({r.error for r in results if r.error})[:5],
        "lost": sum(1 for n in seen if n == 0) + (len(reqs) - len(results)),
        "duplicated": sum(1 for n in seen if n > 1),
        "mismatched": mismatched,
        "http_requests": usage.requests,
        "server_saw_requests": after["requests"] - before["requests"],
        "retries": usage.retries,
        "faults_injected": injected,
        "client_errors_by_kind": usage.errors,
        "lowest_adaptive_concurrency": usage.min_concurrency,
        "seconds": round(secs, 3),
        "requests_per_s": round(len(reqs) / secs, 2),
        "fault_free_requests_per_s": round(len(reqs) / ref_secs, 2),
        "fault_free_ok": ref_usage.ok,
        "ratio_vs_fault_free": round(ref_secs / secs, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--fault-requests", type=int, default=400)
    ap.add_argument("--fault-concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke test, ~1 minute)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    levels = [1, 8, 64]
    scale = 0.3 if args.quick else 1.0
    sizes = {1: int(60 * scale), 8: int(300 * scale), 64: int(800 * scale)}
    n_fault = int(args.fault_requests * scale)
    log("making requests ...")
    reqs = make_requests(max(max(sizes.values()), n_fault))
    slow = VLMServer(["--latency-ms", str(args.latency_ms)])
    fast = VLMServer()
    faulty = VLMServer(
        ["--latency-ms", str(args.latency_ms), "--faults", FAULTS, "--fault-seed", "1", "--hang-s", "5"]
    )
    servers = [slow, fast, faulty]
    result: dict[str, Any] = {"benchmark": "vlm_client", "machine": machine_info()}
    try:
        log("starting 3 servers ...")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: s.start(), servers))
        log("warming up ...")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: warm_up(s, reqs[:128]), servers))
        log(f"throughput, server latency {args.latency_ms:g} ms:")
        result["throughput_latency"] = {
            "server_latency_ms": args.latency_ms,
            "by_concurrency": throughput(slow, reqs, levels, sizes),
        }
        log("throughput, server latency 0 ms:")
        result["throughput_no_latency"] = {
            "server_latency_ms": 0,
            "by_concurrency": throughput(fast, reqs, levels, sizes),
        }
        log("fault run:")
        result["fault_run"] = fault_run(slow, faulty, reqs[:n_fault], args.fault_concurrency)
    finally:
        for s in servers:
            s.stop()

    lat = result["throughput_latency"]["by_concurrency"]
    zero = result["throughput_no_latency"]["by_concurrency"]
    f = result["fault_run"]
    summary = (
        f"vlm_client: {args.latency_ms:g} ms server: x{lat['8']['ratio_vs_concurrency_1']} at 8, "
        f"x{lat['64']['ratio_vs_concurrency_1']} at 64 ({lat['64']['requests_per_s']}/s); 0 ms: "
        f"x{zero['8']['ratio_vs_concurrency_1']} / x{zero['64']['ratio_vs_concurrency_1']}; faults: "
        f"{f['completed_ok']}/{f['requests']} ok, {f['errors']} errors, lost {f['lost']}, "
        f"dup {f['duplicated']}, {f['retries']} retries, x{f['ratio_vs_fault_free']} of fault-free throughput"
    )
    emit(result, summary, args.json_out)
    return result


if __name__ == "__main__":
    main()

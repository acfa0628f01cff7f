"""GAP under load on loopback: many players play one session each at the same time against a real
`vlcurate serve` (SQLite, PostgreSQL or both) with the tiny-synth model server answering.

Each player logs in as a guest from its own source address (127.0.x.y), starts a session, and on
each of its 10 images fetches the image, asks one question, flags every other image and moves on
(the model has seen every pool image once before the run, so its per-image search is not timed):
31-32 requests a player, all players at once (asyncio, one connection each). Reported per endpoint:
count, errors, p50 and p99 in ms. The game's own endpoints are everything but `ask`, whose time is
mostly the model's (reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.platform_live import ADMIN, ServerProcess, pg_available, pg_schema  # noqa: E402
from tests.vlm_live import VLMServer  # noqa: E402

from _common import emit, log, machine_info  # noqa: E402
from vlcurate.synth.scene import generate_scene, scene_rng  # noqa: E402
from vlcurate.vlm.client import VLMRequest, VLMSettings, run_many  # noqa: E402


def write_pool(root: Path, n: int, n_objects: int | None, seed: int) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        s = generate_scene(scene_rng(seed, i), n_objects=n_objects)
        (root / f"i{i:04d}.png").write_bytes(s.encode("png"))
        (root / f"i{i:04d}.txt").write_text(s.caption_text)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else 0.0


async def player(i: int, url: str, times: dict[str, list[float]], errors: dict[str, int]) -> None:
    address = f"127.0.{2 + i // 250}.{2 + i % 250}"
    transport = httpx.AsyncHTTPTransport(local_address=address, retries=0)
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=120) as c:

        async def call(name: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
            t0 = time.perf_counter()
            try:
                r = await c.request(method, path, **kw)
            except httpx.HTTPError:
                errors[name] += 1
                return None
            times[name].append((time.perf_counter() - t0) * 1000.0)
            if r.status_code >= 400:
                errors[name] += 1
                return None
            return r

        r = await call("login", "POST", "/api/v1/game/login/guest", json={"name": f"p{i}"})
        if r is None:
            return
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        r = await call("start", "POST", "/api/v1/game/sessions", json={"game": "load"})
        if r is None:
            return
        body = r.json()
        sid = body["session_id"]
        k = 0
        while body["state"] == "active":
            im = body["image"]
            await call("image", "GET", im["url"])
            q = await call(
                "ask",
                "POST",
                f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/questions",
                json={"question": "How many objects are there?", "client_key": uuid.uuid4().hex},
            )
            if q is not None and k % 2 == 0:
                await call(
                    "flag",
                    "POST",
                    f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/flag",
                    json={"question_id": q.json()["question_id"]},
                )
            k += 1
            r = await call(
                "next", "POST", f"/api/v1/game/sessions/{sid}/next", json={"position": im["position"]}
            )
            if r is None:
                return
            body = r.json()
        await call("leaderboard", "GET", "/api/v1/game/leaderboard?period=daily")


async def run_players(n: int, url: str) -> tuple[dict[str, list[float]], dict[str, int], float]:
    times: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    t0 = time.perf_counter()
    await asyncio.gather(*(player(i, url, times, errors) for i in range(n)))
    return times, errors, time.perf_counter() - t0


def one(db_url: str, root: Path, vlm_url: str, n: int) -> dict[str, Any]:
    with ServerProcess(db_url, args=["--rate-per-minute", "100000"]) as server:
        r = httpx.post(
            server.url + "/api/v1/game/games",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"name": "load", "pool": str(root / "main"), "easy_pool": str(root / "easy")}
            | {"vlm_url": vlm_url, "model": "tiny-synth", "vlm_timeout_s": 120},
            timeout=300,
        )
        r.raise_for_status()
        times, errors, wall = asyncio.run(run_players(n, server.url))
    own = [t for name, ts in times.items() if name != "ask" for t in ts]
    return {
        "players": n,
        "seconds": round(wall, 1),
        "requests": sum(len(t) for t in times.values()),
        "requests_per_s": round(sum(len(t) for t in times.values()) / wall, 1),
        "errors": dict(errors),
        "game_endpoints_ms": {
            "p50": pct(own, 0.5),
            "p99": pct(own, 0.99),
            "mean": round(statistics.mean(own), 1),
        },
        "per_endpoint_ms": {
            name: {"n": len(ts), "p50": pct(ts, 0.5), "p99": pct(ts, 0.99)}
            for name, ts in sorted(times.items())
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--players", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=60, help="images per pool")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {"benchmark": "gap_load", "machine": machine_info(), "results": {}}
    with tempfile.TemporaryDirectory() as tmp, VLMServer(["--max-batch", "64"]) as vlm:
        root = Path(tmp)
        write_pool(root / "easy", args.pool, 1, 201)
        write_pool(root / "main", args.pool, None, 202)
        # The model's first question on an image costs a caption search (0.3-0.7 s of CPU on the
        # same cores as the game); ask once per image first, so the run measures the game.
        t0 = time.perf_counter()
        warm = [
            VLMRequest(prompt="How many objects are there?", images=[f.read_bytes()], use_cache=False)
            for f in sorted(root.glob("*/*.png"))
        ]
        run_many(VLMSettings(base_url=vlm.base_url, model="tiny-synth", max_concurrency=4), warm)
        out["model_warmup_s"] = round(time.perf_counter() - t0, 1)
        if args.db in ("sqlite", "both"):
            log(f"sqlite: {args.players} players")
            out["results"]["sqlite"] = one(str(root / "load.db"), root, vlm.base_url, args.players)
        if args.db in ("postgresql", "both"):
            if not pg_available():
                out["results"]["postgresql"] = "PostgreSQL not reachable"
            else:
                with pg_schema(tag="gapload") as url:
                    log(f"postgresql: {args.players} players")
                    out["results"]["postgresql"] = one(url, root, vlm.base_url, args.players)
    summary = "; ".join(
        f"{k}: {v['players']} players, game endpoints p50 {v['game_endpoints_ms']['p50']} ms "
        f"p99 {v['game_endpoints_ms']['p99']} ms, errors {sum(v['errors'].values())}"
        for k, v in out["results"].items()
        if isinstance(v, dict)
    )
    emit(out, f"gap_load: {summary}", args.json_out)


if __name__ == "__main__":
    main()

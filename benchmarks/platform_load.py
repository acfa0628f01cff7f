"""Load on loopback: how many unit cycles (lease + submit, verification included) per second the
platform server holds, with p50/p99 latency, on SQLite and on PostgreSQL, for 50 and 500 agents.

Agents are simulated by a light asyncio HTTP/1.1 client (keep-alive, one connection per agent) in
this process; the server is `vlcurate serve` in its own process(es), as in production. Each agent
paces itself so the crowd offers a target rate (open loop: a slow server shows up as latency, not as
a politely lower request rate). The work units are real (64 pairs each, quorum 2, verification and
ledger writes on every second submission); scores are constant so every pair of replicas agrees.

    python benchmarks/platform_load.py                       # both databases, 50 and 500 agents
    python benchmarks/platform_load.py --db postgresql --agents 500 --rate 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, log, machine_info

UNIT_SIZE = 64


# ---- a minimal keep-alive HTTP/1.1 client: httpx costs more CPU per request than the server ------


class Conn:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request; a keep-alive connection the server closed while idle is reopened once."""
        try:
            return await self._request(method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            self.writer = None
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        self.writer.write(head + self.auth + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            self.writer = None
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        data = await self.reader.readexactly(length) if length else b""
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---- setup ------------------------------------------------------------------------------------


def prepare(db_url: str, n_units: int, n_agents: int) -> tuple[list[str], int]:
    """Items, a task cut into `n_units` units and one agent per contributor, written directly."""
    from sqlalchemy import insert

    from vlcurate.server import db, ingest, schemas
    from vlcurate.server.migrate import upgrade

    engine = db.make_engine(db_url)
    upgrade(engine)
    n_items = n_units * UNIT_SIZE
    with db.begin_write(engine) as conn:
        ds = conn.execute(
            insert(db.datasets)
            .values(name="load", source="synthetic", n_items=n_items)
            .returning(db.datasets.c.id)
        ).scalar_one()
        rows = [
            dict(id=i, dataset_id=ds, uid=f"{i:032x}", shard="s", key=str(i), caption=f"caption {i}")
            for i in range(1, n_items + 1)
        ]
        for k in range(0, len(rows), 5000):
            conn.execute(insert(db.items), rows[k : k + 5000])
    task = ingest.create_task(
        engine,
        schemas.TaskCreate(
            name="load",
            dataset="load",
            unit_size=UNIT_SIZE,
            gold_per_unit=0,
            gold=schemas.GoldSpec(self_score=0),
            lease_seconds=600,
        ),
    )
    tokens = [
        ingest.create_agent(engine, schemas.AgentCreate(contributor=f"load-{i}"), 1_000_000, 10_000_000).token
        for i in range(n_agents)
    ]
    # Fresh tables, as a running server's are not: without this, autovacuum analyses the items
    # table while the load runs and takes CPU from it.
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE items, units, agents, contributors, tasks")
            # The setup wrote ~100 MB: flushed now, not by the checkpointer during the measured
            # window, where its writes queue ahead of the platform's commit flushes. Needs
            # superuser (or pg_checkpoint); without it the run goes on, a little noisier.
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("CHECKPOINT")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return tokens, task.n_units


def _body(lease: dict[str, Any], rng: random.Random) -> bytes:
    """All 64 results for a lease (scores are constant, so every pair of replicas agrees)."""
    return orjson.dumps(
        {
            "idempotency_key": f"load-{lease['lease_id']}-{rng.getrandbits(32):08x}",
            "model_fingerprint": lease["task"]["model_fingerprint"],
            "results": [{"item_id": it["item_id"], "score": 0.25} for it in lease["items"]],
        }
    )


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


async def agent_loop(
    host: str,
    port: int,
    token: str,
    period: float,
    stop_at: float,
    lat: dict[str, list[float]],
    counts: dict[str, int],
    combined: bool,
    measure_from: float = 0.0,
) -> None:
    """One agent: every `period` (Poisson) it reports the lease it holds and gets the next one.

    Combined (the default): one `submit-and-lease` request per cycle; a plain `POST /leases` only
    when it holds nothing. Separate: `POST /leases` then `POST .../submit`, as before that call
    existed. A cycle is counted when its submission is answered 200 inside the window and it
    started at or after `measure_from` (earlier ones go to the warm-up figures).
    """
    conn = Conn(host, port, token)
    rng = random.Random(token)
    next_at = time.perf_counter() + rng.uniform(0, period)
    lease: dict[str, Any] | None = None
    try:
        while True:
            now = time.perf_counter()
            if next_at > now:
                await asyncio.sleep(min(next_at, stop_at) - now)
            if time.perf_counter() >= stop_at:
                return
            next_at += rng.expovariate(1.0 / period)
            t0 = time.perf_counter()
            lease_s = 0.0
            if lease is None or not combined:
                status, data = await conn.request("POST", "/api/v1/leases")
                lease_s = time.perf_counter() - t0
                lat["lease" if t0 >= measure_from else "warmup_lease"].append(lease_s)
                if status == 204:
                    _count(counts, "empty")
                    continue
                if status != 200:
                    _count(counts, f"lease_{status}")
                    continue
                lease = orjson.loads(data)
            assert lease is not None
            path = f"/api/v1/leases/{lease['lease_id']}/" + ("submit-and-lease" if combined else "submit")
            t2 = time.perf_counter()
            status, data = await conn.request("POST", path, _body(lease, rng))
            t3 = time.perf_counter()
            lease = None
            if status != 200:
                _count(counts, f"submit_{status}")
                continue
            if combined:
                lease = orjson.loads(data)["next"]
            if t3 > stop_at:
                _count(counts, "late")  # finished after the measured window: not counted
                continue
            if t0 < measure_from:
                lat["warmup_cycle"].append(lease_s + (t3 - t2))
                continue
            lat["submit"].append(t3 - t2)
            lat["cycle"].append(lease_s + (t3 - t2))
            counts["cycles"] += 1
    finally:
        conn.close()


async def drive(
    url: str,
    tokens: list[str],
    rate: float,
    seconds: float,
    combined: bool = True,
    warmup: float = 0.0,
    on_measure: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Offer `rate` cycles/s for `warmup` + `seconds`; figures are of the last `seconds` only (the
    warm-up's latencies are reported apart, as warmup_lease_* and warmup_cycle_*)."""
    host, port = url.split("//")[1].split(":")
    lat: dict[str, list[float]] = {
        "lease": [],
        "submit": [],
        "cycle": [],
        "warmup_lease": [],
        "warmup_cycle": [],
    }
    counts: dict[str, int] = {"cycles": 0, "empty": 0, "late": 0}
    period = len(tokens) / rate
    start = time.perf_counter()
    measure_from = start + warmup
    if on_measure is not None:
        asyncio.get_running_loop().call_later(warmup, on_measure)
    await asyncio.gather(
        *(
            agent_loop(
                host, int(port), t, period, measure_from + seconds, lat, counts, combined, measure_from
            )
            for t in tokens
        )
    )
    wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "offered_cycles_per_s": rate,
        "warmup_s": warmup,
        "cycles": counts["cycles"],
        "cycles_per_s": round(counts["cycles"] / seconds, 1),  # cycles completed inside the window
        "wall_s": round(wall, 1),
    }
    for k, v in lat.items():
        if v:
            a = np.asarray(v) * 1000
            out[f"{k}_p50_ms"] = round(float(np.percentile(a, 50)), 1)
            out[f"{k}_p99_ms"] = round(float(np.percentile(a, 99)), 1)
            out[f"{k}_max_ms"] = round(float(a.max()), 1)
    out["errors"] = {k: v for k, v in counts.items() if k not in ("cycles",) and v}
    return out


def _run(coro: Any) -> Any:
    """asyncio.run on uvloop when it is there: the load generator shares the cores it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield str(workdir / "load.db")
        return
    from tests.platform_live import pg_schema

    with pg_schema() as url:
        yield url


class CpuMeter:
    """CPU seconds used while the load runs: by the server processes, by PostgreSQL's backends, by
    this load generator, and by the whole machine (the 2 cores are shared by all three)."""

    def __init__(self, server_pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.server = psutil.Process(server_pid)

    def _sample(self) -> dict[str, float]:
        ps = self.psutil

        def cpu(procs: list[Any]) -> float:
            total = 0.0
            for pr in procs:
                with contextlib.suppress(ps.Error):
                    t = pr.cpu_times()
                    total += t.user + t.system
            return total

        server = [self.server, *self.server.children(recursive=True)]
        pg = [pr for pr in ps.process_iter(["name"]) if (pr.info["name"] or "").startswith("postgres")]
        machine = ps.cpu_times()
        return {
            "server": cpu(server),
            "postgres": cpu(pg),
            "loadgen": time.process_time(),
            "busy": machine.user + machine.system + machine.nice + getattr(machine, "softirq", 0.0),
            "wall": time.perf_counter(),
        }

    def __enter__(self) -> CpuMeter:
        self.restart()
        return self

    def restart(self) -> None:
        """Count from now (when the warm-up ends)."""
        self.start = self._sample()

    def __exit__(self, *exc: object) -> None:
        self.end = self._sample()

    def cores(self) -> dict[str, float]:
        """Average cores busy during the run, per part (PostgreSQL: all its backends on the machine)."""
        wall = self.end["wall"] - self.start["wall"]
        return {
            k: round((self.end[k] - self.start[k]) / wall, 2)
            for k in ("server", "postgres", "loadgen", "busy")
        }


class WalMeter:
    """PostgreSQL's write-ahead log over the measured window (`pg_stat_wal`, the whole cluster):
    records and bytes per cycle, and how many commits share one flush to disk. Each cycle commits
    once, so when flushes are slow (a busy virtual disk) and few commits share one, latency grows
    while the CPUs idle. Backends report to `pg_stat_wal` about once a second, so the edges of the
    window are fuzzy by that much. Flush time only where `track_wal_io_timing` is on."""

    _SQL = (
        "SELECT wal_records, wal_bytes, wal_sync, wal_sync_time, "
        "current_setting('track_wal_io_timing') = 'on' FROM pg_stat_wal"
    )

    def __init__(self, url: str) -> None:
        from sqlalchemy import text

        from vlcurate.server import db

        self.engine = db.make_engine(url)
        self.query = text(self._SQL)
        self.start: tuple[Any, ...] | None = None
        self.end: tuple[Any, ...] | None = None

    def _sample(self) -> tuple[Any, ...]:
        with self.engine.connect() as conn:
            return tuple(conn.execute(self.query).one())

    def restart(self) -> None:
        self.start = self._sample()

    def stop(self) -> None:
        self.end = self._sample()
        self.engine.dispose()

    def per_cycle(self, cycles: int) -> dict[str, Any]:
        assert self.start is not None and self.end is not None
        deltas = (float(b) - float(a) for a, b in zip(self.start[:4], self.end[:4], strict=True))
        records, nbytes, syncs, sync_ms = deltas
        timed = bool(self.end[4])
        return {
            "records_per_cycle": round(records / max(cycles, 1), 1),
            "kb_per_cycle": round(nbytes / 1024 / max(cycles, 1), 2),
            "flushes": int(syncs),
            "cycles_per_flush": round(cycles / syncs, 2) if syncs else None,
            "flush_ms": round(sync_ms / syncs, 3) if timed and syncs else None,
        }


def run_one(
    kind: str,
    n_agents: int,
    rate: float,
    seconds: float,
    workers: int,
    combined: bool = True,
    warmup: float = 0.0,
) -> dict[str, Any]:
    from tests.platform_live import ServerProcess

    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        # Enough units that work never runs out: one cycle per unit once contributors are trusted.
        n_units = int(rate * (seconds + warmup) * 1.5) + n_agents + 50
        t0 = time.perf_counter()
        tokens, units = prepare(url, n_units, n_agents)
        setup_s = time.perf_counter() - t0
        args = ["--workers", str(workers)] if kind == "postgresql" and workers > 1 else []
        with ServerProcess(url, args=args, log=Path(tmp) / "server.log") as proc:
            assert proc.proc is not None
            load1 = os.getloadavg()[0]
            wal = WalMeter(url) if kind == "postgresql" else None

            def measure_from_now() -> None:
                meter.restart()
                if wal is not None:
                    wal.restart()

            with CpuMeter(proc.proc.pid) as meter:
                res = _run(drive(proc.url, tokens, rate, seconds, combined, warmup, measure_from_now))
            res["cores_busy"] = meter.cores()
            if wal is not None:
                wal.stop()
                res["wal"] = wal.per_cycle(res["cycles"])
            res["loadavg_1m_before"] = round(load1, 2)
            from sqlalchemy import func, select

            from vlcurate.server import db
            from vlcurate.server.ledger import audit

            engine = db.make_engine(url)
            with engine.connect() as conn:
                verified = conn.execute(
                    select(func.count()).where(db.units.c.state == "verified")
                ).scalar_one()
                problems = audit(conn)
            engine.dispose()
        res.update(
            mode="submit-and-lease" if combined else "lease + submit",
            db=kind,
            agents=n_agents,
            server_workers=workers if kind == "postgresql" else 1,
            units=units,
            units_verified=verified,
            ledger_problems=len(problems),
            setup_s=round(setup_s, 1),
            target_met=bool(res["cycles_per_s"] >= 0.95 * rate and res.get("cycle_p99_ms", 1e9) < 250),
        )
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "postgres", "both"], default="both")
    ap.add_argument("--agents", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--rate", type=float, default=300.0, help="Offered unit cycles per second.")
    ap.add_argument("--seconds", type=float, default=20.0, help="Measured window.")
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="Seconds of the same load before the measured window (all agents connect and take "
        "their first lease, the server's database connections open); reported apart.",
    )
    ap.add_argument("--workers", type=int, default=2, help="Server processes on PostgreSQL.")
    ap.add_argument(
        "--separate",
        action="store_true",
        help="Two requests per cycle (POST /leases, then submit) instead of one submit-and-lease.",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    db_name = "postgresql" if args.db == "postgres" else args.db
    kinds = ["sqlite", "postgresql"] if db_name == "both" else [db_name]
    runs = []
    for kind in kinds:
        for n in args.agents:
            log(
                f"{kind}, {n} agents, offering {args.rate:g} cycles/s for {args.warmup:g} s of "
                f"warm-up and {args.seconds:g} s measured"
            )
            r = run_one(kind, n, args.rate, args.seconds, args.workers, not args.separate, args.warmup)
            log(json.dumps(r))
            runs.append(r)
    result = {"benchmark": "platform_load", "machine": machine_info(), "unit_size": UNIT_SIZE, "runs": runs}
    summary = "; ".join(
        f"{r['db']} {r['agents']} agents: {r['cycles_per_s']} cycles/s, p99 {r.get('cycle_p99_ms')} ms"
        for r in runs
    )
    emit(result, summary, args.json_out)


if __name__ == "__main__":
    main()

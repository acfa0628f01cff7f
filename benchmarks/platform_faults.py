"""Faults during a real platform run: agents that die mid-unit, the server killed with SIGKILL and
restarted, the database connection dropped. Afterwards every pair must have exactly one verified
score, the ledger must balance, and no submission may be lost or credited twice.

A real `vlcurate serve` (subprocess) scores a synthetic pool with honest agents built on the real
agent client (`vlcurate.agents.client.PlatformClient`: retries with backoff, resends the same
idempotency key). Like the bundled agent, each reports a unit and gets the next one in one call
(`POST /leases/{id}/submit-and-lease`), and sends a plain `POST /leases` only when it holds nothing.
While they work, at fixed shares of the pool verified:

- agents vanish: one leases a unit, downloads part of it and is never heard of again (the lease
  sweeper must requeue it); another sends its submission and disconnects before the answer;
- the server is killed with SIGKILL (`ServerProcess.kill`) and restarted on the same port and
  database;
- PostgreSQL only: every connection the server holds is terminated (`pg_terminate_backend`), a few
  times; the server answers 503 on the requests that were using them, then recovers. Only the
  server's own connections are terminated (matched by `application_name`), never those of other
  programs using the same database.

Afterwards, with the server stopped: all units verified, the task exported with
`vlcurate.server.export.export_task` and every uid found exactly once with a score or an
unscorable status, the ledger audit clean, no submission credited twice, and every submission an
agent got a 200 for present in the database (lost = 0). Then the audit must catch a credit that
rests on a cheater: one contributor is marked paused directly in the database with its credits left
standing, and `ledger.audit` and `vlcurate platform audit` must name every unit those credits are on
(and the command exit 1). `--db sqlite|postgresql|both|URL`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.platform_live import PG_BASE, ServerProcess, pg_available  # noqa: E402

from _common import bench_dir, emit, log, machine_info  # noqa: E402
from platform_simulation import (  # noqa: E402
    Truth,
    build_pool,
    compute_truth,
    create_agent,
    fresh_database,
    image_key,
    register_task,
)

API = "/api/v1"


# ---- counting what the clients went through -------------------------------------------------------


class RetryCounter(logging.Handler):
    """Counts the client's 'retrying' warnings by cause (HTTP status or connection error)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()  # emit() runs under the handler's own lock

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "retrying" not in msg:
            return
        if "HTTP 503" in msg:
            cause = "503"
        elif "HTTP 429" in msg:
            cause = "429"
        elif "HTTP 5" in msg:
            cause = "other_5xx"
        else:
            cause = "connection"
        self.counts[cause] += 1


# ---- honest agents on the real client -------------------------------------------------------------


@dataclass
class Answered:
    """A submission the server answered 200 for, as the agent saw it."""

    agent: str
    lease_id: int
    key: str
    submission_id: int
    replayed: bool
    state: str


@dataclass
class AgentLog:
    name: str
    answered: list[Answered] = field(default_factory=list)
    units_dropped: int = 0
    cycles: int = 0  # submit-and-lease calls answered
    plain_leases: int = 0  # leases from POST /leases (at the start, after a cycle that brought none)
    next_details: Counter[str] = field(default_factory=Counter)
    paused: str | None = None
    errors: list[str] = field(default_factory=list)


def honest_loop(
    url: str, token: str, truth: Truth, rng: random.Random, noise: float, out: AgentLog, stop: threading.Event
) -> None:
    """Lease, download, answer with the true score (+ noise), then report it and get the next unit in
    one call (`submit-and-lease`), as the bundled agent does; the client retries faults."""
    from vlcurate.agents.client import (
        ConflictError,
        NotFoundError,
        PausedError,
        PlatformClient,
        PlatformError,
        RetryPolicy,
    )
    from vlcurate.server.schemas import ItemResult, Lease, SubmissionIn

    policy = RetryPolicy(base=0.2, cap=2.0, max_elapsed=180.0)
    lease: Lease | None = None
    with PlatformClient(url, token, retry=policy, timeout=60.0, seed=rng.getrandbits(32)) as client:
        while not stop.is_set():
            if lease is None:
                try:
                    lease = client.lease()
                except PausedError as exc:
                    out.paused = exc.reason
                    return
                except PlatformError as exc:
                    out.errors.append(f"lease: {exc}")
                    stop.wait(0.5)
                    continue
                if lease is None:
                    stop.wait(0.2)
                    continue
                out.plain_leases += 1
            try:
                results = []
                for it in lease.items:
                    score, status = truth.get(image_key(client.image(it.image_url), it.caption))
                    if score is None or status != "ok":
                        results.append(ItemResult(item_id=it.item_id, score=None, status=status))
                    else:
                        noisy = min(1.0, max(-1.0, score + rng.uniform(-noise, noise)))
                        results.append(ItemResult(item_id=it.item_id, score=noisy))
                body = SubmissionIn(
                    idempotency_key=f"fault-{uuid.uuid4().hex}",
                    model_fingerprint=lease.task.model_fingerprint,
                    agent_version="vlcurate-faults/1",
                    results=results,
                )
                cycle = client.submit_and_lease(lease.lease_id, body)
            except (ConflictError, NotFoundError):
                out.units_dropped += 1  # the lease ran out while the server was down: drop the unit
                lease = None
                continue
            except PausedError as exc:
                out.paused = exc.reason
                return
            except PlatformError as exc:
                out.errors.append(f"unit {lease.unit_id}: {exc}")
                lease = None
                continue
            got = cycle.submission
            out.answered.append(
                Answered(
                    out.name, lease.lease_id, body.idempotency_key, got.submission_id, got.replayed, got.state
                )
            )
            out.cycles += 1
            lease = cycle.next
            if lease is None:
                out.next_details[cycle.next_detail or ""] += 1
                stop.wait(0.2)
        if lease is not None:  # hand the last unit back rather than let it expire
            with contextlib.suppress(PlatformError):
                client.release(lease.lease_id)


# ---- agents that die ---------------------------------------------------------------------------


def vanish_mid_unit(url: str, token: str, images: int = 5) -> dict[str, Any]:
    """Lease a unit, download a few of its images, then disappear without a word."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        r = http.post(f"{API}/leases")
        if r.status_code != 200:
            return {"kind": "mid_unit", "leased": False, "status": r.status_code}
        lease = r.json()
        for it in lease["items"][:images]:
            http.get(it["image_url"])
    return {"kind": "mid_unit", "leased": True, "lease_id": lease["lease_id"], "unit_id": lease["unit_id"]}


def vanish_mid_submit(url: str, token: str, truth: Truth) -> dict[str, Any]:
    """Score a unit honestly, send it, and drop the connection before the answer comes back."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        r = http.post(f"{API}/leases")
        if r.status_code != 200:
            return {"kind": "mid_submit", "leased": False, "status": r.status_code}
        lease = r.json()
        results = []
        for it in lease["items"]:
            score, status = truth.get(image_key(http.get(it["image_url"]).content, it["caption"]))
            results.append(
                {"item_id": it["item_id"], "score": score}
                if score is not None and status == "ok"
                else {"item_id": it["item_id"], "score": None, "status": status}
            )
        body = {
            "idempotency_key": f"fault-{uuid.uuid4().hex}",
            "model_fingerprint": lease["task"]["model_fingerprint"],
            "agent_version": "vlcurate-faults/1",
            "results": results,
        }
        answered = False
        try:
            http.post(
                f"{API}/leases/{lease['lease_id']}/submit",
                json=body,
                timeout=httpx.Timeout(30.0, read=0.001),
            )
            answered = True
        except httpx.TimeoutException:
            pass
    return {
        "kind": "mid_submit",
        "leased": True,
        "lease_id": lease["lease_id"],
        "unit_id": lease["unit_id"],
        "saw_answer": answered,
    }


# ---- database faults ---------------------------------------------------------------------------


def drop_connections(db_url: str) -> int:
    """Terminate every PostgreSQL backend of the server (its application_name); returns how many."""
    import psycopg

    base = db_url.split("?", 1)[0]
    app = db_url.rsplit("application_name=", 1)[-1]
    with psycopg.connect(base, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchall()
    return sum(bool(r[0]) for r in rows)


# ---- one run -----------------------------------------------------------------------------------


@dataclass
class Event:
    at: float  # share of units verified
    kind: str  # vanish_mid_unit | vanish_mid_submit | kill_server | drop_db
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def schedule(*, vanishers: int, kills: int, drops: int, postgres: bool) -> list[Event]:
    """Faults spread over the run so that each happens while agents are busy."""
    events: list[Event] = []
    for i in range(vanishers):
        kind = "vanish_mid_submit" if i % 2 else "vanish_mid_unit"
        events.append(Event(0.05 + 0.6 * i / max(1, vanishers), kind))
    for i in range(kills):
        events.append(Event(0.2 + 0.5 * i / max(1, kills), "kill_server"))
    if postgres:
        for i in range(drops):
            events.append(Event(0.3 + 0.55 * i / max(1, drops), "drop_db"))
    return sorted(events, key=lambda e: e.at)


def fault_run(
    *,
    backend: str,
    db: str,
    shards: Path,
    truth: Truth,
    workdir: Path,
    honest: int,
    unit_size: int,
    gold_per_unit: int,
    lease_seconds: int,
    trust_after: int,
    vanishers: int,
    kills: int,
    drops: int,
    noise: float,
    seed: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Run the pool to completion through the scheduled faults, then check what the database holds."""
    server_log = workdir / f"server-{backend}.log"
    server = ServerProcess(db, log=server_log, args=["--rate-per-minute", "100000"])
    server.start()
    stop = threading.Event()
    counter = RetryCounter()
    client_log = logging.getLogger("vlcurate.agent.client")
    client_log.addHandler(counter)
    propagate, client_log.propagate = client_log.propagate, False  # counted, not printed
    logs: list[AgentLog] = []
    events = schedule(vanishers=vanishers, kills=kills, drops=drops, postgres=backend == "postgresql")
    rng = random.Random(seed)
    started = time.monotonic()
    try:
        task = register_task(server.url, shards, unit_size, gold_per_unit, 2, trust_after, lease_seconds)
        n_units = int(task["n_units"])
        tokens = [create_agent(server.url, f"honest-{i:02d}") for i in range(honest)]
        spare = [create_agent(server.url, f"vanisher-{i:02d}") for i in range(vanishers)]
        threads = []
        for i, tok in enumerate(tokens):
            lg = AgentLog(f"honest-{i:02d}")
            logs.append(lg)
            args = (server.url, tok, truth, random.Random(rng.getrandbits(32)), noise, lg, stop)
            threads.append(threading.Thread(target=honest_loop, args=args, daemon=True))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        completed = False
        deadline = t0 + max_seconds
        while time.monotonic() < deadline:
            verified, open_units = _progress(server.url)
            if verified is not None:
                share = verified / n_units
                for ev in events:
                    if not ev.done and share >= ev.at:
                        ev.done = True
                        ev.info = _fire(ev, server, db, spare, truth)
                        ev.info["at_share"] = round(share, 3)
                        log(f"{backend}: {ev.kind} at {share:.0%} verified: {ev.info}")
                if open_units == 0:
                    completed = all(ev.done for ev in events)
                    if completed:
                        break
            stop.wait(0.3)
        stop.set()
        for t in threads:
            t.join(200)
        run_s = time.monotonic() - t0
    finally:
        stop.set()
        client_log.removeHandler(counter)
        client_log.propagate = propagate
        server.stop()
    checks = check_database(db, truth, task["name"], logs, events, workdir / f"export-{backend}")
    checks["audit_catches_credit_on_paused"] = audit_catches_credit_on_paused(db)
    server_db_errors = sum("database error" in line for line in _read(server_log).splitlines())
    return {
        "backend": backend,
        "completed": completed,
        "run_s": round(run_s, 2),
        "wall_s": round(time.monotonic() - started, 2),
        "units": n_units,
        "events": [{"kind": e.kind, "done": e.done, **e.info} for e in events],
        "client_retries": dict(counter.counts),
        "server_503_database_errors_logged": server_db_errors,
        "agents": {
            "honest": honest,
            "paused": [f"{lg.name}: {lg.paused}" for lg in logs if lg.paused],
            "units_dropped_expired_lease": sum(lg.units_dropped for lg in logs),
            "submissions_answered_200": sum(len(lg.answered) for lg in logs),
            "submit_and_lease_cycles": sum(lg.cycles for lg in logs),
            "plain_leases": sum(lg.plain_leases for lg in logs),
            "cycles_without_next_unit": dict(sum((lg.next_details for lg in logs), Counter())),
            "answers_replayed": sum(a.replayed for lg in logs for a in lg.answered),
            "errors": [e for lg in logs for e in lg.errors][:20],
        },
        **checks,
    }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _progress(url: str) -> tuple[int | None, int | None]:
    try:
        ds = httpx.get(f"{url}{API}/stats", timeout=10).json()["datasets"][0]["units_by_state"]
        return int(ds.get("verified", 0)), int(ds.get("open", 0))
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return None, None  # the server is down or restarting


def _fire(ev: Event, server: ServerProcess, db: str, spare: list[str], truth: Truth) -> dict[str, Any]:
    if ev.kind == "kill_server":
        t = time.monotonic()
        server.kill()
        time.sleep(0.5)
        server.start(timeout=120)
        return {"down_s": round(time.monotonic() - t, 2)}
    if ev.kind == "drop_db":
        return {"backends_terminated": drop_connections(db)}
    token = spare.pop()
    if ev.kind == "vanish_mid_unit":
        return vanish_mid_unit(server.url, token)
    return vanish_mid_submit(server.url, token, truth)


# ---- checks ------------------------------------------------------------------------------------


def check_database(
    db: str, truth: Truth, task_name: str, logs: list[AgentLog], events: list[Event], export_dir: Path
) -> dict[str, Any]:
    """Everything the issue asks to hold after the run, read from the database and the export."""
    import pyarrow.parquet as pq
    from sqlalchemy import case, func, select

    from vlcurate.server import db as tables
    from vlcurate.server.db import make_engine
    from vlcurate.server.export import export_task
    from vlcurate.server.ledger import audit

    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            problems = audit(conn)
            S, L, U, R = tables.submissions, tables.ledger, tables.units, tables.replicas
            stored = {
                (r.agent_id, r.idempotency_key): r.id
                for r in conn.execute(select(S.c.id, S.c.agent_id, S.c.idempotency_key)).all()
            }
            stored_ids = {v for v in stored.values()}
            key_of = {
                r.id: r.idempotency_key for r in conn.execute(select(S.c.id, S.c.idempotency_key)).all()
            }
            # credits still standing per submission (reversed and paid again is fine)
            credits = conn.execute(
                select(L.c.submission_id, func.sum(case((L.c.kind == "credit", 1), else_=-1))).group_by(
                    L.c.submission_id
                )
            ).all()
            ledger_rows = conn.execute(select(L.c.unit_id, L.c.contributor_id, L.c.kind)).all()
            units = conn.execute(select(U.c.state, func.count()).group_by(U.c.state)).all()
            replica_states = dict(conn.execute(select(R.c.id, R.c.state)).all())
            It, Im = tables.items, tables.item_images
            uid_key = {
                r.uid: image_key(bytes(r.data) if r.data is not None else None, r.caption)
                for r in conn.execute(
                    select(It.c.uid, It.c.caption, Im.c.data).join(Im, Im.c.item_id == It.c.id, isouter=True)
                ).all()
            }
        summary = export_task(engine, task_name, export_dir)
    finally:
        engine.dispose()

    # every uid exactly once, with a score or an unscorable status
    seen: Counter[str] = Counter()
    unverified = 0
    max_err = 0.0
    for f in sorted((export_dir / "scores").glob("*.parquet")):
        t = pq.read_table(f, columns=["uid", "score", "status"]).to_pydict()
        for uid, score, status in zip(t["uid"], t["score"], t["status"], strict=True):
            seen[uid] += 1
            if status == "unverified" or (status == "ok" and score is None):
                unverified += 1
            elif score is not None:
                want, _ = truth.get(uid_key[uid])
                if want is not None:
                    max_err = max(max_err, abs(float(score) - want))
    missing = [u for u in uid_key if seen[u] == 0]
    twice = [u for u, n in seen.items() if n > 1]

    # no submission lost: every 200 the agents got is a stored submission with that key
    lost = 0
    for lg in logs:
        for a in lg.answered:
            if a.submission_id not in stored_ids or key_of.get(a.submission_id) != a.key:
                lost += 1
    vanished = {}
    for ev in events:
        if ev.kind.startswith("vanish") and ev.info.get("leased"):
            vanished[ev.kind + f"@{ev.info['lease_id']}"] = replica_states.get(ev.info["lease_id"])
    net_credits: Counter[tuple[int, int]] = Counter()
    for unit_id, contributor_id, kind in ledger_rows:
        net_credits[(unit_id, contributor_id)] += 1 if kind == "credit" else -1
    by_state = {s: int(n) for s, n in units}
    return {
        "units_by_state": by_state,
        "all_units_verified": set(by_state) == {"verified"},
        "export": {
            "shards_done": summary["shards_done"],
            "shards_total": summary["shards_total"],
            "pairs_in_dataset": len(uid_key),
            "uids_exported": len(seen),
            "uids_missing": len(missing),
            "uids_more_than_once": len(twice),
            "uids_without_verified_score": unverified,
            "every_pair_exactly_one_verified_score": not missing and not twice and unverified == 0,
            "max_abs_error_vs_truth": round(max_err, 6),
        },
        "ledger_audit_problems": problems,
        "submissions_credited_twice": sum(int(n) > 1 for _, n in credits),
        "unit_paid_twice_to_one_contributor": sum(n > 1 for n in net_credits.values()),
        "submissions_lost": lost,
        "vanished_leases_final_state": vanished,
        "submissions_stored": len(stored),
    }


def audit_catches_credit_on_paused(db: str) -> dict[str, Any]:
    """Make a credit rest on a cheater and check that the audit reports it.

    After the run (server stopped, audit clean), the contributor of one credited, valid submission
    is marked paused directly in the database and its credits are left standing, as a pause that
    skipped its reversals would leave them. `ledger.audit` and `vlcurate platform audit --db` must
    then name every unit whose verified group holds that contributor and that still carries an
    unreversed credit (the contributor's and its quorum partners'), and the command must exit 1.
    The database is put back afterwards.
    """
    import re
    import subprocess

    from sqlalchemy import select, update

    from vlcurate.server import db as tables
    from vlcurate.server.db import make_engine
    from vlcurate.server.ledger import audit

    L, S, C = tables.ledger, tables.submissions, tables.contributors
    engine = make_engine(db)
    try:
        with engine.begin() as conn:
            reversed_ids = select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))
            standing = conn.execute(
                select(L.c.unit_id, S.c.contributor_id)
                .join(S, S.c.id == L.c.submission_id)
                .where(L.c.kind == "credit", S.c.state == "valid", L.c.id.not_in(reversed_ids))
                .order_by(L.c.id)
            ).all()
            if not standing:
                return {"planted": False, "why": "no standing credit to plant on"}
            cheater = standing[len(standing) // 2].contributor_id
            name = conn.execute(select(C.c.name).where(C.c.id == cheater)).scalar_one()
            expected = sorted({u for u, c in standing if c == cheater})
            conn.execute(
                update(C)
                .where(C.c.id == cheater)
                .values(paused=True, pause_reason="planted by platform_faults: paused, credits left standing")
            )
        with engine.connect() as conn:
            problems = audit(conn)
        flagged = sorted(
            {int(m.group(1)) for p in problems if (m := re.search(r"on unit (\d+) rests on paused", p))}
        )
        cli = subprocess.run(
            [sys.executable, "-m", "vlcurate.cli.main", "platform", "audit", "--db", db],
            capture_output=True,
            text=True,
            timeout=300,
        )
        cli_flagged = sorted(
            {int(m.group(1)) for m in re.finditer(r"on unit (\d+) rests on paused contributor", cli.stdout)}
        )
        with engine.begin() as conn:
            conn.execute(update(C).where(C.c.id == cheater).values(paused=False, pause_reason=None))
    finally:
        engine.dispose()
    return {
        "planted": True,
        "paused_contributor": name,
        "units_with_its_standing_credits": len(expected),
        "units_flagged_by_audit": len(flagged),
        "every_unit_flagged": set(expected) <= set(flagged),
        "audit_problems": len(problems),
        "audit_problems_sample": problems[:3],
        "cli_exit_code": cli.returncode,
        "cli_every_unit_flagged": set(expected) <= set(cli_flagged),
    }


# ---- entry points ------------------------------------------------------------------------------


def run(
    *,
    db: str = "both",
    pairs: int = 3200,
    honest: int = 4,
    unit_size: int = 64,
    gold_per_unit: int = 4,
    lease_seconds: int = 10,
    trust_after: int = 5,
    vanishers: int = 4,
    kills: int = 2,
    drops: int = 3,
    noise: float = 0.005,
    seed: int = 0,
    max_seconds: float = 600.0,
    workdir: Path | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Run the fault scenario on each requested backend and return every check (module docstring)."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vlc-faults-", dir=workdir))
    backends: list[tuple[str, str | None]] = []
    if db in ("sqlite", "both"):
        backends.append(("sqlite", None))
    if db in ("postgresql", "both"):
        backends.append(("postgresql", PG_BASE))
    if db.startswith("postgres") and "://" in db:
        backends.append(("postgresql", db))
    out: dict[str, Any] = {"benchmark": "platform_faults", "runs": {}}
    try:
        pool_root = (bench_dir() / "platform-sim" / f"pool-{pairs}-{seed}") if cache else tmp / "pool"
        shards = build_pool(pool_root, pairs, seed, shard_size=500)
        truth = compute_truth(shards, cache=pool_root / "truth.json" if cache else None)
        for backend, base in backends:
            if backend == "postgresql" and base == PG_BASE and not pg_available():
                out["runs"][backend] = {"skipped": f"PostgreSQL not reachable at {PG_BASE}"}
                continue
            with fresh_database(base, tmp, f"faults-{backend}") as url:
                log(f"{backend}: {pairs} pairs, {honest} honest agents, faults on the way")
                out["runs"][backend] = fault_run(
                    backend=backend,
                    db=url,
                    shards=shards,
                    truth=truth,
                    workdir=tmp,
                    honest=honest,
                    unit_size=unit_size,
                    gold_per_unit=gold_per_unit,
                    lease_seconds=lease_seconds,
                    trust_after=trust_after,
                    vanishers=vanishers,
                    kills=kills,
                    drops=drops,
                    noise=noise,
                    seed=seed,
                    max_seconds=max_seconds,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["config"] = {
        "pairs": pairs,
        "honest": honest,
        "unit_size": unit_size,
        "gold_per_unit": gold_per_unit,
        "lease_seconds": lease_seconds,
        "trust_after": trust_after,
        "vanishers": vanishers,
        "server_kills": kills,
        "db_drops_postgresql": drops,
        "seed": seed,
    }
    out["targets"] = {name: targets(r) for name, r in out["runs"].items() if "skipped" not in r}
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def targets(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "all_faults_happened": all(e["done"] for e in r["events"]),
        "every_pair_exactly_one_verified_score": r["export"]["every_pair_exactly_one_verified_score"],
        "ledger_audit_clean": not r["ledger_audit_problems"],
        "nothing_credited_twice": r["submissions_credited_twice"] == 0
        and r["unit_paid_twice_to_one_contributor"] == 0,
        "no_submission_lost": r["submissions_lost"] == 0,
        "no_honest_agent_paused": not r["agents"]["paused"],
        "agents_used_submit_and_lease": r["agents"]["submit_and_lease_cycles"] > 0,
        "audit_catches_credit_on_paused": bool(
            r["audit_catches_credit_on_paused"].get("every_unit_flagged")
            and r["audit_catches_credit_on_paused"].get("cli_every_unit_flagged")
            and r["audit_catches_credit_on_paused"].get("cli_exit_code") == 1
        ),
    }


def summary_line(r: dict[str, Any]) -> str:
    parts = []
    for name, run_ in r["runs"].items():
        if "skipped" in run_:
            parts.append(f"{name}: skipped")
            continue
        t = r["targets"][name]
        parts.append(
            f"{name}: {'all checks pass' if all(t.values()) else 'FAILED ' + str(t)}, "
            f"lost={run_['submissions_lost']}, twice={run_['submissions_credited_twice']}, "
            f"retries={run_['client_retries']}, {run_['run_s']}s"
        )
    return "platform_faults: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--db", default="both", help="sqlite, postgresql, both, or a PostgreSQL URL")
    ap.add_argument("--pairs", type=int, default=3200)
    ap.add_argument("--honest", type=int, default=4)
    ap.add_argument("--unit-size", type=int, default=64)
    ap.add_argument("--gold-per-unit", type=int, default=4)
    ap.add_argument("--lease-seconds", type=int, default=10)
    ap.add_argument("--vanishers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--drops", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    r = run(
        db=a.db,
        pairs=a.pairs,
        honest=a.honest,
        unit_size=a.unit_size,
        gold_per_unit=a.gold_per_unit,
        lease_seconds=a.lease_seconds,
        vanishers=a.vanishers,
        kills=a.kills,
        drops=a.drops,
        seed=a.seed,
        max_seconds=a.max_seconds,
        cache=not a.no_cache,
    )
    r["machine"] = machine_info()
    emit(r, summary_line(r), a.json_out)
    return 0 if all(all(t.values()) for t in r["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

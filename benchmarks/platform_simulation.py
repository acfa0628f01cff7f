"""Honest agents and cheaters against a real platform server: does verification catch every cheat,
spare every honest contributor, pay nothing for bad work, and cost little with adaptive replication?

A real `vlcurate serve` (a subprocess, SQLite by default, `--db postgresql://...` for a fresh
PostgreSQL schema per mode) hands out a synthetic pool in units with hidden checks and a quorum of
2. Simulated agents speak plain HTTP to it from threads, each agent its own contributor:

- honest: downloads every image of its lease and answers with the pinned model's true score (scored
  once per (image sha1, caption) with `score_pairs`, exactly as the server scores its own checks)
  plus uniform noise of +-`noise`, emulating bf16 against fp32 machines;
- random: uniform scores over the range true scores take; constant: the median true score;
- copy: colludes with an honest agent of another contributor: they lease and hand leases back
  until both hold the same unit, and the copier resends the colluder's answers matched by caption
  (item ids are opaque and differ per replica), anything unmatched filled at random;
- partial: the first half of the items (in served order) scored honestly, the rest the median;
- replay: one honest unit, then old submissions again: the same body and key (must answer the first
  result, credited once), the old body with a new key on a new lease (must be a 4xx) and the old
  scores placed by position on the new lease's items;
- sleeper: honest until trusted (adaptive replication then skips most audits), then a share
  (`sleeper_garbage`, 10%) of each unit filled at random: what reversals exist for.

Both modes run on the same pool and population: adaptive replication on (`trust_after` as given)
and off (`trust_after` 10,000). Figures: per strategy the share of cheaters paused and after how
many units, honest contributors paused, points paid for dishonest work after reversals, the
verification overhead (pairs scored by all agents, hidden checks included, per verified pair),
how far verified scores are from the truth, and the ledger audit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.platform_live import ServerProcess, admin_headers, pg_schema  # noqa: E402

from _common import bench_dir, emit, log, machine_info  # noqa: E402

STRATEGIES = ("random", "constant", "copy", "partial", "replay", "sleeper")
ISSUE_STRATEGIES = ("random", "constant", "copy", "partial", "replay")  # the issue's list
API = "/api/v1"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AGENT_VERSION = "vlcurate-sim/1"  # the same for everyone: the version must not give cheaters away
NO_ADAPTIVE_TRUST = 10_000
COPY_TRIES = 30  # leases a copier hands back while looking for its colluder's unit
FEW_UNITS = 5  # "every cheating strategy caught within a few units"


# ---- pool and truth ----------------------------------------------------------------------------


def image_key(data: bytes | None, caption: str | None) -> tuple[str, str | None]:
    """What an honest agent can recognise a pair by: its image bytes and its caption."""
    return (hashlib.sha1(data or b"").hexdigest(), caption)


@dataclass
class Truth:
    """The pinned model's answer for every pair of the pool, and the range cheaters imitate."""

    answers: dict[tuple[str, str | None], tuple[float | None, str]]
    fingerprint: str
    lo: float
    hi: float
    median: float

    def get(self, key: tuple[str, str | None]) -> tuple[float | None, str]:
        return self.answers.get(key, (None, "fetch_error"))


def build_pool(root: Path, pairs: int, seed: int, shard_size: int) -> Path:
    """The synthetic pool's shards (30% corrupted captions); reused when already written."""
    from vlcurate.synth.pool import write_pool

    done = root / "pool.done"
    if not done.exists():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        write_pool(root, pairs, corrupt_fraction=0.3, seed=seed, shard_size=shard_size)
        done.write_text("ok\n")
    return root / "shards"


def compute_truth(shards: Path, model: str = "tiny-synth", cache: Path | None = None) -> Truth:
    """Score every pair once with `score_pairs` (what the server's hidden checks use) on the CPU."""
    from vlcurate.io.sources import open_source
    from vlcurate.models.clip import load_scorer
    from vlcurate.pipeline.score_memory import score_pairs

    scorer = load_scorer(model, device="cpu")
    if cache is not None and cache.exists():
        raw = json.loads(cache.read_text())
        if raw.get("fingerprint") == scorer.fingerprint:
            answers = {(k[0], k[1]): (v[0], v[1]) for k, v in raw["answers"]}
            return _truth(answers, scorer.fingerprint)
    source = open_source(str(shards))
    images: list[bytes | None] = []
    captions: list[str | None] = []
    for shard in source.shards():
        for s in source.iter_samples(shard):
            images.append(s.image)
            captions.append(s.text)
    scores = score_pairs(scorer, images, captions)
    answers = {image_key(i, c): (p.score, p.status) for i, c, p in zip(images, captions, scores, strict=True)}
    if cache is not None:
        cache.write_text(
            json.dumps({"fingerprint": scorer.fingerprint, "answers": [[k, v] for k, v in answers.items()]})
        )
    return _truth(answers, scorer.fingerprint)


def _truth(answers: dict[tuple[str, str | None], tuple[float | None, str]], fingerprint: str) -> Truth:
    ok = sorted(s for s, st in answers.values() if s is not None and st == "ok")
    return Truth(answers, fingerprint, ok[0], ok[-1], statistics.median(ok))


# ---- databases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(db: str | None, workdir: Path, tag: str) -> Iterator[str]:
    """A new SQLite file under `workdir`, or a new schema in the PostgreSQL database `db`."""
    if not db or db == "sqlite":
        yield str(workdir / f"{tag}.db")
        return
    with pg_schema(db, f"b_{tag}") as url:
        yield url


# ---- HTTP --------------------------------------------------------------------------------------


def call(
    http: httpx.Client, method: str, path: str, *, json_body: Any = None, budget: float = 120.0
) -> httpx.Response:
    """One request, retried on connection errors, 429 and 5xx (Retry-After honoured) for `budget` s."""
    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            r = http.request(method, path, json=json_body)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            wait = delay
        else:
            if r.status_code not in RETRY_STATUSES or time.monotonic() > deadline:
                return r
            try:
                wait = float(r.headers.get("Retry-After", delay))
            except ValueError:
                wait = delay
        time.sleep(min(wait, 2.0))
        delay = min(delay * 2, 2.0)


def create_agent(url: str, contributor: str) -> str:
    r = httpx.post(
        f"{url}{API}/agents", json={"contributor": contributor}, headers=admin_headers(), timeout=30
    )
    r.raise_for_status()
    return str(r.json()["token"])


# ---- agents ------------------------------------------------------------------------------------


@dataclass
class SubRecord:
    """One submission the agent sent and the server answered."""

    status_code: int
    submission_id: int | None
    honest: bool
    state: str | None
    points: float
    replayed: bool
    detail: str
    unit_id: int | None
    lease_id: int
    key: str


@dataclass
class Item:
    """One item of a lease as the agent sees it (plus what it learned by downloading the image)."""

    item_id: str
    caption: str | None
    image_url: str
    key: tuple[str, str | None] | None = None


@dataclass
class AgentState:
    name: str
    strategy: str
    contributor: str
    leases: int = 0
    paused_seen: bool = False
    at_pause: dict[str, int] | None = None
    records: list[SubRecord] = field(default_factory=list)
    pairs_answered_honestly: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def progress(self) -> dict[str, int]:
        """Units worked on (any submission attempt), those with a dishonest attempt, submissions stored."""
        return {
            "units": len({r.lease_id for r in self.records}),
            "cheating_units": len({r.lease_id for r in self.records if not r.honest}),
            "submissions": sum(r.submission_id is not None and not r.replayed for r in self.records),
        }

    def snapshot_at_pause(self) -> None:
        self.at_pause = self.progress()


PAUSED = "paused"


class SimAgent:
    """One simulated agent over real HTTP; `strategy` says how it answers."""

    def __init__(
        self,
        url: str,
        token: str,
        state: AgentState,
        truth: Truth,
        *,
        seed: int,
        noise: float,
        sleeper_after: int,
        sleeper_garbage: float = 0.1,
    ) -> None:
        self.sleeper_garbage = sleeper_garbage
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(60.0)
        )
        self.state = state
        self.truth = truth
        self.rng = random.Random(seed)
        self.noise = noise
        self.sleeper_after = sleeper_after
        self.history: dict[str | None, float] = {}  # caption -> score this agent sent (for a copier)
        self.old: tuple[int, dict[str, Any], dict[str, Any], list[Item]] | None = None  # replay source

    # ---- plumbing ----
    def lease(self) -> dict[str, Any] | str | None:
        r = call(self.http, "POST", f"{API}/leases")
        if r.status_code == 204:
            return None
        if r.status_code == 403:
            if not self.state.paused_seen:
                self.state.paused_seen = True
                self.state.snapshot_at_pause()
            return PAUSED
        if r.status_code != 200:
            self.state.errors.append(f"lease: HTTP {r.status_code} {r.text[:200]}")
            return None
        self.state.leases += 1
        body: dict[str, Any] = r.json()
        return body

    def items(self, lease: dict[str, Any], fetch: int | None = None) -> list[Item]:
        """The lease's items; the first `fetch` (default all) have their images downloaded."""
        items = [Item(i["item_id"], i["caption"], i["image_url"]) for i in lease["items"]]
        n = len(items) if fetch is None else fetch
        for it in items[:n]:
            r = call(self.http, "GET", it.image_url)
            it.key = image_key(r.content if r.status_code == 200 else None, it.caption)
        return items

    def honest_result(self, it: Item) -> dict[str, Any]:
        assert it.key is not None, "an honest answer needs the image"
        score, status = self.truth.get(it.key)
        self.state.pairs_answered_honestly += 1
        if score is None or status != "ok":
            return {"item_id": it.item_id, "score": None, "status": status}
        noisy = min(1.0, max(-1.0, score + self.rng.uniform(-self.noise, self.noise)))
        self.history[it.caption] = noisy
        return {"item_id": it.item_id, "score": noisy}

    def random_score(self) -> float:
        return self.rng.uniform(self.truth.lo, self.truth.hi)

    def body(self, results: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
        return {
            "idempotency_key": key or f"sim-{uuid.uuid4().hex}",
            "model_fingerprint": self.truth.fingerprint,
            "agent_version": AGENT_VERSION,
            "results": results,
        }

    def submit(self, lease_id: int, body: dict[str, Any], *, honest: bool) -> SubRecord:
        r = call(self.http, "POST", f"{API}/leases/{lease_id}/submit", json_body=body)
        data: dict[str, Any] = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        )
        rec = SubRecord(
            status_code=r.status_code,
            submission_id=data.get("submission_id") if r.status_code == 200 else None,
            honest=honest,
            state=data.get("state"),
            points=float(data.get("points_credited") or 0.0),
            replayed=bool(data.get("replayed", False)),
            detail=str(data.get("detail", ""))[:300],
            unit_id=data.get("unit_id"),
            lease_id=lease_id,
            key=str(body["idempotency_key"]),
        )
        self.state.records.append(rec)
        return rec

    def submitted(self) -> int:
        return sum(rec.submission_id is not None and not rec.replayed for rec in self.state.records)

    # ---- strategies ----
    def work(self, lease: dict[str, Any]) -> None:
        """Answer one lease the way this agent's strategy does."""
        s = self.state.strategy
        lid = int(lease["lease_id"])
        if s == "honest":
            items = self.items(lease)
            self.submit(lid, self.body([self.honest_result(it) for it in items]), honest=True)
        elif s == "random":
            items = self.items(lease, fetch=0)
            results = [{"item_id": it.item_id, "score": self.random_score()} for it in items]
            self.submit(lid, self.body(results), honest=False)
        elif s == "constant":
            items = self.items(lease, fetch=0)
            results = [{"item_id": it.item_id, "score": self.truth.median} for it in items]
            self.submit(lid, self.body(results), honest=False)
        elif s == "partial":
            half = len(lease["items"]) // 2
            items = self.items(lease, fetch=half)
            results = [self.honest_result(it) for it in items[:half]]
            results += [{"item_id": it.item_id, "score": self.truth.median} for it in items[half:]]
            self.submit(lid, self.body(results), honest=False)
        elif s == "sleeper":
            self.work_sleeper(lease)
        elif s == "replay":
            self.work_replay(lease)
        else:
            raise ValueError(f"unknown strategy {s!r}")

    def work_sleeper(self, lease: dict[str, Any]) -> None:
        lid = int(lease["lease_id"])
        items = self.items(lease)
        if not self.state.notes.get("switched"):
            trusted = False
            if self.submitted() >= 2:
                me = call(self.http, "GET", f"{API}/me")
                trusted = me.status_code == 200 and bool(me.json().get("trusted"))
            if trusted or self.submitted() >= self.sleeper_after:
                self.state.notes["switched"] = True
                self.state.notes["switched_after_units"] = self.submitted()
                self.state.notes["trusted_when_switched"] = trusted
        if not self.state.notes.get("switched"):
            self.submit(lid, self.body([self.honest_result(it) for it in items]), honest=True)
            return
        cut = len(items) - max(1, round(len(items) * self.sleeper_garbage))
        results = [self.honest_result(it) for it in items[:cut]]
        results += [{"item_id": it.item_id, "score": self.random_score()} for it in items[cut:]]
        self.submit(lid, self.body(results), honest=False)

    def work_replay(self, lease: dict[str, Any]) -> None:
        lid = int(lease["lease_id"])
        notes = self.state.notes
        if self.old is None:
            items = self.items(lease)
            body = self.body([self.honest_result(it) for it in items])
            first = self.submit(lid, body, honest=True)
            again = self.submit(lid, body, honest=True)  # same key, same lease: the first answer
            notes["same_key_replay"] = {
                "status": again.status_code,
                "replayed": again.replayed,
                "same_submission": again.submission_id == first.submission_id,
            }
            other = self.submit(lid, dict(body, idempotency_key=f"sim-{uuid.uuid4().hex}"), honest=False)
            notes.setdefault("new_key_same_lease_status", []).append(other.status_code)
            if first.submission_id is not None:
                self.old = (lid, body, {"submission_id": first.submission_id}, items)
            return
        _old_lid, old_body, old_out, _old_items = self.old
        # 1) the old body verbatim with a new key onto the new lease: items not in this unit -> 4xx
        verbatim = self.submit(lid, dict(old_body, idempotency_key=f"sim-{uuid.uuid4().hex}"), honest=False)
        notes.setdefault("new_key_new_lease_status", []).append(verbatim.status_code)
        # 2) the old body with its old key onto the new lease: the first answer again, nothing new
        same_key = self.submit(lid, old_body, honest=True)
        notes.setdefault("old_key_new_lease", []).append(
            {
                "status": same_key.status_code,
                "replayed": same_key.replayed,
                "same_submission": same_key.submission_id == old_out["submission_id"],
            }
        )
        # 3) the old scores placed by position on this lease's items: looks valid, is not
        items = [Item(i["item_id"], i["caption"], i["image_url"]) for i in lease["items"]]
        old_scores = [r.get("score") for r in old_body["results"]]
        results = [
            {"item_id": it.item_id, "score": old_scores[k % len(old_scores)]}
            if old_scores[k % len(old_scores)] is not None
            else {"item_id": it.item_id, "score": self.truth.median}
            for k, it in enumerate(items)
        ]
        # 3a) ... under the old key: a well-formed body, but the key was used: never a new submission
        reused = self.submit(lid, self.body(results, key=old_body["idempotency_key"]), honest=False)
        notes.setdefault("old_key_relabelled_new_lease", []).append(
            {
                "status": reused.status_code,
                "replayed": reused.replayed,
                "same_submission": reused.submission_id == old_out["submission_id"],
            }
        )
        # 3b) ... under a new key
        self.submit(lid, self.body(results), honest=False)


def run_agent(agent: SimAgent, stop: threading.Event) -> None:
    """Lease, answer, repeat, until the run stops or this contributor is paused."""
    try:
        while not stop.is_set():
            lease = agent.lease()
            if lease == PAUSED:
                return
            if lease is None:
                stop.wait(0.2)
                continue
            assert isinstance(lease, dict)
            agent.work(lease)
    except Exception as exc:  # a crashed thread must show up in the figures, not vanish
        agent.state.errors.append(f"{type(exc).__name__}: {exc}")


def pair_lease(
    copier: SimAgent, colluder: SimAgent
) -> tuple[dict[str, Any] | str | None, dict[str, Any] | str | None]:
    """Lease for both, then walk the lower of the two up (handing its lease back) until they hold
    the same unit: what a colluding pair does to get two replicas of one unit."""
    notes = copier.state.notes
    la = copier.lease() if not copier.state.paused_seen else PAUSED
    lb = colluder.lease()
    for _ in range(COPY_TRIES):
        if not isinstance(la, dict) or not isinstance(lb, dict) or la["unit_id"] == lb["unit_id"]:
            break
        if lb["unit_id"] < la["unit_id"]:
            call(colluder.http, "DELETE", f"{API}/leases/{lb['lease_id']}")
            lb = colluder.lease()
        else:
            call(copier.http, "DELETE", f"{API}/leases/{la['lease_id']}")
            la = copier.lease()
        notes["handed_back"] = notes.get("handed_back", 0) + 1
    return la, lb


def run_copy_pair(copier: SimAgent, colluder: SimAgent, stop: threading.Event) -> None:
    """Copier and its honest colluder get two replicas of one unit (`pair_lease`) when they can; the
    copier sends the colluder's answers matched by caption, anything unmatched at random."""
    notes = copier.state.notes
    notes.update(same_unit=0, units=0, copied_items=0, items=0)
    try:
        while not stop.is_set():
            la, lb = pair_lease(copier, colluder)
            if lb == PAUSED:
                return
            if isinstance(lb, dict):
                colluder.work(lb)
            if isinstance(la, dict):
                notes["units"] += 1
                notes["same_unit"] += isinstance(lb, dict) and lb["unit_id"] == la["unit_id"]
                results = []
                for it in la["items"]:
                    score = colluder.history.get(it["caption"])
                    notes["items"] += 1
                    if score is None:
                        score = copier.random_score()
                    else:
                        notes["copied_items"] += 1
                    results.append({"item_id": it["item_id"], "score": score})
                copier.submit(int(la["lease_id"]), copier.body(results), honest=False)
            if not isinstance(la, dict) and lb is None:
                stop.wait(0.2)
    except Exception as exc:
        copier.state.errors.append(f"{type(exc).__name__}: {exc}")


# ---- one simulation ----------------------------------------------------------------------------


@dataclass
class Population:
    agents: list[SimAgent]
    threads: list[threading.Thread]


def make_population(
    url: str,
    truth: Truth,
    *,
    honest: int,
    per_strategy: int,
    strategies: Sequence[str],
    seed: int,
    noise: float,
    sleeper_after: int,
    sleeper_garbage: float,
    stop: threading.Event,
) -> Population:
    """One contributor per agent; threads start together so cheaters meet the queue at once."""
    agents: list[SimAgent] = []
    threads: list[threading.Thread] = []
    rng = random.Random(seed)

    def agent(name: str, strategy: str) -> SimAgent:
        st = AgentState(name=name, strategy=strategy, contributor=name)
        a = SimAgent(
            url,
            create_agent(url, name),
            st,
            truth,
            seed=rng.getrandbits(32),
            noise=noise,
            sleeper_after=sleeper_after,
            sleeper_garbage=sleeper_garbage,
        )
        agents.append(a)
        return a

    def thread(target: Callable[..., None], *args: Any) -> None:
        threads.append(threading.Thread(target=target, args=(*args, stop), daemon=True))

    for i in range(honest):
        thread(run_agent, agent(f"honest-{i:02d}", "honest"))
    for s in strategies:
        for i in range(per_strategy):
            if s == "copy":
                colluder = agent(f"honest-colluder-{i:02d}", "honest")
                thread(run_copy_pair, agent(f"cheat-copy-{i:02d}", "copy"), colluder)
            else:
                thread(run_agent, agent(f"cheat-{s}-{i:02d}", s))
    rng.shuffle(threads)
    return Population(agents, threads)


def simulate(
    *,
    shards: Path,
    truth: Truth,
    db: str,
    workdir: Path,
    honest: int,
    per_strategy: int,
    strategies: Sequence[str],
    unit_size: int,
    gold_per_unit: int,
    quorum: int,
    trust_after: int,
    sleeper_after: int,
    sleeper_garbage: float,
    lease_seconds: int,
    noise: float,
    seed: int,
    max_seconds: float,
) -> dict[str, Any]:
    """One full run on a fresh database: set up, let everyone work until the pool is verified, judge."""
    log_path = workdir / f"server-{trust_after}.log"
    server = ServerProcess(db, log=log_path, args=["--rate-per-minute", "100000"])
    server.start()
    stop = threading.Event()
    try:
        t0 = time.monotonic()
        task = register_task(server.url, shards, unit_size, gold_per_unit, quorum, trust_after, lease_seconds)
        setup_s = time.monotonic() - t0
        pop = make_population(
            server.url,
            truth,
            honest=honest,
            per_strategy=per_strategy,
            strategies=strategies,
            seed=seed,
            noise=noise,
            sleeper_after=sleeper_after,
            sleeper_garbage=sleeper_garbage,
            stop=stop,
        )
        t1 = time.monotonic()
        for t in pop.threads:
            t.start()
        completed = _wait_verified(server.url, stop, t1 + max_seconds)
        stop.set()
        for t in pop.threads:
            t.join(120)
        run_s = time.monotonic() - t1
    finally:
        stop.set()
        server.stop()
    result = judge(db, truth, pop.agents, task)
    result.update(
        completed=completed,
        setup_s=round(setup_s, 2),
        run_s=round(run_s, 2),
        units=task["n_units"],
        trust_after=trust_after,
    )
    return result


def register_task(
    url: str, shards: Path, unit_size: int, gold: int, quorum: int, trust_after: int, lease_seconds: int
) -> dict[str, Any]:
    h = admin_headers()
    r = httpx.post(
        f"{url}{API}/datasets", json={"name": "pool", "source": str(shards)}, headers=h, timeout=600
    )
    r.raise_for_status()
    body = {
        "name": "sim",
        "dataset": "pool",
        "model": "tiny-synth",
        "unit_size": unit_size,
        "gold_per_unit": gold,
        "quorum": quorum,
        "trust_after": trust_after,
        "lease_seconds": lease_seconds,
    }
    r = httpx.post(f"{url}{API}/tasks", json=body, headers=h, timeout=600)
    r.raise_for_status()
    task: dict[str, Any] = r.json()
    return task


def _wait_verified(url: str, stop: threading.Event, deadline: float) -> bool:
    """True once no unit is open any more (all verified or set aside); False at the deadline."""
    while time.monotonic() < deadline:
        try:
            stats = httpx.get(f"{url}{API}/stats", timeout=30).json()
            by_state = stats["datasets"][0]["units_by_state"]
            if by_state.get("open", 0) == 0:
                return True
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        stop.wait(0.5)
    return False


# ---- judging -----------------------------------------------------------------------------------


def judge(db: str, truth: Truth, agents: list[SimAgent], task: dict[str, Any]) -> dict[str, Any]:
    """Everything the figures need, read from the server's database after the run."""
    import numpy as np
    from sqlalchemy import select

    from vlcurate.server import db as tables
    from vlcurate.server.db import make_engine
    from vlcurate.server.ledger import audit

    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            problems = audit(conn)
            contributors = {
                r.name: r
                for r in conn.execute(
                    select(
                        tables.contributors.c.id,
                        tables.contributors.c.name,
                        tables.contributors.c.paused,
                        tables.contributors.c.pause_reason,
                        tables.contributors.c.points,
                    )
                ).all()
            }
            S = tables.submissions
            subs = conn.execute(select(S.c.id, S.c.contributor_id, S.c.unit_id, S.c.state, S.c.scores)).all()
            L = tables.ledger
            ledger_rows = conn.execute(select(L.c.submission_id, L.c.kind, L.c.points)).all()
            U = tables.units
            units = conn.execute(
                select(
                    U.c.id,
                    U.c.state,
                    U.c.n_items,
                    U.c.first_item,
                    U.c.verified_scores,
                    U.c.verified_status,
                    U.c.single_trusted,
                )
            ).all()
            It, Im = tables.items, tables.item_images
            item_keys = {
                r.id: image_key(bytes(r.data) if r.data is not None else None, r.caption)
                for r in conn.execute(
                    select(It.c.id, It.c.caption, Im.c.data).join(Im, Im.c.item_id == It.c.id, isouter=True)
                ).all()
            }
    finally:
        engine.dispose()

    unit_size = {u.id: u.n_items for u in units}
    net_by_sub: dict[int, float] = {}
    credits_by_sub: dict[int, int] = {}
    reversals = 0
    for r in ledger_rows:
        net_by_sub[r.submission_id] = net_by_sub.get(r.submission_id, 0.0) + float(r.points)
        if r.kind == "credit":
            credits_by_sub[r.submission_id] = credits_by_sub.get(r.submission_id, 0) + 1
        else:
            reversals += 1
    sub_state = {s.id: s.state for s in subs}

    # which stored submissions carried dishonest work, by what their senders know they sent
    dishonest_ids: set[int] = set()
    honest_ids: set[int] = set()
    for a in agents:
        for rec in a.state.records:
            if rec.submission_id is None or rec.replayed:
                continue
            (honest_ids if rec.honest else dishonest_ids).add(rec.submission_id)
    wrongly_paid = sum(net_by_sub.get(i, 0.0) for i in dishonest_ids)
    unvalid_paid = sum(v for sid, v in net_by_sub.items() if sub_state.get(sid) != "valid" and abs(v) > 1e-9)
    double_credited = sum(n > 1 for n in credits_by_sub.values())

    # overhead: pairs scored (hidden checks included) per verified pair
    scored_all = sum(len(s.scores) // 4 for s in subs)
    scored_honest = sum(len(s.scores) // 4 for s in subs if s.id in honest_ids)
    replica_pairs = sum(unit_size[s.unit_id] for s in subs)
    verified_units = [u for u in units if u.state == "verified"]
    pairs_verified = sum(u.n_items for u in verified_units)

    # verified scores against the truth
    max_err = 0.0
    status_mismatch = 0
    wrong_pairs = 0
    tol = float(task.get("tolerance", 0.02))
    for u in verified_units:
        scores = np.frombuffer(u.verified_scores, dtype="<f4")
        status = u.verified_status or {}
        for k, s in enumerate(scores):
            want, want_status = truth.get(item_keys[u.first_item + k])
            if np.isfinite(s):
                if want is None:
                    status_mismatch += 1
                    continue
                err = abs(float(s) - want)
                max_err = max(max_err, err)
                wrong_pairs += err > tol
            elif want is not None or status.get(str(k)) != want_status:
                status_mismatch += 1

    by_strategy: dict[str, dict[str, Any]] = {}
    honest_out: dict[str, Any] = {"agents": 0, "paused": 0, "paused_names": [], "points": 0.0, "errors": []}
    for a in agents:
        st = a.state
        c = contributors[st.contributor]
        if st.strategy == "honest":
            honest_out["agents"] += 1
            honest_out["points"] += float(c.points)
            if c.paused:
                honest_out["paused"] += 1
                honest_out["paused_names"].append(f"{c.name}: {c.pause_reason}")
            honest_out["errors"] += st.errors
            continue
        d = by_strategy.setdefault(
            st.strategy,
            {
                "agents": 0,
                "caught": 0,
                "units_to_catch": [],
                "cheating_units_to_catch": [],
                "submissions_to_catch": [],
                "net_points": 0.0,
                "dishonest_submissions": 0,
                "dishonest_credited_net": 0.0,
                "rejected_4xx": 0,
                "pause_reasons": [],
                "notes": [],
                "errors": [],
            },
        )
        d["agents"] += 1
        d["net_points"] += float(c.points)
        d["rejected_4xx"] += sum(400 <= r.status_code < 500 for r in st.records)
        mine = [r.submission_id for r in st.records if r.submission_id and not r.honest and not r.replayed]
        d["dishonest_submissions"] += len(mine)
        d["dishonest_credited_net"] += sum(net_by_sub.get(i, 0.0) for i in mine)
        if c.paused:
            at = st.at_pause or st.progress()
            d["caught"] += 1
            d["units_to_catch"].append(at["units"])
            d["cheating_units_to_catch"].append(at["cheating_units"])
            d["submissions_to_catch"].append(at["submissions"])
            d["pause_reasons"].append(c.pause_reason)
        if st.notes:
            d["notes"].append(st.notes)
        d["errors"] += st.errors
    for d in by_strategy.values():
        d["caught_share"] = d["caught"] / d["agents"] if d["agents"] else None
        d["max_units_to_catch"] = max(d["units_to_catch"]) if d["units_to_catch"] else None
        cu = d["cheating_units_to_catch"]
        d["max_cheating_units_to_catch"] = max(cu) if cu else None
        d["net_points"] = round(d["net_points"], 3)
        d["dishonest_credited_net"] = round(d["dishonest_credited_net"], 3)
    honest_out["points"] = round(honest_out["points"], 3)

    n_units = len(units)
    return {
        "units_by_state": {s: sum(u.state == s for u in units) for s in ("verified", "open", "inconclusive")},
        "units_single_trusted": sum(bool(u.single_trusted) for u in verified_units),
        "submissions": len(subs),
        "pairs_verified": pairs_verified,
        "pairs_scored_all_agents": scored_all,
        "pairs_scored_honest_agents": scored_honest,
        "overhead": round(scored_all / pairs_verified, 4) if pairs_verified else None,
        "overhead_honest_compute": round(scored_honest / pairs_verified, 4) if pairs_verified else None,
        "replicas_per_verified_pair": round(replica_pairs / pairs_verified, 4) if pairs_verified else None,
        "verified_max_abs_error": round(max_err, 6),
        "verified_pairs_off_by_more_than_tolerance": wrong_pairs,
        "verified_status_mismatches": status_mismatch,
        "all_units_verified": sum(u.state == "verified" for u in units) == n_units,
        "honest": honest_out,
        "strategies": by_strategy,
        "wrongly_paid_points": round(wrongly_paid + unvalid_paid, 6),
        "wrongly_paid_detail": {
            "net_points_on_dishonest_submissions": round(wrongly_paid, 6),
            "net_points_on_submissions_not_valid": round(float(unvalid_paid), 6),
        },
        "cheater_net_points_total": round(sum(d["net_points"] for d in by_strategy.values()), 3),
        "ledger_reversals": reversals,
        "submissions_credited_twice": double_credited,
        "ledger_audit_problems": problems,
    }


# ---- entry points ------------------------------------------------------------------------------


def run(
    *,
    pairs: int = 19_200,
    honest: int = 8,
    cheaters_per_strategy: int = 2,
    strategies: Sequence[str] = STRATEGIES,
    unit_size: int = 64,
    gold_per_unit: int = 8,
    quorum: int = 2,
    trust_after: int = 5,
    sleeper_after: int | None = None,
    sleeper_garbage: float = 0.1,
    lease_seconds: int = 15,
    noise: float = 0.005,
    modes: Sequence[str] = ("adaptive", "no_adaptive"),
    db: str | None = None,
    seed: int = 0,
    max_seconds: float = 900.0,
    workdir: Path | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Run the simulation in each mode and return every figure (see the module docstring)."""
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vlc-sim-", dir=workdir))
    try:
        pool_root = (bench_dir() / "platform-sim" / f"pool-{pairs}-{seed}") if cache else tmp / "pool"
        t = time.monotonic()
        shards = build_pool(pool_root, pairs, seed, shard_size=1000)
        truth = compute_truth(shards, cache=pool_root / "truth.json" if cache else None)
        prep_s = time.monotonic() - t
        log(f"pool of {pairs} pairs and its true scores ready in {prep_s:.1f}s")
        out_modes: dict[str, Any] = {}
        for mode in modes:
            ta = trust_after if mode == "adaptive" else NO_ADAPTIVE_TRUST
            with fresh_database(db, tmp, mode) as url:
                log(f"mode {mode}: trust_after={ta}, {honest} honest, {cheaters_per_strategy} per strategy")
                out_modes[mode] = simulate(
                    shards=shards,
                    truth=truth,
                    db=url,
                    workdir=tmp,
                    honest=honest,
                    per_strategy=cheaters_per_strategy,
                    strategies=strategies,
                    unit_size=unit_size,
                    gold_per_unit=gold_per_unit,
                    quorum=quorum,
                    trust_after=ta,
                    sleeper_after=sleeper_after or trust_after + 3,
                    sleeper_garbage=sleeper_garbage,
                    lease_seconds=lease_seconds,
                    noise=noise,
                    seed=seed,
                    max_seconds=max_seconds,
                )
            m = out_modes[mode]
            log(
                f"mode {mode}: {m['run_s']}s, overhead {m['overhead']}, "
                f"honest paused {m['honest']['paused']}, wrongly paid {m['wrongly_paid_points']}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, Any] = {
        "benchmark": "platform_simulation",
        "config": {
            "pairs": pairs,
            "honest": honest,
            "cheaters_per_strategy": cheaters_per_strategy,
            "strategies": list(strategies),
            "unit_size": unit_size,
            "gold_per_unit": gold_per_unit,
            "quorum": quorum,
            "trust_after": trust_after,
            "lease_seconds": lease_seconds,
            "sleeper_garbage": sleeper_garbage,
            "noise": noise,
            "db": "postgresql" if db and db.startswith("postgres") else "sqlite",
            "seed": seed,
        },
        "truth": {"lo": round(truth.lo, 4), "hi": round(truth.hi, 4), "median": round(truth.median, 4)},
        "prepare_s": round(prep_s, 2),
        "modes": out_modes,
    }
    result["targets"] = targets(out_modes, strategies)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def targets(modes: dict[str, Any], strategies: Sequence[str]) -> dict[str, Any]:
    """The issue's targets, each with whether this run met it (None: not measured)."""
    out: dict[str, Any] = {}
    for name, m in modes.items():
        strat = m["strategies"]
        caught_all = all(strat.get(s, {}).get("caught_share") == 1.0 for s in strategies)
        listed = [s for s in strategies if s in strat and s in ISSUE_STRATEGIES]
        worst = max((strat[s]["max_cheating_units_to_catch"] or 0 for s in listed), default=None)
        out[name] = {
            "every_strategy_caught": caught_all,
            "max_cheating_units_to_catch": worst,
            "caught_within_a_few_units": None if worst is None else worst <= FEW_UNITS,
            "no_honest_paused": m["honest"]["paused"] == 0,
            "no_wrongly_paid_points": abs(m["wrongly_paid_points"]) < 1e-9,
            "ledger_audit_clean": not m["ledger_audit_problems"],
            "no_double_credit": m["submissions_credited_twice"] == 0,
            "verified_match_truth": m["verified_pairs_off_by_more_than_tolerance"] == 0
            and m["verified_status_mismatches"] == 0,
            "all_units_verified": m["all_units_verified"],
        }
        if "sleeper" in strat:  # not in the issue's list: reported, not held to "a few units"
            out[name]["sleeper_max_cheating_units_to_catch"] = strat["sleeper"]["max_cheating_units_to_catch"]
    if "adaptive" in modes:
        ov = modes["adaptive"]["overhead"]
        out["adaptive"]["overhead_under_1_5"] = ov is not None and ov < 1.5
    return out


def summary_line(r: dict[str, Any]) -> str:
    parts = []
    for name, m in r["modes"].items():
        t = r["targets"][name]
        parts.append(
            f"{name}: caught all={t['every_strategy_caught']} "
            f"(<= {t['max_cheating_units_to_catch']} cheating units), "
            f"honest paused={m['honest']['paused']}, wrongly paid={m['wrongly_paid_points']}, "
            f"overhead={m['overhead']}x, max err={m['verified_max_abs_error']}, "
            f"audit={'clean' if t['ledger_audit_clean'] else 'PROBLEMS'}"
        )
    return "platform_simulation: " + "; ".join(parts) + f" ({r['wall_s']}s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=19_200)
    ap.add_argument("--honest", type=int, default=8)
    ap.add_argument("--cheaters-per-strategy", type=int, default=2)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--unit-size", type=int, default=64)
    ap.add_argument("--gold-per-unit", type=int, default=8)
    ap.add_argument("--quorum", type=int, default=2)
    ap.add_argument("--trust-after", type=int, default=5)
    ap.add_argument("--lease-seconds", type=int, default=15)
    ap.add_argument("--noise", type=float, default=0.005)
    ap.add_argument("--modes", default="adaptive,no_adaptive")
    ap.add_argument("--db", default=None, help="sqlite (default) or a PostgreSQL URL (a schema per mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--no-cache", action="store_true", help="rebuild the pool and its truth in a temp dir")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    r = run(
        pairs=a.pairs,
        honest=a.honest,
        cheaters_per_strategy=a.cheaters_per_strategy,
        strategies=[s for s in a.strategies.split(",") if s],
        unit_size=a.unit_size,
        gold_per_unit=a.gold_per_unit,
        quorum=a.quorum,
        trust_after=a.trust_after,
        lease_seconds=a.lease_seconds,
        noise=a.noise,
        modes=[m for m in a.modes.split(",") if m],
        db=a.db,
        seed=a.seed,
        max_seconds=a.max_seconds,
        cache=not a.no_cache,
    )
    r["machine"] = machine_info()
    emit(r, summary_line(r), a.json_out)
    ok = all(all(v is not False for v in t.values()) for t in r["targets"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Honest agents, cheaters and colluding groups against a real platform server: does verification
catch every cheat, spare every honest contributor, pay nothing for junk, keep the answer key clean,
and cost little with adaptive replication?

A real `vlcurate serve` (a subprocess; SQLite, PostgreSQL or both with `--db both`, a fresh
database or schema per run) hands out a synthetic pool in units with hidden checks and a quorum of
2. Simulated agents speak plain HTTP to it from threads, each agent its own contributor and each
contributor from its own source address (127.0.x.y, bound with `httpx.HTTPTransport(local_address=)`;
a group marked "one address" shares one); the server runs with `--link-loopback` where it has that
option, so accounts seen from one address are linked. The figures are measured from what the agents
saw and from the server's database afterwards, never assumed; the script runs unchanged against
older servers (without the option), which is how the README's "before" figures were taken.

Answers: every agent knows the pinned model's true score of every pair (scored once per (image
sha1, caption) with `score_pairs`, exactly as the server scores its own checks). An agent fetches a
lease's image only when the caption alone does not identify the pair; the key is the same either
way, and fetching every image (`--fetch-all-images`, what a real agent does) only costs time.

Single cheaters (each its own contributor):

- honest: answers with the true score plus uniform noise of +-`noise`, emulating bf16 against
  fp32 machines;
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

Colluding groups (pairs and rings of 2-5 accounts; by default 20 accounts, 20% of a population of
100, honest contributors the majority). Every group answers junk (one constant, the same for all
its members, so that their answers agree) except on the items it believes are hidden checks, which
it scores honestly. Members act at once (each holds up to 2 leases, the default cap per agent);
two members on one unit is what makes junk agree. When they land apart, or on a unit that looks
risky (fewer believed checks than `gold_per_unit`), they hand the leases back and lease again
(`WALK_TRIES` times a round); after `LEARN_LIMIT` such rounds a group gambles: it submits what it
gets, without walking away, until a unit is safe again.

- setdiff: two accounts match their two leases' items by image bytes and caption; the items in one
  lease alone are that replica's own checks;
- feed: learns checks from public data: the units it leased (and handed back) show up in
  `/api/v1/feed` once verified, with captions and `/feed/images/{id}` (bytes compared where a caption
  is ambiguous); an item it was served that its unit's feed entries lack was a check, and ids
  missing between a unit's listed neighbours are probed on `/feed/images/{id}` (a 404 where the
  neighbours answer 200: `feed_404`);
- memory (a ring of three): remembers every (image sha1, caption) any member was served and in
  which unit; an item met before in another unit is a check;
- walkaway: like setdiff, but never gambles: it hands leases back for as long as the server lets it;
- hoard: two accounts from one address take as many leases as the server gives (up to `HOARD_MAX`
  each), keep them alive with heartbeats for `HOARD_HOLD_S`, then work the units both hold by set
  difference and hand back the rest;
- poison (a ring of three): like setdiff, with a junk value far from the truth, hoping that
  verified pairs become answers of hidden checks (and honest agents then fail them);
- sleeper_ring (three, registered together): honest until each member is trusted (`/api/v1/me`),
  then junk on everything but the items the ring's shared memory recognises as checks;
- copy_ring (three accounts from one address): one works honestly, the others hand leases back
  until they hold its unit and copy its answers by caption (no work of their own).

Figures, per database and mode (adaptive replication on, `trust_after` as given; `no_adaptive`,
`trust_after` 10,000, on request): per single strategy and per group whether and after how many
units it was stopped (every cheating account paused, or refused by the walk-away limit), honest
contributors paused, points paid for junk after reversals (`junk_paid_points`) and for copied work
(`no_work_paid_points`), junk that became a check answer (`junk_check_answers`: gold rows whose
source is not the server or the operator, or whose answer is off the truth; the gold table is also
read during the run, so answers later withdrawn count), units verified by junk still standing at the
end (more than `JUNK_UNIT_SHARE` of their pairs off the truth), the median number of units before
each group is stopped, the check repeat rate per contributor (check items, from the gold table,
that the contributor had been served before, from what each agent saw), replicas per verified
pair, the verification overhead (pairs scored by all agents, hidden checks included, per verified
pair), how far verified scores are from the truth, and the ledger audit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.platform_live import PG_BASE, ServerProcess, admin_headers, pg_available, pg_schema  # noqa: E402

from _common import bench_dir, emit, log, machine_info  # noqa: E402

STRATEGIES = ("random", "constant", "copy", "partial", "replay", "sleeper")
ISSUE_STRATEGIES = ("random", "constant", "copy", "partial", "replay")  # the issue's list
GROUP_STRATEGIES = ("setdiff", "feed", "memory", "walkaway", "hoard", "poison", "sleeper_ring", "copy_ring")
# accounts per group (2-5); 20 accounts in all, 20% of the default population of 100
DEFAULT_GROUPS: dict[str, int] = {
    "setdiff": 2,
    "feed": 2,
    "memory": 3,
    "walkaway": 2,
    "hoard": 2,
    "poison": 3,
    "sleeper_ring": 3,
    "copy_ring": 3,
}
SHARED_ORIGIN = frozenset({"hoard", "copy_ring"})  # these members connect from one address
API = "/api/v1"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AGENT_VERSION = "vlcurate-sim/1"  # the same for everyone: the version must not give cheaters away
NO_ADAPTIVE_TRUST = 10_000
COPY_TRIES = 30  # leases a copier hands back while looking for its colluder's unit
FEW_UNITS = 5  # "every cheating strategy caught within a few units"
WALK_TRIES = 4  # re-leases per round while a group tries to get two members onto one unit
LEARN_LIMIT = 1  # rounds without a safe unit before a gambling group submits what it gets
HOARD_MAX = 40  # leases one hoarding account tries to hold at once
HOARD_HOLD_S = 3.0  # how long hoarders sit on their leases (heartbeating) before working them
JUNK_UNIT_SHARE = 0.05  # a verified unit with more of its pairs off the truth was verified by junk


# ---- pool and truth ----------------------------------------------------------------------------


def image_key(data: bytes | None, caption: str | None) -> tuple[str, str | None]:
    """What an honest agent can recognise a pair by: its image bytes and its caption."""
    return (hashlib.sha1(data or b"").hexdigest(), caption)


Key = tuple[str, str | None]


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

    @functools.cached_property
    def unique_captions(self) -> dict[str | None, Key]:
        """Captions that name one pair of the pool: the pair's key without fetching its image."""
        seen: dict[str | None, list[Key]] = {}
        for k in self.answers:
            seen.setdefault(k[1], []).append(k)
        return {c: ks[0] for c, ks in seen.items() if len(ks) == 1}


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
    from vlcurate.models.loader import load_scorer
    from vlcurate.score.memory import score_pairs

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


# ---- databases and the server ------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(db: str | None, workdir: Path, tag: str) -> Iterator[str]:
    """A new SQLite file under `workdir`, or a new schema in the PostgreSQL database `db`."""
    if not db or db == "sqlite":
        yield str(workdir / f"{tag}.db")
        return
    with pg_schema(db, f"b_{tag}") as url:
        yield url


def backends(db: str | None) -> list[tuple[str, str | None]]:
    """(name, base) for `--db`: sqlite, postgresql (the test database), both, or a PostgreSQL URL."""
    db = db or "sqlite"
    if db.startswith("postgres") and "://" in db:
        return [("postgresql", db)]
    out: list[tuple[str, str | None]] = []
    if db in ("sqlite", "both"):
        out.append(("sqlite", None))
    if db in ("postgresql", "postgres", "both"):
        out.append(("postgresql", PG_BASE))
    if not out:
        raise ValueError(f"--db must be sqlite, postgresql, both or a PostgreSQL URL, not {db!r}")
    return out


@functools.cache
def serve_options() -> frozenset[str]:
    """The `vlcurate serve` options of the code under test (the simulation runs on old code too)."""
    out = subprocess.run(
        [sys.executable, "-m", "vlcurate.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "COLUMNS": "400", "TERM": "dumb", "NO_COLOR": "1"},
    ).stdout
    return frozenset(w.strip("│ ,[]") for w in out.split() if w.strip("│ ,[]").startswith("--"))


def server_args() -> tuple[list[str], bool]:
    """The server's options for a simulation, and whether it links contributors by loopback address."""
    args = ["--rate-per-minute", "100000"]
    links = "--link-loopback" in serve_options()
    if links:
        args.append("--link-loopback")
    return args, links


# ---- HTTP --------------------------------------------------------------------------------------


def call(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    budget: float = 120.0,
    retry_429: bool = True,
) -> httpx.Response:
    """One request, retried on connection errors, 429 and 5xx (Retry-After honoured) for `budget` s.

    With `retry_429=False` a 429 is answered at once unless it is the request-rate limit: a lease
    cap or the walk-away limit is something the caller decides about.
    """
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
            if r.status_code == 429 and not retry_429 and "rate limit" not in r.text:
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


class Addresses:
    """Source addresses on the loopback network, one per simulated origin: 127.0.0.2, 127.0.0.3, ..."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        i = self.n
        self.n += 1
        return f"127.0.{i // 250}.{i % 250 + 2}"


def detail_of(r: httpx.Response) -> str:
    try:
        d = r.json().get("detail", "")
    except (ValueError, AttributeError):
        return r.text[:200]
    return d if isinstance(d, str) else str(d)[:200]


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
    junk: int = 0  # items answered with junk (not the model's score)
    copied: int = 0  # items answered with another account's answer


@dataclass
class Item:
    """One item of a lease as the agent sees it (plus what it learned by downloading the image)."""

    item_id: str
    caption: str | None
    image_url: str
    key: tuple[str, str | None] | None = None


@dataclass
class Served:
    """One lease as its agent saw it: the keys of its items, when every image was downloaded."""

    lease_id: int
    unit_id: int
    keys: list[Key] | None


@dataclass
class AgentState:
    name: str
    strategy: str
    contributor: str
    address: str = "127.0.0.1"
    group: str | None = None
    leases: int = 0
    paused_seen: bool = False
    refused_seen: str | None = None
    at_pause: dict[str, int] | None = None
    records: list[SubRecord] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    pairs_answered_honestly: int = 0
    images_fetched: int = 0
    max_held: int = 0
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
    """One simulated agent over real HTTP from its own source address; `strategy` says how it answers."""

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
        heartbeat_s: float = 5.0,
        fetch_all: bool = False,
    ) -> None:
        self.sleeper_garbage = sleeper_garbage
        self.fetch_all = fetch_all
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0),
            transport=httpx.HTTPTransport(local_address=state.address),
        )
        self.state = state
        self.truth = truth
        self.rng = random.Random(seed)
        self.noise = noise
        self.sleeper_after = sleeper_after
        self.heartbeat_s = heartbeat_s
        self.history: dict[str | None, float] = {}  # caption -> score this agent sent (for a copier)
        self.old: tuple[int, dict[str, Any], dict[str, Any], list[Item]] | None = None  # replay source
        self.held: dict[int, float] = {}  # lease id -> when it was last renewed (groups)

    # ---- plumbing ----
    def lease(self) -> dict[str, Any] | str | None:
        r = call(self.http, "POST", f"{API}/leases", retry_429=False)
        if r.status_code == 204:
            return None
        if r.status_code == 403:
            self.mark_paused()
            return PAUSED
        if r.status_code == 429:  # a cap or the walk-away limit (a colluder that shopped for units)
            self.state.refused_seen = detail_of(r)
            return None
        if r.status_code != 200:
            self.state.errors.append(f"lease: HTTP {r.status_code} {r.text[:200]}")
            return None
        self.state.leases += 1
        body: dict[str, Any] = r.json()
        return body

    def mark_paused(self) -> None:
        if not self.state.paused_seen:
            self.state.paused_seen = True
            self.state.snapshot_at_pause()

    def lease_ctl(self) -> tuple[str, dict[str, Any] | None]:
        """A lease for a group member: ('ok', lease), ('none', None) when there is no work now,
        ('paused', None), ('capped', None) when it holds as many leases as it may, or ('refused',
        None) when the server will not lease to it for now (the walk-away limit, the quota)."""
        r = call(self.http, "POST", f"{API}/leases", retry_429=False)
        key = f"lease_{r.status_code}"
        self.state.notes[key] = self.state.notes.get(key, 0) + 1
        if r.status_code == 200:
            self.state.leases += 1
            self.held[int(r.json()["lease_id"])] = time.monotonic()
            self.state.max_held = max(self.state.max_held, len(self.held))
            body: dict[str, Any] = r.json()
            return "ok", body
        if r.status_code == 204:
            return "none", None
        if r.status_code == 403:
            self.mark_paused()
            return "paused", None
        if r.status_code == 429:
            detail = detail_of(r)
            if "active lease" in detail and self.held:
                self.state.notes["capped"] = self.state.notes.get("capped", 0) + 1
                return "capped", None
            self.state.refused_seen = detail
            return "refused", None
        self.state.errors.append(f"lease: HTTP {r.status_code} {r.text[:200]}")
        return "none", None

    def release(self, lease: dict[str, Any]) -> None:
        """Hand a lease back (a walk-away)."""
        lid = int(lease["lease_id"])
        r = call(self.http, "DELETE", f"{API}/leases/{lid}", retry_429=False)
        self.held.pop(lid, None)
        self.state.notes["handed_back"] = self.state.notes.get("handed_back", 0) + 1
        if r.status_code not in (200, 204, 409):
            self.state.notes.setdefault("release_errors", []).append(r.status_code)

    def keep_alive(self, force: bool = False) -> None:
        """Heartbeat every held lease not renewed for `heartbeat_s`."""
        now = time.monotonic()
        for lid, at in list(self.held.items()):
            if force or now - at >= self.heartbeat_s:
                r = call(self.http, "POST", f"{API}/leases/{lid}/heartbeat", retry_429=False)
                if r.status_code == 200:
                    self.held[lid] = now
                    self.state.notes["heartbeats"] = self.state.notes.get("heartbeats", 0) + 1
                else:
                    self.held.pop(lid, None)

    def items(
        self, lease: dict[str, Any], fetch: int | None = None, fetch_ambiguous: bool = True
    ) -> list[Item]:
        """The lease's items; the first `fetch` (default all) have their images downloaded.

        A long download renews the lease (heartbeat) as the bundled agent does. What the agent saw
        is kept (`state.served`) for the check repeat rate.
        """
        items = [Item(i["item_id"], i["caption"], i["image_url"]) for i in lease["items"]]
        n = len(items) if fetch is None else fetch
        lid = int(lease["lease_id"])
        started = time.monotonic()
        for it in items[:n]:
            if self.fetch_all is False and it.caption in self.truth.unique_captions:
                it.key = self.truth.unique_captions[it.caption]  # the same key the image would give
                continue
            if not fetch_ambiguous:
                continue
            if time.monotonic() - started > self.heartbeat_s:
                call(self.http, "POST", f"{API}/leases/{lid}/heartbeat", retry_429=False)
                started = time.monotonic()
            r = call(self.http, "GET", it.image_url)
            self.state.images_fetched += 1
            it.key = image_key(r.content if r.status_code == 200 else None, it.caption)
        complete = n >= len(items) and all(it.key is not None for it in items)
        self.state.served.append(
            Served(lid, int(lease["unit_id"]), [it.key for it in items if it.key] if complete else None)
        )
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

    def submit(
        self, lease_id: int, body: dict[str, Any], *, honest: bool, junk: int = 0, copied: int = 0
    ) -> SubRecord:
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
            junk=junk,
            copied=copied,
        )
        self.held.pop(lease_id, None)
        if r.status_code == 403:
            self.mark_paused()
        self.state.records.append(rec)
        return rec

    def submitted(self) -> int:
        return sum(rec.submission_id is not None and not rec.replayed for rec in self.state.records)

    def trusted(self) -> bool:
        me = call(self.http, "GET", f"{API}/me")
        if me.status_code == 403:
            self.mark_paused()
        return me.status_code == 200 and bool(me.json().get("trusted"))

    # ---- strategies ----
    def work(self, lease: dict[str, Any]) -> None:
        """Answer one lease the way this agent's strategy does."""
        s = self.state.strategy
        lid = int(lease["lease_id"])
        n = len(lease["items"])
        if s == "honest":
            items = self.items(lease)
            self.submit(lid, self.body([self.honest_result(it) for it in items]), honest=True)
        elif s == "random":
            items = self.items(lease, fetch=0)
            results = [{"item_id": it.item_id, "score": self.random_score()} for it in items]
            self.submit(lid, self.body(results), honest=False, junk=n)
        elif s == "constant":
            items = self.items(lease, fetch=0)
            results = [{"item_id": it.item_id, "score": self.truth.median} for it in items]
            self.submit(lid, self.body(results), honest=False, junk=n)
        elif s == "partial":
            half = n // 2
            items = self.items(lease, fetch=half)
            results = [self.honest_result(it) for it in items[:half]]
            results += [{"item_id": it.item_id, "score": self.truth.median} for it in items[half:]]
            self.submit(lid, self.body(results), honest=False, junk=n - half)
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
            trusted = self.submitted() >= 2 and self.trusted()
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
        self.submit(lid, self.body(results), honest=False, junk=len(items) - cut)

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
        verbatim = self.submit(
            lid,
            dict(old_body, idempotency_key=f"sim-{uuid.uuid4().hex}"),
            honest=False,
            junk=len(lease["items"]),
        )
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
        reused = self.submit(
            lid, self.body(results, key=old_body["idempotency_key"]), honest=False, junk=len(results)
        )
        notes.setdefault("old_key_relabelled_new_lease", []).append(
            {
                "status": reused.status_code,
                "replayed": reused.replayed,
                "same_submission": reused.submission_id == old_out["submission_id"],
            }
        )
        # 3b) ... under a new key
        self.submit(lid, self.body(results), honest=False, junk=len(results))


def run_agent(agent: SimAgent, stop: threading.Event) -> None:
    """Lease, answer, repeat, until the run stops or this contributor is paused."""
    try:
        while not stop.is_set():
            lease = agent.lease()
            if lease == PAUSED:
                return
            if lease is None:
                stop.wait(1.0 if agent.state.refused_seen else 0.2)
                continue
            assert isinstance(lease, dict)
            agent.work(lease)
    except Exception as exc:  # a crashed thread must show up in the figures, not vanish
        agent.state.errors.append(f"{type(exc).__name__}: {exc}")


def pair_lease(
    copier: SimAgent, colluder: SimAgent
) -> tuple[tuple[str, dict[str, Any] | None], tuple[str, dict[str, Any] | None]]:
    """Lease for both, then hand one of the two leases back and lease again until they hold the
    same unit (at most COPY_TRIES times): what a colluding pair does to get two replicas of one unit.
    The one handed back is the lower unit, which walks it up when units are leased lowest first."""
    notes = copier.state.notes
    a: tuple[str, dict[str, Any] | None] = (
        ("paused", None) if copier.state.paused_seen else copier.lease_ctl()
    )
    b = colluder.lease_ctl()
    for _ in range(COPY_TRIES):
        la, lb = a[1], b[1]
        if la is None or lb is None or la["unit_id"] == lb["unit_id"]:
            break
        if lb["unit_id"] < la["unit_id"]:
            colluder.release(lb)
            b = colluder.lease_ctl()
        else:
            copier.release(la)
            a = copier.lease_ctl()
        notes["pair_hand_backs"] = notes.get("pair_hand_backs", 0) + 1
    return a, b


def run_copy_pair(copier: SimAgent, colluder: SimAgent, stop: threading.Event) -> None:
    """Copier and its honest colluder get two replicas of one unit (`pair_lease`) when they can; the
    copier sends the colluder's answers matched by caption, anything unmatched at random. Once the
    copier is paused or refused, the colluder goes on as a plain honest agent."""
    notes = copier.state.notes
    notes.update(same_unit=0, units=0, copied_items=0, items=0)
    try:
        while not stop.is_set():
            (sa, la), (sb, lb) = pair_lease(copier, colluder)
            if sb == "paused":
                return
            if lb is not None:
                colluder.held.pop(int(lb["lease_id"]), None)
                colluder.work(lb)
            if la is not None:
                notes["units"] += 1
                notes["same_unit"] += lb is not None and lb["unit_id"] == la["unit_id"]
                results = []
                copied = 0
                for it in la["items"]:
                    score = colluder.history.get(it["caption"])
                    notes["items"] += 1
                    if score is None:
                        score = copier.random_score()
                    else:
                        copied += 1
                    results.append({"item_id": it["item_id"], "score": score})
                notes["copied_items"] += copied
                copier.submit(
                    int(la["lease_id"]),
                    copier.body(results),
                    honest=False,
                    junk=len(results) - copied,
                    copied=copied,
                )
            if sa in ("paused", "refused") and la is None:
                run_agent(colluder, stop)
                return
            if la is None and lb is None:
                stop.wait(1.0 if "refused" in (sa, sb) else 0.2)
    except Exception as exc:
        copier.state.errors.append(f"{type(exc).__name__}: {exc}")


# ---- colluding groups --------------------------------------------------------------------------


@dataclass
class Held:
    """A lease a group member holds, with its items once downloaded."""

    member: SimAgent
    lease: dict[str, Any]
    items: list[Item] | None = None

    @property
    def unit_id(self) -> int:
        return int(self.lease["unit_id"])

    @property
    def lease_id(self) -> int:
        return int(self.lease["lease_id"])

    def key_set(self) -> set[Key]:
        assert self.items is not None
        return {it.key for it in self.items if it.key is not None}


class Group:
    """A colluding group of accounts, driven from one thread (its members coordinate perfectly).

    `run` plays the group's strategy until every member is paused or refused (stopped), or the run
    ends. What the group knows about hidden checks comes from its own leases (set difference,
    memory) and from public data (the feed); it answers junk (`junk`, the same for all members, so
    that their answers agree) on every item it does not believe to be a check.
    """

    def __init__(
        self,
        name: str,
        strategy: str,
        members: list[SimAgent],
        *,
        truth: Truth,
        gold_per_unit: int,
        shared_origin: bool,
        seed: int,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.members = members
        self.truth = truth
        self.g = gold_per_unit
        self.shared_origin = shared_origin
        self.rng = random.Random(seed)
        # junk: the median score, or for the poisoners a value far from most true scores
        self.junk = truth.lo + 0.1 * (truth.hi - truth.lo) if strategy == "poison" else truth.median
        self.seen: dict[Key, set[int]] = {}  # memory: key -> units it was served in
        self.known_checks: set[Key] = set()  # feed: keys learned to be checks
        self.feed_pending: dict[int, set[Key]] = {}  # feed: unit -> keys served, until it is in the feed
        self.feed_after = 0
        self.feed_units: dict[int, dict[int, str | None]] = {}  # unit -> {item id: caption} listed
        self.units: set[int] = set()  # units a member submitted to
        self.risky_rounds = 0
        self.stopped_after: int | None = None
        self.stopped_how: str | None = None
        self.notes: dict[str, int] = {
            "rounds": 0,
            "together": 0,
            "safe": 0,
            "risky_handed_back": 0,
            "lone_handed_back": 0,
            "gambles": 0,
            "submissions": 0,
            "junk_submissions": 0,
            "checks_guessed": 0,
            "feed_entries": 0,
            "feed_404": 0,
            "feed_200": 0,
        }
        self.max_held_group = 0
        self.errors: list[str] = []
        # members act at once (leasing, handing back) from a small pool; what they share is locked
        self.lock = threading.RLock()
        self.pool = ThreadPoolExecutor(max_workers=max(2, len(members)), thread_name_prefix=name)

    # ---- members ----
    def out(self, m: SimAgent) -> bool:
        return m.state.paused_seen or m.state.refused_seen is not None

    def active(self) -> list[SimAgent]:
        return [m for m in self.members if not self.out(m)]

    def cheaters(self) -> list[SimAgent]:
        """The members that cheat (a copy ring's worker works honestly)."""
        return self.members[1:] if self.strategy == "copy_ring" else self.members

    def check_stopped(self) -> bool:
        """Stopped: every cheating member paused or refused (`stopped_after` units submitted by then)."""
        cheaters = self.cheaters()
        if self.stopped_after is None and all(self.out(m) for m in cheaters):
            self.stopped_after = len(self.units)
            paused = sum(m.state.paused_seen for m in cheaters)
            self.stopped_how = "paused" if paused == len(cheaters) else ("refused" if not paused else "both")
        return self.stopped_after is not None

    def lease(self, m: SimAgent) -> Held | None:
        """One lease for `m`, or None (no work, capped, paused or refused: `m.state` records which).
        A refused member counts as stopped for the rest of the run, though the walk-away limit
        lifts at the next UTC hour."""
        _, lease = m.lease_ctl()
        return Held(m, lease) if lease is not None else None

    def download(self, h: Held) -> None:
        if h.items is None:
            h.items = h.member.items(h.lease)
            if self.strategy == "feed":
                with self.lock:
                    self.feed_pending.setdefault(h.unit_id, set()).update(h.key_set())

    def release(self, h: Held) -> None:
        h.member.release(h.lease)

    # ---- what the group believes are checks ----
    def remember(self, h: Held) -> None:
        for k in h.key_set():
            self.seen.setdefault(k, set()).add(h.unit_id)

    def memory_checks(self, h: Held) -> set[Key]:
        """Keys of this lease met before in another unit: in a design where a replica's checks come
        from a pool shared by all units, exactly its checks."""
        return {k for k in h.key_set() if self.seen.get(k, set()) - {h.unit_id}}

    def diff_checks(self, together: list[Held]) -> dict[int, set[Key]]:
        """Per lease, the keys no other lease of the same unit has: each replica's own checks."""
        out: dict[int, set[Key]] = {}
        for h in together:
            others: set[Key] = set()
            for o in together:
                if o is not h:
                    others |= o.key_set()
            out[h.lease_id] = h.key_set() - others
        return out

    def learn_from_feed(self, m: SimAgent) -> None:
        """Read the public feed; for each unit a member was served that is now listed, the served
        items the listing lacks were checks. Listed neighbours' images confirm bytes; ids missing
        between listed neighbours are probed on `/feed/images/{id}`."""
        while True:
            r = call(m.http, "GET", f"{API}/feed?after_id={self.feed_after}&limit=500")
            if r.status_code != 200:
                return
            entries = r.json()
            for e in entries:
                self.feed_units.setdefault(int(e["unit_id"]), {})[int(e["item_id"])] = e["caption"]
                self.feed_after = max(self.feed_after, int(e["id"]))
            self.notes["feed_entries"] += len(entries)
            if len(entries) < 500:
                break
        for unit_id in [u for u in self.feed_pending if u in self.feed_units]:
            served = self.feed_pending.pop(unit_id)
            listed = self.feed_units[unit_id]
            by_caption: dict[str | None, list[int]] = {}
            for item_id, caption in listed.items():
                by_caption.setdefault(caption, []).append(item_id)
            served_captions: dict[str | None, int] = {}
            for key in served:
                served_captions[key[1]] = served_captions.get(key[1], 0) + 1
            listed_keys: set[Key] = set()
            for key in served:
                candidates = by_caption.get(key[1], [])
                if len(candidates) == 1 and served_captions[key[1]] == 1:
                    listed_keys.add(key)  # one listed pair with this caption, one served: the same
                    continue
                for item_id in candidates:  # the caption is ambiguous: compare the image bytes
                    img = call(m.http, "GET", f"/feed/images/{item_id}")
                    if img.status_code == 200:
                        self.notes["feed_200"] += 1
                        got = image_key(img.content, key[1])
                        listed_keys.add(got)
                        if got == key:
                            break
            self.known_checks |= served - listed_keys
            ids = sorted(listed)
            for item_id in sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))[:16] if ids else []:
                probe = call(m.http, "GET", f"/feed/images/{item_id}")
                self.notes["feed_404" if probe.status_code == 404 else "feed_200"] += 1

    def believed_checks(self, h: Held, together: list[Held]) -> set[Key]:
        if self.strategy == "feed":
            return h.key_set() & self.known_checks
        if self.strategy in ("memory", "sleeper_ring"):
            return self.memory_checks(h)
        return self.diff_checks(together)[h.lease_id] if len(together) > 1 else set()

    # ---- answering ----
    def submit(self, h: Held, checks: set[Key], *, gamble: bool) -> SubRecord:
        """Honest answers on `checks`, junk on everything else."""
        assert h.items is not None
        m = h.member
        results: list[dict[str, Any]] = []
        junk = 0
        for it in h.items:
            if it.key in checks:
                results.append(m.honest_result(it))
            else:
                junk += 1
                results.append({"item_id": it.item_id, "score": self.junk})
        rec = m.submit(h.lease_id, m.body(results), honest=junk == 0, junk=junk)
        self.notes["submissions"] += 1
        self.notes["junk_submissions"] += junk > 0
        self.notes["gambles"] += gamble
        self.notes["checks_guessed"] += len(checks)
        if rec.submission_id is not None:
            self.units.add(h.unit_id)
        return rec

    def submit_honestly(self, h: Held) -> SubRecord:
        self.download(h)
        assert h.items is not None
        m = h.member
        rec = m.submit(h.lease_id, m.body([m.honest_result(it) for it in h.items]), honest=True)
        self.notes["submissions"] += 1
        if rec.submission_id is not None:
            self.units.add(h.unit_id)
        return rec

    # ---- getting members onto one unit ----
    def gather(
        self,
        members: list[SimAgent],
        want: int,
        anchor: SimAgent | None = None,
        per_member: int = 2,
        tries: int = WALK_TRIES,
    ) -> list[Held]:
        """Every member takes `per_member` leases (2: what the default cap per agent allows); then,
        at most WALK_TRIES times, the leases not on the best-held unit (the anchor's, if given) are
        handed back and leased again one right after the other, until `want` members hold one
        unit; the leases left off that unit are handed back at the end (with `tries=0`, a gamble, the
        leases are kept as they came, one per member). When nobody is together
        every lease goes back (except the anchor's): leasing again in quick succession is what lands
        two accounts on one unit where units are handed out in order."""
        wants = {m: 1 if m is anchor or not tries else per_member for m in members}
        held = self.take(wants)
        if not tries:
            self.max_held_group = max(self.max_held_group, len(held))
            return held
        for _ in range(tries):
            if not held:
                break
            best = self.best_unit(held, anchor)
            if len({h.member.state.name for h in best}) >= want:
                break
            keep = best if (len(best) > 1 or anchor is not None) else []
            movers = [h for h in held if h not in keep]
            if not movers:
                break
            self.hand_back_all(movers)
            held = [h for h in held if h not in movers]
            again: dict[SimAgent, int] = {}
            for h in movers:
                again[h.member] = again.get(h.member, 0) + 1
            held += self.take(again)
        self.max_held_group = max(self.max_held_group, len(held))
        best = self.best_unit(held, anchor)
        self.hand_back_all([h for h in held if h not in best])
        return best

    def take(self, wants: Mapping[SimAgent, int]) -> list[Held]:
        """Leases for several members at once (each member's own leases one after the other)."""

        def one(m: SimAgent) -> list[Held]:
            got: list[Held] = []
            for _ in range(wants[m]):
                h = self.lease(m)
                if h is None:
                    break
                got.append(h)
            return got

        return [h for got in self.pool.map(one, list(wants)) for h in got]

    def hand_back_all(self, held: list[Held], risky: bool = False) -> None:
        by_member: dict[SimAgent, list[Held]] = {}
        for h in held:
            by_member.setdefault(h.member, []).append(h)

        def back(hs: list[Held]) -> None:
            for h in hs:
                self.hand_back(h, risky)

        list(self.pool.map(back, list(by_member.values())))

    @staticmethod
    def best_unit(held: list[Held], anchor: SimAgent | None = None) -> list[Held]:
        by_unit: dict[int, list[Held]] = {}
        for h in held:
            by_unit.setdefault(h.unit_id, []).append(h)
        if anchor is not None:
            mine = [h for h in held if h.member is anchor]
            return by_unit[mine[0].unit_id] if mine else []
        return max(by_unit.values(), key=len, default=[])

    def hand_back(self, h: Held, risky: bool = False) -> None:
        """Walk away from a lease (the feed and memory groups learn from it first, from the pairs its
        captions identify: fetching images too would only slow them down)."""
        if self.strategy in ("feed", "memory") and h.items is None:
            h.items = h.member.items(h.lease, fetch_ambiguous=False)
            with self.lock:
                if self.strategy == "feed":
                    self.feed_pending.setdefault(h.unit_id, set()).update(h.key_set())
                self.remember(h)
        self.release(h)
        with self.lock:
            self.notes["risky_handed_back" if risky else "lone_handed_back"] += 1

    # ---- strategies ----
    def run(self, stop: threading.Event) -> None:
        try:
            if self.strategy == "sleeper_ring":
                self.run_sleeper(stop)
                return
            while not stop.is_set() and self.active():
                if self.check_stopped() and self.strategy != "copy_ring":
                    break
                self.notes["rounds"] += 1
                if self.strategy == "copy_ring":
                    self.round_copy()
                elif self.strategy == "hoard":
                    self.round_hoard(stop)
                else:
                    self.round_junk()
                for m in self.members:
                    m.keep_alive()
        except Exception as exc:  # a crashed group must show up in the figures, not vanish
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for m in self.members:  # leave nothing held behind
                for lid in list(m.held):
                    call(m.http, "DELETE", f"{API}/leases/{lid}", retry_429=False, budget=5)
                    m.held.pop(lid, None)
            self.pool.shutdown(wait=False)

    def idle(self) -> None:
        time.sleep(1.0 if any(m.state.refused_seen for m in self.members) else 0.2)

    def round_junk(self) -> None:
        """setdiff, feed, memory, walkaway, poison: two members on one unit, junk on everything but
        the believed checks. A risky unit (fewer believed checks than `gold_per_unit`) is handed
        back, as are leases that landed alone; after LEARN_LIMIT rounds without a safe unit the
        group gambles (submits what it gets, without walking away, until a unit is safe again),
        except `walkaway`, which walks away for good."""
        active = self.active()
        if self.strategy == "feed":
            self.learn_from_feed(active[0])
        gamble = self.strategy != "walkaway" and self.risky_rounds >= LEARN_LIMIT
        # a gambling round takes what it gets: walking away again would spend the walk-away budget
        held = self.gather(active, want=min(2, len(active)), tries=0 if gamble else WALK_TRIES)
        if not held:
            self.idle()
            return
        together = self.best_unit(held)
        if len(together) < 2 and len(active) > 1:  # nobody landed with anyone
            together = []
        if not together and gamble:  # submit the lone leases as they are
            for h in held:
                self.download(h)
                alone = self.believed_checks(h, [h])
                self.remember(h)
                self.submit(h, alone, gamble=True)
            return  # once walking away has not paid, the group keeps gambling
        self.hand_back_all([h for h in held if h not in together])
        if not together:
            self.risky_rounds += 1
            return
        self.notes["together"] += len(together) > 1
        for h in together:
            self.download(h)
        checks = {h.lease_id: self.believed_checks(h, together) for h in together}
        for h in together:
            self.remember(h)
        safe = all(len(checks[h.lease_id]) >= self.g for h in together)
        if safe or gamble:
            self.notes["safe"] += safe
            for h in together:
                self.submit(h, checks[h.lease_id], gamble=not safe)
            if safe:
                self.risky_rounds = 0
            return
        self.hand_back_all(together, risky=True)
        self.risky_rounds += 1

    def round_hoard(self, stop: threading.Event) -> None:
        """Take every lease the server gives (HOARD_MAX each), hold them with heartbeats, then work
        the units two members hold by set difference and hand the rest back."""
        held = self.take({m: HOARD_MAX for m in self.active()})
        self.max_held_group = max(self.max_held_group, len(held))
        if not held:
            self.idle()
            return
        until = time.monotonic() + HOARD_HOLD_S
        while time.monotonic() < until and not stop.is_set():
            for m in self.members:
                m.keep_alive()
            time.sleep(0.5)
        by_unit: dict[int, list[Held]] = {}
        for h in held:
            by_unit.setdefault(h.unit_id, []).append(h)
        self.hand_back_all([g[0] for g in by_unit.values() if len(g) < 2])
        for group in [g for g in by_unit.values() if len(g) > 1]:
            for m in self.members:
                m.keep_alive()
            self.notes["together"] += 1
            for h in group:
                self.download(h)
            checks = self.diff_checks(group)
            if all(len(checks[h.lease_id]) >= self.g for h in group):
                self.notes["safe"] += 1
                for h in group:
                    self.submit(h, checks[h.lease_id], gamble=False)
            else:
                self.hand_back_all(group, risky=True)

    def run_sleeper(self, stop: threading.Event) -> None:
        """Each member works on its own thread (a sleeper earns trust as fast as any honest agent);
        they share one memory of what they were served."""
        threads = [
            threading.Thread(target=self.sleeper_member, args=(m, stop), daemon=True) for m in self.members
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def sleeper_member(self, m: SimAgent, stop: threading.Event) -> None:
        """Honest until trusted, then junk on everything but the items the ring remembers from
        other units (believed checks)."""
        try:
            while not stop.is_set() and not self.out(m):
                h = self.lease(m)
                if h is None:
                    time.sleep(1.0 if m.state.refused_seen else 0.2)
                    continue
                self.download(h)
                with self.lock:
                    checks = self.memory_checks(h)
                    self.remember(h)
                    self.notes["rounds"] += 1
                switched = m.state.notes.get("switched", False)
                if not switched and m.submitted() >= 1 and m.trusted():
                    m.state.notes.update(switched=True, switched_after_units=m.submitted())
                    switched = True
                with self.lock:
                    if switched:
                        self.submit(h, checks, gamble=False)
                    else:
                        self.submit_honestly(h)
        except Exception as exc:
            self.errors.append(f"{m.state.name}: {type(exc).__name__}: {exc}")

    def round_copy(self) -> None:
        """The first member works honestly; the others hand leases back until they hold its unit,
        then copy its answers by caption (no work of their own, junk where no caption matches);
        after LEARN_LIMIT rounds without landing they submit junk on what they hold."""
        worker = self.members[0]
        active = self.active()
        if worker not in active:
            active = [m for m in active if m is not worker]
            anchor = None
        else:
            anchor = worker
        held = self.gather(active, want=len(active), anchor=anchor)
        if not held:
            self.idle()
            return
        mine = [h for h in held if h.member is worker]
        w = mine[0] if mine else None
        answers: dict[str | None, float] = {}
        if w is not None:
            self.submit_honestly(w)
            answers = dict(worker.history)
        landed = [h for h in held if h is not w]  # gather kept only the worker's unit
        self.notes["together"] += bool(landed)
        for h in landed:
            results, copied = [], 0
            for it in h.lease["items"]:
                score = answers.get(it["caption"])
                if score is None:
                    score = self.junk
                else:
                    copied += 1
                results.append({"item_id": it["item_id"], "score": score})
            rec = h.member.submit(
                h.lease_id, h.member.body(results), honest=False, junk=len(results) - copied, copied=copied
            )
            self.notes["submissions"] += 1
            if rec.submission_id is not None:
                self.units.add(h.unit_id)
        copiers = [m for m in self.active() if m is not worker]
        if landed or not copiers:
            self.risky_rounds = 0
            return
        self.risky_rounds += 1
        if self.risky_rounds > LEARN_LIMIT:  # junk on whatever the copiers get
            for m in copiers:
                g = self.lease(m)
                if g is not None:
                    g.items = [Item(i["item_id"], i["caption"], i["image_url"]) for i in g.lease["items"]]
                    self.submit(g, set(), gamble=True)
            self.risky_rounds = 0


def run_group(group: Group, stop: threading.Event) -> None:
    group.run(stop)


# ---- one simulation ----------------------------------------------------------------------------


@dataclass
class Population:
    agents: list[SimAgent]
    groups: list[Group]
    threads: list[threading.Thread]


def make_population(
    url: str,
    truth: Truth,
    *,
    honest: int,
    per_strategy: int,
    strategies: Sequence[str],
    groups: Mapping[str, int],
    gold_per_unit: int,
    seed: int,
    noise: float,
    sleeper_after: int,
    sleeper_garbage: float,
    heartbeat_s: float,
    stop: threading.Event,
    fetch_all: bool = False,
) -> Population:
    """One contributor per agent, each from its own address (a group in SHARED_ORIGIN shares one);
    threads start together so that cheaters meet the queue at once."""
    agents: list[SimAgent] = []
    group_objs: list[Group] = []
    threads: list[threading.Thread] = []
    rng = random.Random(seed)
    addresses = Addresses()

    def agent(name: str, strategy: str, address: str | None = None, group: str | None = None) -> SimAgent:
        st = AgentState(
            name=name, strategy=strategy, contributor=name, address=address or addresses.next(), group=group
        )
        a = SimAgent(
            url,
            create_agent(url, name),
            st,
            truth,
            seed=rng.getrandbits(32),
            noise=noise,
            sleeper_after=sleeper_after,
            sleeper_garbage=sleeper_garbage,
            heartbeat_s=heartbeat_s,
            fetch_all=fetch_all,
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
    for s, size in groups.items():
        if not size:
            continue
        shared = s in SHARED_ORIGIN
        origin = addresses.next() if shared else None
        name = f"ring-{s}"
        members = [agent(f"{name}-{k}", s, origin, group=name) for k in range(size)]
        g = Group(
            name,
            s,
            members,
            truth=truth,
            gold_per_unit=gold_per_unit,
            shared_origin=shared,
            seed=rng.getrandbits(32),
        )
        group_objs.append(g)
        thread(run_group, g)
    rng.shuffle(threads)
    return Population(agents, group_objs, threads)


class GoldWatch:
    """Reads the server's table of check answers during the run, so that an answer that is later
    withdrawn (a reopened unit's promoted pairs, on a design that has them) still counts."""

    def __init__(self, db: str) -> None:
        from vlcurate.server.db import make_engine

        self.engine = make_engine(db)
        self.rows: set[tuple[int, float | None, str, str]] = set()
        self.reads = 0

    def read(self) -> None:
        from sqlalchemy import select

        from vlcurate.server import db as tables

        G = tables.gold
        try:
            with self.engine.connect() as conn:
                got = conn.execute(select(G.c.item_id, G.c.score, G.c.status, G.c.source)).all()
        except Exception:  # the server is migrating or busy: the next read catches up
            return
        self.reads += 1
        for r in got:
            self.rows.add(
                (int(r.item_id), None if r.score is None else round(float(r.score), 6), r.status, r.source)
            )

    def close(self) -> None:
        self.engine.dispose()


def simulate(
    *,
    shards: Path,
    truth: Truth,
    db: str,
    workdir: Path,
    tag: str,
    honest: int,
    per_strategy: int,
    strategies: Sequence[str],
    groups: Mapping[str, int],
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
    fetch_all: bool = False,
) -> dict[str, Any]:
    """One full run on a fresh database: set up, let everyone work until the pool is verified, judge."""
    log_path = workdir / f"server-{tag}.log"
    args, links = server_args()
    server = ServerProcess(db, log=log_path, args=args)
    server.start()
    stop = threading.Event()
    watch = GoldWatch(db)
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
            groups=groups,
            gold_per_unit=gold_per_unit,
            seed=seed,
            noise=noise,
            sleeper_after=sleeper_after,
            sleeper_garbage=sleeper_garbage,
            heartbeat_s=max(1.0, lease_seconds / 3),
            stop=stop,
            fetch_all=fetch_all,
        )
        t1 = time.monotonic()
        for t in pop.threads:
            t.start()
        completed = _wait_verified(server.url, stop, t1 + max_seconds, watch)
        stop.set()
        for t in pop.threads:
            t.join(120)
        run_s = time.monotonic() - t1
        watch.read()
    finally:
        stop.set()
        server.stop()
        watch.close()
    result = judge(db, truth, pop.agents, pop.groups, task, watch.rows)
    result.update(
        completed=completed,
        setup_s=round(setup_s, 2),
        run_s=round(run_s, 2),
        units=task["n_units"],
        trust_after=trust_after,
        server_links_loopback=links,
        gold_table_reads=watch.reads,
        images_fetched=sum(a.state.images_fetched for a in pop.agents),
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


def _wait_verified(url: str, stop: threading.Event, deadline: float, watch: GoldWatch | None = None) -> bool:
    """True once no unit is open any more (all verified or set aside); False at the deadline."""
    last_read = last_log = time.monotonic()
    while time.monotonic() < deadline:
        if watch is not None and time.monotonic() - last_read > 3.0:
            watch.read()
            last_read = time.monotonic()
        try:
            stats = httpx.get(f"{url}{API}/stats", timeout=30).json()
            by_state = stats["datasets"][0]["units_by_state"]
            if by_state.get("open", 0) == 0:
                return True
            if time.monotonic() - last_log > 15.0:
                log(f"units: {by_state}")
                last_log = time.monotonic()
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        stop.wait(0.5)
    return False


# ---- judging -----------------------------------------------------------------------------------


def judge(
    db: str,
    truth: Truth,
    agents: list[SimAgent],
    groups: list[Group],
    task: dict[str, Any],
    gold_seen: set[tuple[int, float | None, str, str]] | None = None,
) -> dict[str, Any]:
    """Everything the figures need, read from the server's database after the run."""
    import numpy as np
    from sqlalchemy import inspect, select

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
            G = tables.gold
            gold_rows = {
                (int(r.item_id), None if r.score is None else round(float(r.score), 6), r.status, r.source)
                for r in conn.execute(select(G.c.item_id, G.c.score, G.c.status, G.c.source)).all()
            }
            linked_pairs = None
            if inspect(conn).has_table("contributor_origins"):
                origins: dict[str, list[int]] = {}
                for cid, origin in conn.execute(
                    select(
                        tables.metadata.tables["contributor_origins"].c.contributor_id,
                        tables.metadata.tables["contributor_origins"].c.origin,
                    )
                ).all():
                    origins.setdefault(origin, []).append(int(cid))
                linked_pairs = {
                    frozenset((a, b)) for ids in origins.values() for a in ids for b in ids if a < b
                }
    finally:
        engine.dispose()

    unit_size = {u.id: u.n_items for u in units}
    net_by_sub: dict[int, float] = {}
    standing_by_sub: dict[int, int] = {}  # credits not reversed (reversed and paid again is fine)
    reversals = 0
    for r in ledger_rows:
        net_by_sub[r.submission_id] = net_by_sub.get(r.submission_id, 0.0) + float(r.points)
        standing_by_sub[r.submission_id] = standing_by_sub.get(r.submission_id, 0) + (
            1 if r.kind == "credit" else -1
        )
        reversals += r.kind != "credit"
    sub_state = {s.id: s.state for s in subs}

    # which stored submissions carried dishonest work, by what their senders know they sent
    dishonest_ids: set[int] = set()
    honest_ids: set[int] = set()
    junk_ids: set[int] = set()
    copied_ids: set[int] = set()
    for a in agents:
        for rec in a.state.records:
            if rec.submission_id is None or rec.replayed:
                continue
            (honest_ids if rec.honest else dishonest_ids).add(rec.submission_id)
            if rec.junk:
                junk_ids.add(rec.submission_id)
            if rec.copied:
                copied_ids.add(rec.submission_id)
    wrongly_paid = sum(net_by_sub.get(i, 0.0) for i in dishonest_ids)
    unvalid_paid = sum(v for sid, v in net_by_sub.items() if sub_state.get(sid) != "valid" and abs(v) > 1e-9)
    double_credited = sum(n > 1 for n in standing_by_sub.values())
    junk_paid = sum(net_by_sub.get(i, 0.0) for i in junk_ids)
    no_work_paid = sum(net_by_sub.get(i, 0.0) for i in copied_ids)

    # overhead: pairs scored (hidden checks included) per verified pair
    scored_all = sum(len(s.scores) // 4 for s in subs)
    scored_honest = sum(len(s.scores) // 4 for s in subs if s.id in honest_ids)
    replica_pairs = sum(unit_size[s.unit_id] for s in subs)
    verified_units = [u for u in units if u.state == "verified"]
    pairs_verified = sum(u.n_items for u in verified_units)

    # verified scores against the truth, and units that junk verified
    max_err = 0.0
    status_mismatch = 0
    wrong_pairs = 0
    junk_units: list[dict[str, Any]] = []
    units_with_a_pair_off: list[dict[str, Any]] = []
    name_of = {int(c.id): name for name, c in contributors.items()}
    subs_by_unit: dict[int, list[Any]] = {}
    for sub in subs:
        if sub.state == "valid":
            subs_by_unit.setdefault(sub.unit_id, []).append(sub)
    tol = float(task.get("tolerance", 0.02))
    for u in verified_units:
        scores = np.frombuffer(u.verified_scores, dtype="<f4")
        status = u.verified_status or {}
        off = 0
        for k, s in enumerate(scores):
            want, want_status = truth.get(item_keys[u.first_item + k])
            if np.isfinite(s):
                if want is None:
                    status_mismatch += 1
                    off += 1
                    continue
                err = abs(float(s) - want)
                max_err = max(max_err, err)
                wrong_pairs += err > tol
                off += err > tol
            elif want is not None or status.get(str(k)) != want_status:
                status_mismatch += 1
                off += 1
        if off:
            entry = {
                "unit_id": u.id,
                "pairs_off": off,
                "single_trusted": bool(u.single_trusted),
                "valid_from": sorted(name_of.get(s.contributor_id, "?") for s in subs_by_unit.get(u.id, [])),
            }
            (junk_units if off > JUNK_UNIT_SHARE * len(scores) else units_with_a_pair_off).append(entry)

    # the answer key: every check answer seen, during the run or after it
    trusted_sources = {"server", "operator"}
    all_gold = set(gold_rows) | set(gold_seen or ())
    junk_answers: set[int] = set()
    crowd_answers: set[int] = set()
    for item_id, score, status, source in all_gold:
        if source not in trusted_sources:
            crowd_answers.add(item_id)
        want, want_status = truth.get(item_keys.get(item_id, ("", None)))
        if score is None:
            if status == "ok" or (want is not None and want_status == "ok"):
                junk_answers.add(item_id)
        elif want is None or abs(score - want) > tol:
            junk_answers.add(item_id)
    gold_keys = {item_keys[i] for i, *_ in all_gold if i in item_keys}

    by_strategy: dict[str, dict[str, Any]] = {}
    honest_out: dict[str, Any] = {"agents": 0, "paused": 0, "paused_names": [], "points": 0.0, "errors": []}
    for a in agents:
        st = a.state
        c = contributors[st.contributor]
        if st.group is not None:
            continue
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
                "refused": 0,
                "stopped": 0,
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
        d["refused"] += st.refused_seen is not None
        d["stopped"] += bool(c.paused) or st.refused_seen is not None
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
        d["stopped_share"] = d["stopped"] / d["agents"] if d["agents"] else None
        d["max_units_to_catch"] = max(d["units_to_catch"]) if d["units_to_catch"] else None
        cu = d["cheating_units_to_catch"]
        d["max_cheating_units_to_catch"] = max(cu) if cu else None
        d["net_points"] = round(d["net_points"], 3)
        d["dishonest_credited_net"] = round(d["dishonest_credited_net"], 3)
    honest_out["points"] = round(honest_out["points"], 3)

    groups_out = _judge_groups(groups, contributors, net_by_sub, linked_pairs)
    stopped = [g["stopped_after_units"] for g in groups_out.values() if g["stopped_after_units"] is not None]

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
        "junk_verified_units_standing": len(junk_units),
        "junk_verified_units": junk_units[:20],
        "verified_units_with_pairs_off": units_with_a_pair_off[:20],
        "all_units_verified": sum(u.state == "verified" for u in units) == n_units,
        "honest": honest_out,
        "strategies": by_strategy,
        "groups": groups_out,
        "group_accounts": sum(len(g.members) for g in groups),
        "population": len(agents),
        "median_units_before_group_stopped": statistics.median(stopped) if stopped else None,
        "groups_not_stopped": sorted(n for n, g in groups_out.items() if g["stopped_after_units"] is None),
        "junk_paid_points": round(junk_paid, 6),
        "no_work_paid_points": round(no_work_paid, 6),
        "wrongly_paid_points": round(wrongly_paid + unvalid_paid, 6),
        "wrongly_paid_detail": {
            "net_points_on_dishonest_submissions": round(wrongly_paid, 6),
            "net_points_on_submissions_not_valid": round(float(unvalid_paid), 6),
            "net_points_on_submissions_with_junk": round(junk_paid, 6),
            "net_points_on_copied_submissions": round(no_work_paid, 6),
        },
        "check_answers": {
            "distinct_items_ever": len({r[0] for r in all_gold}),
            "by_source": {
                s: len({r[0] for r in all_gold if r[3] == s}) for s in sorted({r[3] for r in all_gold})
            },
            "junk_answers": len(junk_answers),
            "answers_not_from_server_or_operator": len(crowd_answers),
        },
        "junk_check_answers": len(junk_answers | crowd_answers),
        "check_repeat_rate": repeat_rates(agents, gold_keys),
        "cheater_net_points_total": round(
            sum(d["net_points"] for d in by_strategy.values())
            + sum(g["net_points"] for g in groups_out.values()),
            3,
        ),
        "ledger_reversals": reversals,
        "submissions_credited_twice": double_credited,
        "ledger_audit_problems": problems,
    }


def _judge_groups(
    groups: list[Group],
    contributors: dict[str, Any],
    net_by_sub: dict[int, float],
    linked_pairs: set[frozenset[int]] | None,
) -> dict[str, Any]:
    """Per group: what it tried, what it got paid, whether and after how many units it was stopped."""
    out: dict[str, Any] = {}
    for g in groups:
        rows = [contributors[m.state.contributor] for m in g.members]
        ids = [int(r.id) for r in rows]
        junk_subs = [
            r.submission_id for m in g.members for r in m.state.records if r.submission_id and r.junk
        ]
        copied_subs = [
            r.submission_id for m in g.members for r in m.state.records if r.submission_id and r.copied
        ]
        g.check_stopped()
        stopped_after = g.stopped_after
        how = g.stopped_how
        cheat_rows = [contributors[m.state.contributor] for m in g.cheaters()]
        if stopped_after is None and all(r.paused for r in cheat_rows):  # paused, not noticed yet
            stopped_after, how = len(g.units), "paused"
        out[g.name] = {
            "strategy": g.strategy,
            "accounts": len(g.members),
            "shared_origin": g.shared_origin,
            "linked_pairs_seen_by_server": None
            if linked_pairs is None
            else sum(frozenset((a, b)) in linked_pairs for i, a in enumerate(ids) for b in ids[i + 1 :]),
            "units_submitted": len(g.units),
            "stopped_after_units": stopped_after,
            "stopped_how": how,
            "accounts_paused": sum(bool(r.paused) for r in rows),
            "accounts_refused": sum(m.state.refused_seen is not None for m in g.members),
            "refusals": sorted({m.state.refused_seen for m in g.members if m.state.refused_seen}),
            "pause_reasons": sorted({r.pause_reason for r in rows if r.pause_reason}),
            "net_points": round(sum(float(r.points) for r in rows), 3),
            "junk_submissions_stored": len(junk_subs),
            "junk_paid_points": round(sum(net_by_sub.get(i, 0.0) for i in junk_subs), 3),
            "copied_submissions_stored": len(copied_subs),
            "no_work_paid_points": round(sum(net_by_sub.get(i, 0.0) for i in copied_subs), 3),
            "max_leases_held_by_one_account": max(m.state.max_held for m in g.members),
            "max_leases_held_by_group": g.max_held_group,
            "submission_statuses": dict(
                sorted(Counter(str(r.status_code) for m in g.members for r in m.state.records).items())
            ),
            "hand_backs": sum(m.state.notes.get("handed_back", 0) for m in g.members),
            "hand_backs_per_account": [m.state.notes.get("handed_back", 0) for m in g.members],
            "lease_answers": {
                k[len("lease_") :]: sum(m.state.notes.get(k, 0) for m in g.members)
                for k in sorted({k for m in g.members for k in m.state.notes if k.startswith("lease_")})
            },
            "notes": g.notes,
            "errors": g.errors + [e for m in g.members for e in m.state.errors],
        }
    return out


def repeat_rates(agents: list[SimAgent], gold_keys: set[Key]) -> dict[str, Any]:
    """Per contributor: of the check items it was served (items with an answer in the gold table),
    the share it had been served before, counted over the leases whose every image it downloaded."""
    per: dict[str, dict[str, Any]] = {}
    for a in agents:
        before: set[Key] = set()
        checks = repeats = 0
        for s in a.state.served:
            if s.keys is None:
                continue
            keys = set(s.keys)
            for k in keys & gold_keys:
                checks += 1
                repeats += k in before
            before |= keys
        if checks:
            per[a.state.name] = {
                "strategy": a.state.strategy,
                "honest": a.state.strategy == "honest" and a.state.group is None,
                "checks_served": checks,
                "repeats": repeats,
                "rate": round(repeats / checks, 4),
            }

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            return {"contributors": 0}
        rates = [r["rate"] for r in rows]
        return {
            "contributors": len(rows),
            "mean": round(statistics.fmean(rates), 4),
            "median": round(statistics.median(rates), 4),
            "max": max(rates),
            "pooled": round(sum(r["repeats"] for r in rows) / sum(r["checks_served"] for r in rows), 4),
        }

    worst = sorted(per.items(), key=lambda kv: -kv[1]["rate"])[:5]
    return {
        "honest": summary([r for r in per.values() if r["honest"]]),
        "all": summary(list(per.values())),
        "highest": {name: r for name, r in worst},
    }


# ---- entry points ------------------------------------------------------------------------------


def parse_groups(spec: str | None) -> dict[str, int]:
    """`setdiff:2,memory:3` (or `none`, or empty for the defaults) -> {strategy: accounts}."""
    if spec is None or spec == "":
        return dict(DEFAULT_GROUPS)
    if spec == "none":
        return {}
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, n = part.partition(":")
        out[name.strip()] = int(n) if n else DEFAULT_GROUPS.get(name.strip(), 2)
    return out


def run(
    *,
    pairs: int = 25_600,
    honest: int = 66,
    cheaters_per_strategy: int = 2,
    strategies: Sequence[str] = STRATEGIES,
    groups: Mapping[str, int] | None = None,
    unit_size: int = 32,
    gold_per_unit: int = 4,
    quorum: int = 2,
    trust_after: int = 3,
    sleeper_after: int | None = None,
    sleeper_garbage: float = 0.1,
    lease_seconds: int = 15,
    noise: float = 0.005,
    modes: Sequence[str] = ("adaptive",),
    db: str | None = "sqlite",
    seed: int = 0,
    max_seconds: float = 900.0,
    workdir: Path | None = None,
    cache: bool = False,
    fetch_all: bool = False,
) -> dict[str, Any]:
    """Run the simulation on each database and in each mode; return every figure (module docstring)."""
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    groups = dict(DEFAULT_GROUPS if groups is None else groups)
    unknown = set(groups) - set(GROUP_STRATEGIES)
    if unknown:
        raise ValueError(f"unknown groups {sorted(unknown)}; choose from {GROUP_STRATEGIES}")
    if any(not 0 <= n <= 5 or n == 1 for n in groups.values()):
        raise ValueError(f"a group has 2 to 5 accounts (0 leaves it out): {groups}")
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vlc-sim-", dir=workdir))
    out_runs: dict[str, Any] = {}
    try:
        pool_root = (bench_dir() / "platform-sim" / f"pool-{pairs}-{seed}") if cache else tmp / "pool"
        t = time.monotonic()
        shards = build_pool(pool_root, pairs, seed, shard_size=1000)
        truth = compute_truth(shards, cache=pool_root / "truth.json" if cache else None)
        prep_s = time.monotonic() - t
        log(f"pool of {pairs} pairs and its true scores ready in {prep_s:.1f}s")
        for backend, base in backends(db):
            if backend == "postgresql" and base == PG_BASE and not pg_available():
                out_runs[backend] = {"skipped": f"PostgreSQL not reachable at {PG_BASE}"}
                continue
            out_runs[backend] = {}
            for mode in modes:
                ta = trust_after if mode == "adaptive" else NO_ADAPTIVE_TRUST
                with fresh_database(base, tmp, f"{backend}_{mode}") as url:
                    log(
                        f"{backend}, mode {mode}: trust_after={ta}, {honest} honest, "
                        f"{cheaters_per_strategy} per strategy, groups {groups}"
                    )
                    out_runs[backend][mode] = m = simulate(
                        shards=shards,
                        truth=truth,
                        db=url,
                        workdir=tmp,
                        tag=f"{backend}-{mode}",
                        honest=honest,
                        per_strategy=cheaters_per_strategy,
                        strategies=strategies,
                        groups=groups,
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
                        fetch_all=fetch_all,
                    )
                log(
                    f"{backend}, mode {mode}: {m['run_s']}s, "
                    f"replicas/pair {m['replicas_per_verified_pair']}, "
                    f"honest paused {m['honest']['paused']}, junk paid {m['junk_paid_points']}, "
                    f"junk check answers {m['junk_check_answers']}, "
                    f"junk units {m['junk_verified_units_standing']}"
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
            "groups": groups,
            "shared_origin_groups": sorted(SHARED_ORIGIN & set(groups)),
            "unit_size": unit_size,
            "gold_per_unit": gold_per_unit,
            "quorum": quorum,
            "trust_after": trust_after,
            "lease_seconds": lease_seconds,
            "sleeper_garbage": sleeper_garbage,
            "noise": noise,
            "modes": list(modes),
            "fetch_all_images": fetch_all,
            "db": [b for b, _ in backends(db)],
            "seed": seed,
        },
        "truth": {"lo": round(truth.lo, 4), "hi": round(truth.hi, 4), "median": round(truth.median, 4)},
        "prepare_s": round(prep_s, 2),
        "runs": out_runs,
    }
    result["targets"] = {
        backend: targets(modes_out, strategies)
        for backend, modes_out in out_runs.items()
        if "skipped" not in modes_out
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def targets(modes: dict[str, Any], strategies: Sequence[str]) -> dict[str, Any]:
    """The issues' targets, each with whether this run met it (None: not measured)."""
    out: dict[str, Any] = {}
    for name, m in modes.items():
        strat = m["strategies"]
        stopped_all = all(strat.get(s, {}).get("stopped_share") == 1.0 for s in strategies)
        listed = [s for s in strategies if s in strat and s in ISSUE_STRATEGIES]
        worst = max((strat[s]["max_cheating_units_to_catch"] or 0 for s in listed), default=None)
        out[name] = {
            "every_strategy_paused_or_refused": stopped_all,
            "strategies_not_paused": sorted(
                s for s in strategies if strat.get(s, {}).get("caught_share") != 1.0
            ),
            "max_cheating_units_to_catch": worst,
            "caught_within_a_few_units": None if worst is None else worst <= FEW_UNITS,
            "no_honest_paused": m["honest"]["paused"] == 0,
            "no_wrongly_paid_points": abs(m["wrongly_paid_points"]) < 1e-9,
            "no_junk_paid_points": abs(m["junk_paid_points"]) < 1e-9,
            "no_points_for_copied_work": abs(m["no_work_paid_points"]) < 1e-9,
            "no_junk_check_answers": m["junk_check_answers"] == 0,
            "no_junk_verified_units_standing": m["junk_verified_units_standing"] == 0,
            "groups_not_stopped": m["groups_not_stopped"],
            "ledger_audit_clean": not m["ledger_audit_problems"],
            "no_double_credit": m["submissions_credited_twice"] == 0,
            "verified_match_truth": m["verified_pairs_off_by_more_than_tolerance"] == 0
            and m["verified_status_mismatches"] == 0,
            "all_units_verified": m["all_units_verified"],
        }
        if "sleeper" in strat:  # not in the issue's list: reported, not held to "a few units"
            out[name]["sleeper_max_cheating_units_to_catch"] = strat["sleeper"]["max_cheating_units_to_catch"]
        if name == "adaptive":
            rp = m["replicas_per_verified_pair"]
            out[name]["replicas_per_verified_pair_at_most_1_6"] = rp is not None and rp <= 1.6
    return out


def summary_line(r: dict[str, Any]) -> str:
    parts = []
    for backend, modes in r["runs"].items():
        if "skipped" in modes:
            parts.append(f"{backend}: skipped")
            continue
        for name, m in modes.items():
            t = r["targets"][backend][name]
            parts.append(
                f"{backend}/{name}: every cheater stopped={t['every_strategy_paused_or_refused']} "
                f"(<= {t['max_cheating_units_to_catch']} cheating units), "
                f"groups stopped after median {m['median_units_before_group_stopped']} units "
                f"(not stopped: {m['groups_not_stopped'] or 'none'}), "
                f"honest paused={m['honest']['paused']}, junk paid={m['junk_paid_points']}, "
                f"junk check answers={m['junk_check_answers']}, "
                f"junk units standing={m['junk_verified_units_standing']}, "
                f"check repeat rate={m['check_repeat_rate']['all'].get('pooled')}, "
                f"replicas/pair={m['replicas_per_verified_pair']}, "
                f"audit={'clean' if t['ledger_audit_clean'] else 'PROBLEMS'}"
            )
    return "platform_simulation: " + "; ".join(parts) + f" ({r['wall_s']}s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=25_600)
    ap.add_argument("--honest", type=int, default=66)
    ap.add_argument("--cheaters-per-strategy", type=int, default=2)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument(
        "--groups",
        default="",
        help="colluding groups as strategy:accounts,... (default: "
        + ",".join(f"{k}:{v}" for k, v in DEFAULT_GROUPS.items())
        + "); 'none' for none",
    )
    ap.add_argument("--unit-size", type=int, default=32)
    ap.add_argument("--gold-per-unit", type=int, default=4)
    ap.add_argument("--quorum", type=int, default=2)
    ap.add_argument("--trust-after", type=int, default=3)
    ap.add_argument("--lease-seconds", type=int, default=15)
    ap.add_argument("--noise", type=float, default=0.005)
    ap.add_argument("--modes", default="adaptive", help="adaptive, no_adaptive, or both comma-separated")
    ap.add_argument("--db", default="both", help="sqlite, postgresql, both, or a PostgreSQL URL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--no-cache", action="store_true", help="rebuild the pool and its truth in a temp dir")
    ap.add_argument(
        "--fetch-all-images",
        action="store_true",
        help="agents fetch every image (as real agents do); by default an image is fetched only when "
        "its caption does not identify the pair, which gives the same answers in less time",
    )
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    r = run(
        pairs=a.pairs,
        honest=a.honest,
        cheaters_per_strategy=a.cheaters_per_strategy,
        strategies=[s for s in a.strategies.split(",") if s],
        groups=parse_groups(a.groups),
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
        fetch_all=a.fetch_all_images,
    )
    r["machine"] = machine_info()
    emit(r, summary_line(r), a.json_out)
    ok = all(
        all(v is not False for v in t.values()) for modes in r["targets"].values() for t in modes.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

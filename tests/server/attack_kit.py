"""What the attack tests (`test_attack_*.py`) share: a real platform server on a real port, accounts
that each call from their own loopback address (so the server can tell origins apart), and the
hostile contributors' moves of issue 13 written as plain HTTP, the way an attacker would script them.

An attacker sees only what the API gives: leases (opaque item ids, captions, image bytes), the
public task list, feed and feed images. The tests then look at the server's database to judge the
outcome (who was paid, which units stand verified, what the hidden-check table holds).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import time
import uuid
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from tests.platform_live import HonestAgent, InThreadServer, admin_headers, setup_task

from vlcurate.server import db
from vlcurate.server.ledger import audit

# What the colluders answer for every pair they do not bother to score: far from where the pinned
# tiny-synth model puts real pairs (about 0.8-0.95 for true captions, below 0 for wrong ones), so a
# hidden check it lands on fails.
JUNK = 0.25

_POOLS: dict[int, Path] = {}


def pool(factory: pytest.TempPathFactory, n: int) -> Path:
    """A synthetic pool of `n` pairs (30% corrupted captions) as shards; one per size per session."""
    from vlcurate.synth.pool import write_pool

    if n not in _POOLS:
        out = factory.mktemp(f"attack-pool-{n}")
        write_pool(out, n, corrupt_fraction=0.3, seed=13, shard_size=48)
        _POOLS[n] = out / "shards"
    return _POOLS[n]


Key = tuple[str, str | None]  # (sha1 of the image bytes, caption): what identifies a pair to an attacker


class Agent(HonestAgent):
    """An agent token whose requests all leave from `host` (a 127.0.0.x address of its own)."""

    def __init__(self, url: str, token: str, host: str, agent_id: int) -> None:
        super().__init__(url, token)
        self.http.close()
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            transport=httpx.HTTPTransport(local_address=host),
        )
        self.host = host
        self.agent_id = agent_id
        self._images: dict[int, list[bytes]] = {}

    def ask(self) -> httpx.Response:
        """POST /api/v1/leases as is: 200 (a lease), 204 (no work), 403 (paused), 429 (a cap)."""
        return self.http.post("/api/v1/leases")

    def release(self, lease: dict[str, Any]) -> httpx.Response:
        return self.http.delete(f"/api/v1/leases/{lease['lease_id']}")

    def images(self, lease: dict[str, Any]) -> list[bytes]:
        got = self._images.get(lease["lease_id"])
        if got is None:
            got = []
            for it in lease["items"]:
                r = self.http.get(it["image_url"])
                assert r.status_code == 200, f"image of a held lease: {r.status_code} {r.text[:200]}"
                got.append(r.content)
            self._images[lease["lease_id"]] = got
        return got

    def keys(self, lease: dict[str, Any]) -> list[Key]:
        """Each item of the lease as the attacker matches it across leases: image bytes and caption."""
        return [
            (hashlib.sha1(img).hexdigest(), it["caption"])
            for img, it in zip(self.images(lease), lease["items"], strict=True)
        ]

    def answers(self, lease: dict[str, Any]) -> list[dict[str, Any]]:
        return self.respond(lease, honest={it["item_id"] for it in lease["items"]})

    def respond(
        self, lease: dict[str, Any], *, honest: Set[str] = frozenset(), junk: float = JUNK
    ) -> list[dict[str, Any]]:
        """Score the items in `honest` with the pinned model; answer `junk` for all the others."""
        from vlcurate.score.memory import score_pairs

        picked = [k for k, it in enumerate(lease["items"]) if it["item_id"] in honest]
        scored = dict(
            zip(
                picked,
                score_pairs(
                    self.scorer(),
                    [self.images(lease)[k] for k in picked],
                    [lease["items"][k]["caption"] for k in picked],
                ),
                strict=True,
            )
        )
        out = []
        for k, it in enumerate(lease["items"]):
            p = scored.get(k)
            if p is None:
                out.append({"item_id": it["item_id"], "score": junk, "status": "ok"})
            else:
                out.append({"item_id": it["item_id"], "score": p.score, "status": p.status})
        return out

    def send(self, lease: dict[str, Any], results: list[dict[str, Any]]) -> httpx.Response:
        body = {
            "idempotency_key": f"sub-{lease['lease_id']}-{uuid.uuid4().hex[:8]}",
            "model_fingerprint": lease["task"]["model_fingerprint"],
            "results": results,
        }
        return self.http.post(f"/api/v1/leases/{lease['lease_id']}/submit", json=body)


@dataclass
class Account:
    """One contributor with one or more agent tokens, all calling from `host`."""

    name: str
    contributor_id: int
    host: str
    agents: list[Agent]

    @property
    def agent(self) -> Agent:
        return self.agents[0]

    def me(self) -> dict[str, Any]:
        r = self.agent.http.get("/api/v1/me")
        r.raise_for_status()
        return dict(r.json())

    def lease_many(self, per_agent: int = 2) -> tuple[list[tuple[Agent, dict[str, Any]]], list[int]]:
        """Every agent asks for `per_agent` leases (stopping at the first refusal); returns the leases
        and the status codes of the refusals."""
        got: list[tuple[Agent, dict[str, Any]]] = []
        refused: list[int] = []
        for a in self.agents:
            for _ in range(per_agent):
                r = a.ask()
                if r.status_code != 200:
                    refused.append(r.status_code)
                    break
                got.append((a, r.json()))
        return got, refused


class World:
    """A running platform (real uvicorn, real port) with one task and the accounts made on it."""

    def __init__(self, server: InThreadServer) -> None:
        self.server = server
        self.url = server.url
        self.engine = server.engine
        self._hosts = itertools.count(2)
        self.task: dict[str, Any] = {}

    def make_task(self, pool_dir: Path, **opts: Any) -> dict[str, Any]:
        self.task, _ = setup_task(self.url, str(pool_dir), contributors=0, **opts)
        return self.task

    def new_host(self) -> str:
        return f"127.0.0.{next(self._hosts)}"

    def account(self, name: str, *, agents: int = 1, host: str | None = None) -> Account:
        host = host or self.new_host()
        made = []
        for i in range(agents):
            r = httpx.post(
                f"{self.url}/api/v1/agents",
                json={"contributor": name, "name": f"{name}-{i}"},
                headers=admin_headers(),
                timeout=30,
            )
            r.raise_for_status()
            made.append(r.json())
        return Account(
            name,
            made[0]["contributor_id"],
            host,
            [Agent(self.url, m["token"], host, m["agent_id"]) for m in made],
        )

    def pause(self, account: Account, reason: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/api/v1/contributors/{account.contributor_id}/pause",
            json={"reason": reason},
            headers=admin_headers(),
            timeout=30,
        )

    # ---- what the database says afterwards ---------------------------------------------------

    def audit(self) -> list[str]:
        with self.engine.connect() as conn:
            return audit(conn)

    def points(self, account: Account) -> float:
        """The contributor's balance, checked against its ledger entries (credits less reversals)."""
        C, L = db.contributors, db.ledger
        with self.engine.connect() as conn:
            balance = conn.execute(select(C.c.points).where(C.c.id == account.contributor_id)).scalar_one()
            net = conn.execute(
                select(func.coalesce(func.sum(L.c.points), 0.0)).where(
                    L.c.contributor_id == account.contributor_id
                )
            ).scalar_one()
        assert abs(float(balance) - float(net)) < 1e-6, f"{account.name}: balance {balance}, ledger {net}"
        return float(net)

    def ledger(self, account: Account) -> list[Any]:
        L = db.ledger
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(L.c.id, L.c.kind, L.c.points, L.c.unit_id, L.c.submission_id, L.c.reverses_id)
                    .where(L.c.contributor_id == account.contributor_id)
                    .order_by(L.c.id)
                ).all()
            )

    def units(self) -> list[Any]:
        U = db.units
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(U.c.id, U.c.state, U.c.first_item, U.c.last_item, U.c.n_items).order_by(U.c.id)
                ).all()
            )

    def unit_state(self, unit_id: int) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(select(db.units.c.state).where(db.units.c.id == unit_id)).scalar_one())

    def gold(self) -> list[Any]:
        G = db.gold
        with self.engine.connect() as conn:
            return list(conn.execute(select(G.c.item_id, G.c.score, G.c.status, G.c.source)).all())

    def submissions(self, account: Account) -> list[Any]:
        S = db.submissions
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(S.c.id, S.c.unit_id, S.c.state)
                    .where(S.c.contributor_id == account.contributor_id)
                    .order_by(S.c.id)
                ).all()
            )

    def verified_units_with(self, *accounts: Account) -> list[int]:
        """Units standing verified with a valid submission of any of `accounts` in their group."""
        S, U = db.submissions, db.units
        ids = [a.contributor_id for a in accounts]
        with self.engine.connect() as conn:
            return sorted(
                {
                    r[0]
                    for r in conn.execute(
                        select(U.c.id)
                        .join(S, S.c.unit_id == U.c.id)
                        .where(U.c.state == "verified", S.c.state == "valid", S.c.contributor_id.in_(ids))
                    )
                }
            )

    def item_keys(self) -> dict[Key, int]:
        """(image sha1, caption) -> item id, for telling which pairs a contributor was served."""
        items, images = db.items, db.item_images
        out: dict[Key, int] = {}
        with self.engine.connect() as conn:
            for item_id, caption, data in conn.execute(
                select(items.c.id, items.c.caption, images.c.data).join(
                    images, images.c.item_id == items.c.id
                )
            ):
                out[(hashlib.sha1(bytes(data)).hexdigest(), caption)] = int(item_id)
        return out

    def set_paused_behind_the_ledgers_back(self, account: Account) -> None:
        """Mark a contributor paused without going through the server (what a bug or a bad script
        could leave behind), so that only `ledger.audit` can notice the credits resting on it."""
        C = db.contributors
        with db.begin_write(self.engine) as conn:
            conn.execute(
                update(C)
                .where(C.c.id == account.contributor_id)
                .values(paused=True, pause_reason="set directly by a test", paused_at=db.utcnow())
            )


@contextlib.contextmanager
def platform(db_url: str, **settings: Any) -> Iterator[World]:
    """A real server on `db_url`; contributors are linked by source address, loopback included
    (every account gets its own 127.0.0.x, as in the simulation)."""
    opts: dict[str, Any] = dict(sweep_seconds=0.2, link_loopback=True) | settings
    with InThreadServer(db_url, **opts) as server:
        yield World(server)


def wait_out_the_hour(margin_s: float = 20.0) -> None:
    """Hourly counters reset at the top of the UTC hour: do not start a count just before it."""
    now = dt.datetime.now(dt.timezone.utc)
    left = 3600 - (now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < margin_s:
        time.sleep(left + 1)


# ---- the colluders' script (issue 13, finding 1) ----------------------------------------------


@dataclass
class AttackLog:
    """What the colluding pair saw and did."""

    shared_units: list[int] = field(default_factory=list)
    # per shared unit: (items only in A's lease, items only in B's lease) by image bytes and caption
    differences: list[tuple[int, int]] = field(default_factory=list)
    walked_away: int = 0
    submitted: int = 0
    statuses: list[int] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)


def set_difference_attack(a: Account, b: Account, *, unit_size: int, rounds: int) -> AttackLog:
    """Two accounts take leases together; on a unit both hold, the items only one of them got are that
    replica's hidden checks: score those honestly, answer JUNK for everything else, so the two junk
    answers agree. When a check sits in both leases (fewer own items than the lease has items beyond
    `unit_size`), hand both back. A lease no partner shares is answered with JUNK throughout."""
    log = AttackLog()
    for _ in range(rounds):
        got_a, ref_a = a.lease_many()
        got_b, ref_b = b.lease_many()
        log.refusals += ref_a + ref_b
        if not got_a and not got_b:
            break
        b_by_unit = {lease["unit_id"]: (agent, lease) for agent, lease in got_b}
        plan: list[tuple[Agent, dict[str, Any], set[str]]] = []
        partnered: set[int] = set()
        for agent_a, la in got_a:
            if la["unit_id"] not in b_by_unit:
                plan.append((agent_a, la, set()))
                continue
            agent_b, lb = b_by_unit[la["unit_id"]]
            partnered.add(lb["lease_id"])
            ka, kb = agent_a.keys(la), agent_b.keys(lb)
            only_a = {it["item_id"] for it, k in zip(la["items"], ka, strict=True) if k not in set(kb)}
            only_b = {it["item_id"] for it, k in zip(lb["items"], kb, strict=True) if k not in set(ka)}
            log.shared_units.append(la["unit_id"])
            log.differences.append((len(only_a), len(only_b)))
            extra = max(len(la["items"]) - unit_size, 0)
            if len(only_a) < extra or len(only_b) < extra:
                agent_a.release(la)
                agent_b.release(lb)
                log.walked_away += 2
                continue
            plan += [(agent_a, la, only_a), (agent_b, lb, only_b)]
        plan += [(agent, lb, set()) for agent, lb in got_b if lb["lease_id"] not in partnered]
        for agent, lease, honest in plan:
            r = agent.send(lease, agent.respond(lease, honest=honest))
            log.submitted += 1
            log.statuses.append(r.status_code)
            if r.status_code == 200:
                log.answers.append(r.json())
    return log

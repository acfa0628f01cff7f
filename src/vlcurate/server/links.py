"""Linked accounts: contributors seen from the same client address count as one voice.

Consensus pays whoever agrees, so a group of accounts run by one person agrees with itself. The
server remembers a keyed hash of every address a contributor leases from (never the address
itself); two contributors that share one are linked. A unit's quorum counts linked members as one
vote, and only one of them is credited (`verify.judge`). Addresses are a signal, not proof: a
household or a campus behind one NAT is linked too, which costs its members a third replica now
and then, never their pay for work nobody else did. Loopback addresses are ignored unless
`link_loopback` is set (an agent on the server's own machine is a local setup).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from vlcurate.server import db
from vlcurate.server.platform import Platform


def origin_key(secret: bytes, address: str) -> str:
    """The stored form of a client address: a keyed hash, so the table holds no addresses."""
    return hashlib.blake2b(address.encode(), key=secret[:64], digest_size=16).hexdigest()


def counts(p: Platform, address: str | None) -> bool:
    """Whether requests from `address` link the contributors that make them."""
    if not p.settings.link_origins or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a test client or a unix socket: nothing to link by
    return p.settings.link_loopback or not ip.is_loopback


def note(p: Platform, contributor_id: int, address: str | None) -> None:
    """Remember that `contributor_id` called from `address` (one insert per new pair and process)."""
    if not counts(p, address):
        return
    assert address is not None
    key = (contributor_id, origin_key(p.secret, address))
    if p.seen_origin(key):
        return
    Orig = db.contributor_origins
    dialect_insert = pg_insert if p.engine.dialect.name == "postgresql" else sqlite_insert
    with db.begin_write(p.engine) as conn:
        conn.execute(
            dialect_insert(Orig)
            .values(contributor_id=key[0], origin=key[1], first_seen=db.utcnow())
            .on_conflict_do_nothing(index_elements=[Orig.c.contributor_id, Orig.c.origin])
        )


def linked_pairs(conn: Connection, contributor_ids: Iterable[int]) -> set[frozenset[int]]:
    """Every pair of `contributor_ids` that share an origin."""
    ids = sorted(set(contributor_ids))
    if len(ids) < 2:
        return set()
    Orig = db.contributor_origins
    by_origin: dict[str, list[int]] = {}
    for cid, origin in conn.execute(
        select(Orig.c.contributor_id, Orig.c.origin).where(Orig.c.contributor_id.in_(ids))
    ).all():
        by_origin.setdefault(origin, []).append(cid)
    pairs: set[frozenset[int]] = set()
    for members in by_origin.values():
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                pairs.add(frozenset((a, b)))
    return pairs


def voices(contributor_ids: list[int], pairs: set[frozenset[int]]) -> list[list[int]]:
    """`contributor_ids` (positions kept) grouped into independent voices: linked ones together."""
    parent = list(range(len(contributor_ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(contributor_ids):
        for j in range(i + 1, len(contributor_ids)):
            b = contributor_ids[j]
            if a == b or frozenset((a, b)) in pairs:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(contributor_ids)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def frequent_partners(conn: Connection, *, min_shared: int = 5, ratio: float = 4.0) -> list[str]:
    """Pairs of contributors that landed on and agreed about far more units together than random
    assignment makes likely (a signal for an operator to look at, not proof): lines for the audit."""
    S, C, U = db.submissions, db.contributors, db.units
    rows = conn.execute(
        select(S.c.unit_id, S.c.contributor_id, U.c.task_id)
        .join(U, U.c.id == S.c.unit_id)
        .where(S.c.state == "valid")
    ).all()
    per_unit: dict[int, set[int]] = {}
    per_task_units: dict[int, set[int]] = {}
    done: dict[tuple[int, int], int] = {}  # (task, contributor) -> units
    for unit_id, cid, task_id in rows:
        per_unit.setdefault(unit_id, set()).add(cid)
        per_task_units.setdefault(task_id, set()).add(unit_id)
        done[(task_id, cid)] = done.get((task_id, cid), 0) + 1
    unit_task = {u: t for t, us in per_task_units.items() for u in us}
    shared: dict[tuple[int, int, int], int] = {}
    for unit_id, cids in per_unit.items():
        ordered = sorted(cids)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                key = (unit_task[unit_id], a, b)
                shared[key] = shared.get(key, 0) + 1
    names = dict(conn.execute(select(C.c.id, C.c.name)).all())
    n_units: dict[int, int] = dict(
        conn.execute(
            select(U.c.task_id, func.count()).where(U.c.state == "verified").group_by(U.c.task_id)
        ).all()
    )
    out = []
    for (task_id, a, b), n in sorted(shared.items()):
        expected = done[(task_id, a)] * done[(task_id, b)] / max(n_units.get(task_id, 0), 1)
        if n >= min_shared and n >= ratio * expected:
            out.append(
                f"contributors {names.get(a)!r} and {names.get(b)!r} agreed on {n} units of task {task_id} "
                f"together (random assignment makes about {expected:.1f} likely)"
            )
    return out

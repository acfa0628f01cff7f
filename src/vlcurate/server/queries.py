"""Read-only queries behind the public read API and the live dashboard.

Every function takes an open `Connection` and only SELECTs, so a page or an API call reads one
consistent snapshot (call them inside one `read_connection(engine)` block). The feed shows every
item of a verified unit alike: a unit's hidden checks are some of its own items, graded inside it,
so leaving them out (or refusing their images) would only point at them. Nothing here shows a
server file path: a model given as a path shows only its last part (`public_model`).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine, Row

from vlcurate.server import db
from vlcurate.server.reputation import reputation
from vlcurate.server.schemas import ContributorOut, LedgerEntryOut

DEFAULT_TRUST_AFTER = 10
UNIT_STATES = ("open", "verified", "inconclusive")
# Feed ids are (verification id << FEED_POS_BITS) | position-in-unit; 16 bits hold any unit (unit_size
# <= 5000) and leave 37 bits for the ledger id, so ids stay exact in JavaScript numbers (< 2**53).
FEED_POS_BITS = 16
FEED_POS_MASK = (1 << FEED_POS_BITS) - 1
READ_ONLY_OPTION = "vlcurate_read_only"


# ---- wire models that schemas.py does not hold (yet) ---------------------------------------------


class UnitsByState(BaseModel):
    open: int = 0
    verified: int = 0
    inconclusive: int = 0
    other: int = 0


class TaskProgress(BaseModel):
    id: int
    name: str
    state: str
    model: str
    quorum: int
    trust_after: int
    n_items: int
    n_verified: int
    units_total: int
    units_by_state: UnitsByState


class DatasetProgress(BaseModel):
    id: int
    name: str
    n_items: int
    n_unreadable: int
    n_verified: int
    units_total: int
    units_by_state: UnitsByState
    tasks: list[TaskProgress]


class StatsOut(BaseModel):
    datasets: list[DatasetProgress]
    contributors: int
    agents: int
    ledger_points: float
    pairs_verified: int


class FeedEntry(BaseModel):
    id: int
    item_id: int
    uid: str
    caption: str | None
    score: float | None
    status: str
    unit_id: int
    task_id: int
    verified_at: dt.datetime
    image_url: str


class AgentOut(BaseModel):
    id: int
    name: str
    version: str
    revoked: bool
    last_seen: dt.datetime | None
    created_at: dt.datetime


class SubmissionSummary(BaseModel):
    """What the public may see of a submission: its fate, never its scores (while its unit is
    open they are answers someone else could copy)."""

    id: int
    contributor_id: int
    contributor: str
    agent_id: int
    unit_id: int
    agent_version: str
    state: str
    received_at: dt.datetime


# ---- helpers ----------------------------------------------------------------------------------


def read_connection(engine: Engine) -> Connection:
    """A connection for one read-only snapshot.

    On SQLite, db.make_engine begins plain (deferred) transactions unless `begin_write` asks for
    BEGIN IMMEDIATE, so with WAL these reads never wait for agents' writes nor block them. The
    `vlcurate_read_only` tag only documents intent (and is there for a hook that wants it).
    """
    return engine.connect().execution_options(**{READ_ONLY_OPTION: True})


def _utc_opt(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else db.aware(value)


_MODEL_FORMS = ("local-dir:", "hf-clip:", "hf-hub:", "random:")


def public_model(model: str) -> str:
    """A task's model as the public sees it: a model given as a path (`local-dir:/srv/m/clip`, a
    plain folder, `open_clip:ARCH:/ckpt/file.pt`, `hf-clip:/srv/m/clip`) shows only its last part;
    names and hub repos (`tiny-synth`, `hf-clip:openai/clip-vit-base-patch32`) stay as they are."""
    prefix, rest = "", model
    if model.startswith("open_clip:"):
        arch, _, rest = model.removeprefix("open_clip:").partition(":")
        prefix = f"open_clip:{arch}:"
    elif model.startswith(_MODEL_FORMS):
        head, _, rest = model.partition(":")
        prefix = head + ":"
    hub_repo = (
        prefix in ("hf-clip:", "hf-hub:") and rest.count("/") == 1 and not rest.startswith(("/", ".", "~"))
    )
    if prefix == "local-dir:" or (not hub_repo and ("/" in rest or "\\" in rest or rest.startswith("~"))):
        rest = PureWindowsPath(rest).name if "\\" in rest else PurePosixPath(rest).name
    return prefix + rest


def versions(conn: Connection) -> list[VersionOut]:
    """Reputation per agent software version: a broken release shows up here before anyone is paused."""
    v = db.version_stats
    counts = [func.sum(c).label(c.name) for c in (v.c.gold_pass, v.c.gold_fail, v.c.agree, v.c.disagree)]
    rows = conn.execute(select(v.c.version, *counts).group_by(v.c.version).order_by(v.c.version)).all()
    return [
        VersionOut(
            version=r.version,
            gold_pass=r.gold_pass,
            gold_fail=r.gold_fail,
            agree=r.agree,
            disagree=r.disagree,
            reputation=reputation(r.gold_pass, r.gold_fail, r.agree, r.disagree),
        )
        for r in rows
    ]


class VersionOut(BaseModel):
    version: str
    gold_pass: int
    gold_fail: int
    agree: int
    disagree: int
    reputation: float


def trust_threshold(conn: Connection) -> int:
    """`trust_after` of the newest active task (else the newest task, else 10).

    Contributors are not tied to one task; the dashboard shows trust against the task work is
    going to now.
    """
    t = db.tasks
    row = conn.execute(
        select(t.c.trust_after).order_by((t.c.state == "active").desc(), t.c.id.desc()).limit(1)
    ).first()
    return int(row[0]) if row is not None else DEFAULT_TRUST_AFTER


def _contributor_out(row: Row[Any], trust_after: int) -> ContributorOut:
    m = row._mapping
    return ContributorOut(
        id=m["id"],
        name=m["name"],
        paused=bool(m["paused"]),
        pause_reason=m["pause_reason"],
        reputation=reputation(m["gold_pass"], m["gold_fail"], m["agree"], m["disagree"]),
        points=float(m["points"]),
        gold_pass=m["gold_pass"],
        gold_fail=m["gold_fail"],
        agree=m["agree"],
        disagree=m["disagree"],
        rejected=m["rejected"],
        valid_results=m["n_valid"],
        trusted=m["valid_streak"] >= trust_after,
    )


# ---- progress ---------------------------------------------------------------------------------


def stats(conn: Connection) -> StatsOut:
    """Datasets with per-task progress: verified pairs = sum of n_items over verified units."""
    d, t, u = db.datasets, db.tasks, db.units
    per_task: dict[int, dict[str, tuple[int, int]]] = {}
    for task_id, state, n_units, n_pairs in conn.execute(
        select(u.c.task_id, u.c.state, func.count(), func.coalesce(func.sum(u.c.n_items), 0)).group_by(
            u.c.task_id, u.c.state
        )
    ):
        per_task.setdefault(task_id, {})[state] = (int(n_units), int(n_pairs))

    tasks_by_ds: dict[int, list[TaskProgress]] = {}
    for tr in conn.execute(select(t).order_by(t.c.id)):
        counts = per_task.get(tr.id, {})
        tasks_by_ds.setdefault(tr.dataset_id, []).append(
            TaskProgress(
                id=tr.id,
                name=tr.name,
                state=tr.state,
                model=public_model(tr.model),
                quorum=tr.quorum,
                trust_after=tr.trust_after,
                n_items=sum(p for _, p in counts.values()),
                n_verified=counts.get("verified", (0, 0))[1],
                units_total=sum(n for n, _ in counts.values()),
                units_by_state=_by_state({s: n for s, (n, _) in counts.items()}),
            )
        )

    datasets: list[DatasetProgress] = []
    for dr in conn.execute(select(d).order_by(d.c.id)):
        ts = tasks_by_ds.get(dr.id, [])
        merged: dict[str, int] = {}
        for tp in ts:
            for key, n in tp.units_by_state.model_dump().items():
                merged[key] = merged.get(key, 0) + n
        datasets.append(
            DatasetProgress(
                id=dr.id,
                name=dr.name,
                n_items=dr.n_items,
                n_unreadable=dr.n_unreadable,
                n_verified=sum(tp.n_verified for tp in ts),
                units_total=sum(tp.units_total for tp in ts),
                units_by_state=UnitsByState(**merged),
                tasks=ts,
            )
        )
    n_contributors = conn.execute(select(func.count()).select_from(db.contributors)).scalar_one()
    n_agents = conn.execute(
        select(func.count()).select_from(db.agents).where(db.agents.c.revoked.is_(False))
    ).scalar_one()
    points = conn.execute(select(func.coalesce(func.sum(db.ledger.c.points), 0.0))).scalar_one()
    return StatsOut(
        datasets=datasets,
        contributors=int(n_contributors),
        agents=int(n_agents),
        ledger_points=float(points),
        pairs_verified=sum(ds.n_verified for ds in datasets),
    )


def _by_state(counts: dict[str, int]) -> UnitsByState:
    known = {s: counts.get(s, 0) for s in UNIT_STATES}
    other = sum(n for s, n in counts.items() if s not in UNIT_STATES)
    return UnitsByState(**known, other=other)


# ---- contributors -----------------------------------------------------------------------------


def contributors(conn: Connection, limit: int = 500) -> list[ContributorOut]:
    """Contributors, most points first, with reputation and trust computed the coordinator's way."""
    c = db.contributors
    trust_after = trust_threshold(conn)
    rows = conn.execute(select(c).order_by(c.c.points.desc(), c.c.id).limit(limit))
    return [_contributor_out(r, trust_after) for r in rows]


def contributor(conn: Connection, contributor_id: int) -> ContributorOut | None:
    c = db.contributors
    row = conn.execute(select(c).where(c.c.id == contributor_id)).first()
    return None if row is None else _contributor_out(row, trust_threshold(conn))


def flagged(conn: Connection) -> list[ContributorOut]:
    """Paused contributors, most recently paused first, with the reason the verifier gave."""
    c = db.contributors
    trust_after = trust_threshold(conn)
    rows = conn.execute(select(c).where(c.c.paused.is_(True)).order_by(c.c.paused_at.desc(), c.c.id.desc()))
    return [_contributor_out(r, trust_after) for r in rows]


def contributor_agents(conn: Connection, contributor_id: int) -> list[AgentOut]:
    """A contributor's agents (never their token hashes)."""
    a = db.agents
    rows = conn.execute(
        select(a.c.id, a.c.name, a.c.version, a.c.revoked, a.c.last_seen, a.c.created_at)
        .where(a.c.contributor_id == contributor_id)
        .order_by(a.c.id)
    )
    return [
        AgentOut(
            id=r.id,
            name=r.name,
            version=r.version,
            revoked=bool(r.revoked),
            last_seen=_utc_opt(r.last_seen),
            created_at=db.aware(r.created_at),
        )
        for r in rows
    ]


# ---- ledger -----------------------------------------------------------------------------------


def ledger(
    conn: Connection,
    *,
    limit: int = 100,
    before_id: int | None = None,
    after_id: int | None = None,
    contributor: str | None = None,
    submission_id: int | None = None,
) -> list[LedgerEntryOut]:
    """Ledger entries newest first; page back with `before_id` = the smallest id already shown,
    or ask for what is new with `after_id` = the largest id already shown."""
    lg, c = db.ledger, db.contributors
    q = (
        select(lg, c.c.name.label("contributor"))
        .join(c, c.c.id == lg.c.contributor_id)
        .order_by(lg.c.id.desc())
        .limit(limit)
    )
    if before_id is not None:
        q = q.where(lg.c.id < before_id)
    if after_id is not None:
        q = q.where(lg.c.id > after_id)
    if contributor is not None:
        q = q.where(c.c.name == contributor)
    if submission_id is not None:
        q = q.where(lg.c.submission_id == submission_id)
    return [
        LedgerEntryOut(
            id=r.id,
            contributor=r.contributor,
            agent_id=r.agent_id,
            submission_id=r.submission_id,
            unit_id=r.unit_id,
            game_flag_id=r.game_flag_id,
            kind=r.kind,
            points=float(r.points),
            pairs=r.pairs,
            reason=r.reason,
            reverses_id=r.reverses_id,
            created_at=db.aware(r.created_at),
        )
        for r in conn.execute(q)
    ]


def submission(conn: Connection, submission_id: int) -> SubmissionSummary | None:
    s, c = db.submissions, db.contributors
    r = conn.execute(
        select(
            s.c.id,
            s.c.contributor_id,
            c.c.name.label("contributor"),
            s.c.agent_id,
            s.c.unit_id,
            s.c.agent_version,
            s.c.state,
            s.c.received_at,
        )
        .join(c, c.c.id == s.c.contributor_id)
        .where(s.c.id == submission_id)
    ).first()
    if r is None:
        return None
    return SubmissionSummary(
        id=r.id,
        contributor_id=r.contributor_id,
        contributor=r.contributor,
        agent_id=r.agent_id,
        unit_id=r.unit_id,
        agent_version=r.agent_version,
        state=r.state,
        received_at=db.aware(r.received_at),
    )


# ---- live feed --------------------------------------------------------------------------------


def feed(conn: Connection, *, after_id: int = 0, limit: int = 50) -> list[FeedEntry]:
    """Verified pairs, newest verification first: every item of each verified unit.

    Ids: the coordinator writes a unit's ledger credits in the transaction that verifies it, and
    the ledger is append-only, so the unit's newest credit id v marks *this* verification. The pair
    at position p (1-based, item_id - first_item + 1) gets id `v << 16 | p` (< 2**53, exact in
    JavaScript). Ids grow with verification order, never change, and a unit that fraud handling
    reopens drops out and comes back with new, larger ids when it is verified again; the same
    item under two tasks gets two entries. Newest first means id descending. `after_id` returns
    the (at most `limit`) newest entries with id > after_id, so a poller that passes the largest id
    it has seen gets only newer pairs. Exact on SQLite (writes are serialised); on PostgreSQL a
    sequence id can commit after a larger one, so a poller may rarely skip a pair there (the
    dashboard re-reads the newest page and is unaffected). A verified unit with no credit row is
    not listed.
    """
    lg, u = db.ledger, db.units
    floor = max(max(after_id, 0) >> FEED_POS_BITS, 1)
    out: list[FeedEntry] = []
    seen: set[int] = set()
    below: int | None = None
    while len(out) < limit:
        q = (
            select(lg.c.id, lg.c.unit_id)
            .where(lg.c.kind == "credit", lg.c.id >= floor)
            .order_by(lg.c.id.desc())
            .limit(256)
        )
        if below is not None:
            q = q.where(lg.c.id < below)
        credits = conn.execute(q).all()
        if not credits:
            break
        below = credits[-1].id
        fresh: list[tuple[int, int]] = []  # (verification id, unit id), newest first
        for c in credits:
            if c.unit_id not in seen:
                seen.add(c.unit_id)
                fresh.append((c.id, c.unit_id))
        units = {
            r.id: r
            for r in conn.execute(
                select(
                    u.c.id,
                    u.c.task_id,
                    u.c.first_item,
                    u.c.last_item,
                    u.c.verified_at,
                    u.c.verified_scores,
                    u.c.verified_status,
                ).where(
                    u.c.id.in_([unit_id for _, unit_id in fresh]),
                    u.c.state == "verified",
                    u.c.verified_at.is_not(None),
                    # label tasks' images are an operator's upload and their values class indices
                    u.c.task_id.in_(select(db.tasks.c.id).where(db.tasks.c.kind != "label")),
                )
            )
        }
        for vid, unit_id in fresh:
            unit = units.get(unit_id)
            if unit is not None:  # reopened units are skipped
                out.extend(_unit_entries(conn, unit, vid, after_id, limit - len(out)))
            if len(out) >= limit:
                break
    return out


def _unit_entries(conn: Connection, unit: Any, vid: int, after_id: int, limit: int) -> list[FeedEntry]:
    """The feed entries of one verified unit, highest position first."""
    i = db.items
    first, last = int(unit.first_item), int(unit.last_item)
    lo = first
    if vid == after_id >> FEED_POS_BITS:
        lo = first + (after_id & FEED_POS_MASK)  # positions after the cursor only
    if lo > last:
        return []
    scores = np.frombuffer(unit.verified_scores or b"", dtype="<f4")
    statuses: dict[str, str] = dict(unit.verified_status or {})
    rows = conn.execute(
        select(i.c.id, i.c.uid, i.c.caption).where(i.c.id.between(lo, last)).order_by(i.c.id.desc())
    )
    verified_at = db.aware(unit.verified_at)
    out: list[FeedEntry] = []
    for r in rows:
        pos = r.id - first
        if pos + 1 > FEED_POS_MASK:
            continue
        score = float(scores[pos]) if pos < len(scores) else math.nan
        ok = math.isfinite(score)
        out.append(
            FeedEntry(
                id=(vid << FEED_POS_BITS) | (pos + 1),
                item_id=r.id,
                uid=r.uid,
                caption=r.caption,
                score=score if ok else None,
                status="ok" if ok else str(statuses.get(str(pos), "unscorable")),
                unit_id=unit.id,
                task_id=unit.task_id,
                verified_at=verified_at,
                image_url=f"/feed/images/{r.id}",
            )
        )
        if len(out) >= limit:
            break
    return out


def public_image(conn: Connection, item_id: int) -> tuple[bytes, str | None] | None:
    """(bytes, ext) of an item the feed may show: in a verified unit of some task."""
    i, u, t = db.items, db.units, db.tasks
    item = conn.execute(select(i.c.dataset_id).where(i.c.id == item_id)).first()
    if item is None:
        return None
    task_ids = [
        r[0]
        for r in conn.execute(select(t.c.id).where(t.c.dataset_id == item.dataset_id, t.c.kind != "label"))
    ]  # label tasks' images are not public (see `feed`)
    # Units of a task tile the dataset's id range: the one holding item_id has the largest
    # first_item <= item_id (an index on (task_id, first_item) makes this a single seek).
    shown = False
    for task_id in task_ids:
        unit = conn.execute(
            select(u.c.state, u.c.last_item)
            .where(u.c.task_id == task_id, u.c.first_item <= item_id)
            .order_by(u.c.first_item.desc())
            .limit(1)
        ).first()
        if unit is not None and unit.last_item >= item_id and unit.state == "verified":
            shown = True
            break
    if not shown:
        return None
    img = conn.execute(
        select(db.item_images.c.data, db.item_images.c.ext).where(db.item_images.c.item_id == item_id)
    ).first()
    return None if img is None else (bytes(img.data), img.ext)


# ---- change detection for server-sent events --------------------------------------------------

ChangeToken = dict[str, tuple[Any, ...]]


def change_token(conn: Connection) -> ChangeToken:
    """A few cheap aggregates, grouped by the dashboard panel they invalidate.

    One round trip of MAX/COUNT over indexed columns (ledger id, units state, submissions id), so
    the event stream can poll it every second; a panel is re-sent only when its part changed.
    """
    u, c, lg, s = db.units, db.contributors, db.ledger, db.submissions
    a, d, t = db.agents, db.datasets, db.tasks

    def scalar(q: Any) -> Any:
        return q.scalar_subquery()

    row = conn.execute(
        select(
            scalar(select(func.max(lg.c.id))).label("ledger_max"),
            scalar(select(func.count()).select_from(u).where(u.c.state == "verified")).label("verified"),
            scalar(select(func.count()).select_from(u).where(u.c.state == "inconclusive")).label("inconcl"),
            scalar(select(func.max(u.c.verified_at))).label("verified_at"),
            scalar(select(func.max(u.c.id))).label("units_max"),
            scalar(select(func.max(s.c.id))).label("subs_max"),
            scalar(select(func.count()).select_from(c)).label("contributors"),
            scalar(select(func.count()).select_from(c).where(c.c.paused.is_(True))).label("paused"),
            scalar(select(func.max(c.c.paused_at))).label("paused_at"),
            scalar(select(func.count()).select_from(a).where(a.c.revoked.is_(False))).label("agents"),
            scalar(select(func.count()).select_from(d)).label("datasets"),
            scalar(select(func.coalesce(func.sum(d.c.n_items), 0))).label("ds_items"),
            scalar(select(func.count()).select_from(t).where(t.c.state == "active")).label("tasks_active"),
            scalar(select(func.max(t.c.id))).label("tasks_max"),
        )
    ).one()
    m = row._mapping
    feed_part = (m["verified"], str(m["verified_at"]))
    flagged_part = (m["paused"], str(m["paused_at"]))
    return {
        "stats": (
            *feed_part,
            m["inconcl"],
            m["units_max"],
            m["ledger_max"],
            m["contributors"],
            m["agents"],
            m["datasets"],
            m["ds_items"],
            m["tasks_active"],
            m["tasks_max"],
        ),
        "feed": feed_part,
        "ledger": (m["ledger_max"],),
        "contributors": (m["contributors"], m["subs_max"], m["ledger_max"], *flagged_part),
        "flagged": flagged_part,
    }

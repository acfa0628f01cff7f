"""Operators' side: register a dataset (read its shards once, keep pairs and image bytes), create a
task on it (pin a model, cut units, choose each unit's hidden checks and get their answers from a
trusted source), and create agent tokens."""

from __future__ import annotations

import datetime as dt
import io
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.base.records import Sample, Status
from vlcurate.io.fetch import resolve_images
from vlcurate.io.sources import open_source
from vlcurate.server import db, schemas
from vlcurate.server.errors import BadRequest, Conflict, NotFound
from vlcurate.server.tokens import hash_token, new_token

# Largest score gap between two honest agents running the pinned model: bf16 vs fp32 differs by up
# to 0.015 on tiny-synth and 0.002 on ViT-B-32 (benchmarks/README.md), so 0.02 leaves a margin.
DEFAULT_TOLERANCE = 0.02
INSERT_BATCH = 500


def _size(data: bytes | None) -> tuple[int | None, int | None]:
    if not data:
        return None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:
        return None, None


def _lock_items(conn: Connection) -> None:
    # Item ids are contiguous within a dataset (a unit is an id range): one registration at a time.
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE items IN EXCLUSIVE MODE"))


def create_dataset(engine: Engine, req: schemas.DatasetCreate) -> schemas.DatasetOut:
    """Read every pair of `req.source` into the database; unreadable ones are kept with their reason."""
    try:
        source = open_source(req.source, kind=req.kind)
        shards = source.shards()
    except Exception as exc:
        raise BadRequest(f"cannot open source {req.source!r}: {exc}") from exc
    if not shards:
        raise BadRequest(f"source {req.source!r} has no shards")
    with db.begin_write(engine) as conn:
        if conn.execute(select(db.datasets.c.id).where(db.datasets.c.name == req.name)).first():
            raise Conflict(f"dataset {req.name!r} already exists")
        _lock_items(conn)
        ds_id = conn.execute(
            insert(db.datasets)
            .values(name=req.name, source=req.source, kind=req.kind)
            .returning(db.datasets.c.id)
        ).scalar_one()
        next_id = int(conn.execute(select(func.coalesce(func.max(db.items.c.id), 0))).scalar_one()) + 1
        n = bad = 0
        rows: list[dict[str, Any]] = []
        blobs: list[dict[str, Any]] = []

        def flush() -> None:
            if rows:
                conn.execute(insert(db.items), rows)
            if blobs:
                conn.execute(insert(db.item_images), blobs)
            rows.clear()
            blobs.clear()

        for shard in shards:
            try:
                samples = list(source.iter_samples(shard))
            except Exception as exc:
                raise BadRequest(f"cannot read shard {shard.name}: {exc}") from exc
            samples = resolve_images(samples)
            for s in samples:
                w, h = _size(s.image)
                status, error = _read_status(s)
                bad += status != "ok"
                rows.append(
                    dict(
                        id=next_id,
                        dataset_id=ds_id,
                        uid=s.uid,
                        shard=shard.name,
                        key=s.key,
                        caption=s.text,
                        width=w,
                        height=h,
                        read_status=status,
                        read_error=error,
                    )
                )
                if s.image is not None:
                    blobs.append(dict(item_id=next_id, data=s.image, ext=s.image_ext))
                next_id += 1
                n += 1
                if len(rows) >= INSERT_BATCH:
                    flush()
        flush()
        if n == 0:
            raise BadRequest(f"source {req.source!r} holds no pairs")
        conn.execute(update(db.datasets).where(db.datasets.c.id == ds_id).values(n_items=n, n_unreadable=bad))
        row = conn.execute(select(db.datasets).where(db.datasets.c.id == ds_id)).one()
    return schemas.DatasetOut.model_validate(row._mapping)


def _read_status(s: Sample) -> tuple[str, str | None]:
    status = s.status.value if isinstance(s.status, Status) else str(s.status)
    if status == "ok" and s.image is None:
        return "missing_image", s.error or "no image"
    return status, s.error


def create_task(engine: Engine, req: schemas.TaskCreate) -> schemas.TaskOut:
    """Pin the model (its fingerprint and preprocessing), cut the dataset into units, prepare gold."""
    from vlcurate.models.loader import load_scorer

    with engine.connect() as conn:
        ds = conn.execute(select(db.datasets).where(db.datasets.c.name == req.dataset)).first()
        if ds is None:
            raise NotFound(f"no dataset named {req.dataset!r}")
        if conn.execute(select(db.tasks.c.id).where(db.tasks.c.name == req.name)).first():
            raise Conflict(f"task {req.name!r} already exists")
        bounds = conn.execute(
            select(func.min(db.items.c.id), func.max(db.items.c.id)).where(db.items.c.dataset_id == ds.id)
        ).one()
    if req.quorum > req.max_replicas:
        raise BadRequest(f"quorum {req.quorum} is larger than max_replicas {req.max_replicas}")
    try:
        scorer = load_scorer(req.model, device="cpu")
    except Exception as exc:
        raise BadRequest(f"the server cannot load model {req.model!r}: {exc}") from exc
    first, last = int(bounds[0]), int(bounds[1])
    gold_rows = _gold_rows(engine, req, ds.id, scorer, _check_items(engine, req, ds.id, first, last))
    with db.begin_write(engine) as conn:
        try:
            task_id = conn.execute(
                insert(db.tasks)
                .values(
                    dataset_id=ds.id,
                    name=req.name,
                    kind=req.kind,
                    model=req.model,
                    model_fingerprint=scorer.fingerprint,
                    preprocessing=scorer.preprocessing.as_dict(),
                    quorum=req.quorum,
                    max_replicas=req.max_replicas,
                    tolerance=req.tolerance or DEFAULT_TOLERANCE,
                    agree_fraction=req.agree_fraction,
                    unit_size=req.unit_size,
                    gold_per_unit=req.gold_per_unit,
                    points_per_pair=req.points_per_pair,
                    lease_seconds=req.lease_seconds,
                    trust_after=req.trust_after,
                    min_audit_rate=req.min_audit_rate,
                )
                .returning(db.tasks.c.id)
            ).scalar_one()
        except IntegrityError as exc:
            raise Conflict(f"task {req.name!r} already exists") from exc
        unit_rows = []
        for seq, start in enumerate(range(first, last + 1, req.unit_size)):
            end = min(start + req.unit_size - 1, last)
            unit_rows.append(
                dict(
                    task_id=task_id,
                    seq=seq,
                    first_item=start,
                    last_item=end,
                    n_items=end - start + 1,
                    state="open",
                    target=req.quorum,
                    issued=0,
                )
            )
        for i in range(0, len(unit_rows), INSERT_BATCH):
            conn.execute(insert(db.units), unit_rows[i : i + INSERT_BATCH])
        if gold_rows:
            conn.execute(insert(db.gold), [dict(g, task_id=task_id) for g in gold_rows])
    return task_out(engine, task_id)


def _check_items(
    engine: Engine, req: schemas.TaskCreate, dataset_id: int, first: int, last: int
) -> list[list[int]]:
    """Each unit's hidden checks: `gold_per_unit` of its own readable pairs, drawn with the system's
    random source (nothing about ids, positions or the task tells which), one list per unit."""
    if req.gold_per_unit <= 0:
        return []
    with engine.connect() as conn:
        readable = [
            r[0]
            for r in conn.execute(
                select(db.items.c.id)
                .where(db.items.c.dataset_id == dataset_id, db.items.c.read_status == "ok")
                .order_by(db.items.c.id)
            )
        ]
    rng = secrets.SystemRandom()
    picked: list[list[int]] = []
    k = 0
    for start in range(first, last + 1, req.unit_size):
        end = start + req.unit_size - 1
        unit: list[int] = []
        while k < len(readable) and readable[k] <= end:
            if readable[k] >= start:
                unit.append(readable[k])
            k += 1
        picked.append(rng.sample(unit, min(req.gold_per_unit, len(unit))))
    return picked


def _gold_rows(
    engine: Engine, req: schemas.TaskCreate, dataset_id: int, scorer: Any, per_unit: list[list[int]]
) -> list[dict[str, Any]]:
    """The checks' answers: from a trusted `vlcurate score` output where it has the pair, else
    scored here with the pinned model. At most `gold.self_score` pairs are scored here, taken as
    every unit's first check, then every unit's second, ... in a random unit order, so a cap that
    is too small thins every unit's checks alike and leaves no unit known to be unguarded."""
    from vlcurate.score.memory import score_pairs

    if not any(per_unit):
        return []
    rows: dict[int, dict[str, Any]] = {}
    if req.gold.scores:
        trusted = _gold_from_scores(engine, dataset_id, req.gold.scores)
        rows.update({i: trusted[i] for unit in per_unit for i in unit if i in trusted})
    order = list(range(len(per_unit)))
    secrets.SystemRandom().shuffle(order)
    ranked = [per_unit[u][r] for r in range(req.gold_per_unit) for u in order if r < len(per_unit[u])]
    todo = sorted([i for i in ranked if i not in rows][: req.gold.self_score])
    for i in range(0, len(todo), INSERT_BATCH):
        with engine.connect() as conn:
            got = conn.execute(
                select(db.items.c.id, db.items.c.caption, db.item_images.c.data)
                .join(db.item_images, db.item_images.c.item_id == db.items.c.id)
                .where(db.items.c.id.in_(todo[i : i + INSERT_BATCH]))
                .order_by(db.items.c.id)
            ).all()
        results = score_pairs(scorer, [g.data for g in got], [g.caption for g in got])
        for g, r in zip(got, results, strict=True):
            rows[g.id] = dict(item_id=g.id, score=r.score, status=r.status, source="server")
    if not rows:
        raise BadRequest(
            "gold_per_unit > 0 but no check has an answer: raise gold.self_score or set gold.scores"
        )
    return list(rows.values())


def _gold_from_scores(engine: Engine, dataset_id: int, path: str) -> dict[int, dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted(Path(path).glob("scores/*.parquet")) or sorted(Path(path).glob("*.parquet"))
    if not files:
        raise BadRequest(f"gold.scores: no score tables under {path!r}")
    known: dict[str, tuple[float | None, str]] = {}
    for f in files:
        t = pq.read_table(f, columns=["uid", "score", "status"]).to_pydict()
        for uid, score, status in zip(t["uid"], t["score"], t["status"], strict=True):
            known[uid] = (None if score is None or np.isnan(score) else float(score), status)
    out: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for item_id, uid in conn.execute(
            select(db.items.c.id, db.items.c.uid).where(db.items.c.dataset_id == dataset_id)
        ):
            if uid in known:
                score, status = known[uid]
                out[item_id] = dict(item_id=item_id, score=score, status=status, source="operator")
    if not out:
        raise BadRequest(f"gold.scores: no uid of {path!r} is in this dataset")
    return out


def task_out(engine: Engine, task_id: int) -> schemas.TaskOut:
    with engine.connect() as conn:
        t = conn.execute(select(db.tasks).where(db.tasks.c.id == task_id)).first()
        if t is None:
            raise NotFound(f"no task {task_id}")
        n_units = conn.execute(
            select(func.count()).select_from(db.units).where(db.units.c.task_id == task_id)
        ).scalar_one()
    return schemas.TaskOut(
        id=t.id,
        name=t.name,
        dataset_id=t.dataset_id,
        kind=t.kind,
        model=t.model,
        model_fingerprint=t.model_fingerprint,
        preprocessing=t.preprocessing,
        quorum=t.quorum,
        tolerance=t.tolerance,
        unit_size=t.unit_size,
        gold_per_unit=t.gold_per_unit,
        n_units=n_units,
        state=t.state,
    )


def create_agent(
    engine: Engine, req: schemas.AgentCreate, rate_per_minute: int, daily_quota: int
) -> schemas.AgentToken:
    """A token for a new agent of `req.contributor` (created on first use)."""
    token = new_token("vla")
    expires = db.utcnow() + dt.timedelta(days=req.expires_in_days) if req.expires_in_days else None
    with db.begin_write(engine) as conn:
        c = conn.execute(
            select(db.contributors.c.id).where(db.contributors.c.name == req.contributor)
        ).first()
        if c is None:
            cid = conn.execute(
                insert(db.contributors).values(name=req.contributor).returning(db.contributors.c.id)
            ).scalar_one()
        else:
            cid = c.id
        aid = conn.execute(
            insert(db.agents)
            .values(
                contributor_id=cid,
                name=req.name,
                version=req.version,
                token_hash=hash_token(token),
                rate_per_minute=req.rate_per_minute or rate_per_minute,
                daily_quota=req.daily_quota or daily_quota,
                expires_at=expires,
            )
            .returning(db.agents.c.id)
        ).scalar_one()
    return schemas.AgentToken(
        agent_id=aid, contributor_id=cid, contributor=req.contributor, token=token, expires_at=expires
    )


def revoke_agent(engine: Engine, agent_id: int) -> None:
    with db.begin_write(engine) as conn:
        done = conn.execute(
            update(db.agents).where(db.agents.c.id == agent_id).values(revoked=True, revoked_at=db.utcnow())
        ).rowcount
    if not done:
        raise NotFound(f"no agent {agent_id}")

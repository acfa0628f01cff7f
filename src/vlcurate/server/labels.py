"""Label tasks (`vlcurate build --platform`): units of images to put in one of a task's classes.

A label task is a task of kind `label` running on the same machinery as scoring: units, replicas,
hidden checks, quorum, linked accounts, reputation and the ledger. What differs is small and lives
here. A result is a class index (carried in the score blob as a float); two replicas agree on an
item when their labels are equal (tolerance 0.5) and agree as a whole on `agree_fraction` of the
unit; the verified label of an item is the one most of the agreeing replicas gave (none without a
majority). A submission passes its hidden checks when it gets `check_pass_fraction` of them right:
zero-shot models are not exact, so one miss among many checks is not fraud. The checks' answers
are labels the operator trusts, sent when the task is made (decision 3: never crowd answers), and
since there is no pinned model a failed check is never re-scored: the operator's label stands.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db, schemas
from vlcurate.server.errors import BadRequest, Conflict, NotFound
from vlcurate.server.ingest import INSERT_BATCH, _lock_items, _size
from vlcurate.server.platform import TaskInfo

KIND = "label"
ANY_MODEL = "any"  # agents label with whatever model they run; the fingerprint is theirs to report
TOLERANCE = 0.5  # class indices are whole numbers: within 0.5 means equal


def is_label(task: TaskInfo) -> bool:
    return task.kind == KIND


def n_classes(task: TaskInfo) -> int:
    return len((task.label_spec or {}).get("classes", []))


def task_classes(task: TaskInfo) -> list[schemas.LabelClass] | None:
    if not is_label(task):
        return None
    return [schemas.LabelClass(**c) for c in (task.label_spec or {}).get("classes", [])]


# ---- answers and checks ---------------------------------------------------------------------------


def result_value(task: TaskInfo, r: schemas.ItemResult) -> float | None:
    """The number stored for a result: its score, or for a label task its class index. Raises
    ValueError (the caller rejects the submission) for a result of the wrong kind."""
    if not is_label(task):
        if r.label is not None:
            raise ValueError(f"item {r.item_id}: this task wants scores, not labels")
        return r.score
    if r.score is not None:
        raise ValueError(f"item {r.item_id}: this is a label task; send `label`, not `score`")
    if r.label is not None and r.label >= n_classes(task):
        k = n_classes(task)
        raise ValueError(f"item {r.item_id}: label {r.label} is not one of the task's {k} classes")
    return None if r.label is None else float(r.label)


def grade_ok(task: TaskInfo, checked: int, failed: int) -> bool:
    """Whether a submission passes its checks: all of them (scores), or the task's share (labels)."""
    if not is_label(task) or not checked:
        return failed == 0
    need = float((task.label_spec or {}).get("check_pass_fraction", 1.0))
    return (checked - failed) / checked >= need - 1e-9


def majority(stacked: np.ndarray) -> np.ndarray:
    """Per item, the label more than half the agreeing replicas gave (NaN where none did)."""
    n = stacked.shape[0]
    out = np.full(stacked.shape[1], np.nan)
    for j in range(stacked.shape[1]):
        col = stacked[:, j]
        col = col[np.isfinite(col)]
        if not len(col):
            continue
        values, counts = np.unique(col, return_counts=True)
        k = int(counts.argmax())
        if counts[k] * 2 > n:
            out[j] = values[k]
    return out


# ---- making a task ---------------------------------------------------------------------------------


def _spread(uids: list[str], checks: set[str], unit_size: int) -> list[str]:
    """The items in an order that gives every unit its share of the checks: checks dealt evenly
    over the units, the other items filling each unit in the order given."""
    n_units = -(-len(uids) // unit_size)
    plain = [u for u in uids if u not in checks]
    known = [u for u in uids if u in checks]
    units: list[list[str]] = [[] for _ in range(n_units)]
    for k, u in enumerate(known):
        units[k % n_units].append(u)
    it = iter(plain)
    for unit in units:
        while len(unit) < unit_size:
            nxt = next(it, None)
            if nxt is None:
                break
            unit.append(nxt)
    return [u for unit in units for u in unit]


def _decode(images: Sequence[schemas.LabelImage]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for im in images:
        if im.uid in out:
            raise BadRequest(f"image uid {im.uid!r} appears twice")
        try:
            out[im.uid] = base64.b64decode(im.image, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"image {im.uid!r} is not valid base64") from None
    return out


def create_label_task(engine: Engine, req: schemas.LabelTaskCreate) -> schemas.LabelTaskOut:
    """A dataset of the uploaded images and a `label` task over it, its checks from `req.checks`."""
    names = [c.name for c in req.classes]
    if len(set(names)) != len(names):
        raise BadRequest("class names must be unique")
    if req.quorum > req.max_replicas:
        raise BadRequest(f"quorum {req.quorum} is larger than max_replicas {req.max_replicas}")
    data = _decode(req.images)
    checks: dict[str, schemas.LabelCheck] = {}
    for c in req.checks:
        if c.uid not in data:
            raise BadRequest(f"check {c.uid!r} is not one of the images")
        if c.uid in checks:
            raise BadRequest(f"check {c.uid!r} appears twice")
        if c.label >= len(names):
            raise BadRequest(f"check {c.uid!r}: label {c.label} is not one of the {len(names)} classes")
        checks[c.uid] = c
    n_units = -(-len(data) // req.unit_size)
    if len(checks) < n_units:
        raise BadRequest(
            f"{len(checks)} checks for {n_units} units of {req.unit_size}: every unit needs a hidden "
            "check (send more trusted labels or raise unit_size)"
        )
    order = _spread(list(data), set(checks), req.unit_size)
    with db.begin_write(engine) as conn:
        if (
            conn.execute(select(db.tasks.c.id).where(db.tasks.c.name == req.name)).first()
            or conn.execute(select(db.datasets.c.id).where(db.datasets.c.name == req.name)).first()
        ):
            raise Conflict(f"a task or dataset named {req.name!r} already exists")
        _lock_items(conn)
        ds_id = conn.execute(
            insert(db.datasets)
            .values(name=req.name, source=f"upload:{req.name}", kind=KIND, n_items=len(order))
            .returning(db.datasets.c.id)
        ).scalar_one()
        first = int(conn.execute(select(func.coalesce(func.max(db.items.c.id), 0))).scalar_one()) + 1
        rows, blobs, bad = [], [], 0
        for k, uid in enumerate(order):
            w, h = _size(data[uid])
            ok = w is not None
            bad += not ok
            rows.append(
                dict(
                    id=first + k,
                    dataset_id=ds_id,
                    uid=uid,
                    shard="upload",
                    key=uid,
                    caption=None,
                    width=w,
                    height=h,
                    read_status="ok" if ok else "decode_error",
                    read_error=None if ok else "not an image the server can read",
                )
            )
            blobs.append(dict(item_id=first + k, data=data[uid], ext=None))
        for i in range(0, len(rows), INSERT_BATCH):
            conn.execute(insert(db.items), rows[i : i + INSERT_BATCH])
            conn.execute(insert(db.item_images), blobs[i : i + INSERT_BATCH])
        conn.execute(update(db.datasets).where(db.datasets.c.id == ds_id).values(n_unreadable=bad))
        try:
            task_id = conn.execute(
                insert(db.tasks)
                .values(
                    dataset_id=ds_id,
                    name=req.name,
                    kind=KIND,
                    model=ANY_MODEL,
                    model_fingerprint=ANY_MODEL,
                    preprocessing={},
                    quorum=req.quorum,
                    max_replicas=req.max_replicas,
                    tolerance=TOLERANCE,
                    agree_fraction=req.agree_fraction,
                    unit_size=req.unit_size,
                    gold_per_unit=-(-len(checks) // n_units),
                    points_per_pair=req.points_per_item,
                    lease_seconds=req.lease_seconds,
                    trust_after=req.trust_after,
                    min_audit_rate=req.min_audit_rate,
                    label_spec={
                        "classes": [c.model_dump() for c in req.classes],
                        "check_pass_fraction": req.check_pass_fraction,
                    },
                )
                .returning(db.tasks.c.id)
            ).scalar_one()
        except IntegrityError as exc:
            raise Conflict(f"task {req.name!r} already exists") from exc
        last = first + len(order) - 1
        conn.execute(
            insert(db.units),
            [
                dict(
                    task_id=task_id,
                    seq=seq,
                    first_item=start,
                    last_item=min(start + req.unit_size - 1, last),
                    n_items=min(start + req.unit_size - 1, last) - start + 1,
                    state="open",
                    target=req.quorum,
                    issued=0,
                )
                for seq, start in enumerate(range(first, last + 1, req.unit_size))
            ],
        )
        item_of = {uid: first + k for k, uid in enumerate(order)}
        conn.execute(
            insert(db.gold),
            [
                dict(
                    task_id=task_id,
                    item_id=item_of[c.uid],
                    score=float(c.label),
                    status="ok",
                    source=c.source,
                )
                for c in checks.values()
            ],
        )
    return schemas.LabelTaskOut(
        id=task_id,
        name=req.name,
        dataset_id=ds_id,
        n_items=len(order),
        n_units=n_units,
        n_checks=len(checks),
        classes=req.classes,
    )


# ---- reading the verified labels back ----------------------------------------------------------------


def verified_labels(engine: Engine, task_id: int) -> schemas.LabelsOut:
    """Every item's label as verified so far, and how far the task is."""
    T, U, It, G = db.tasks, db.units, db.items, db.gold
    with engine.connect() as conn:
        task = conn.execute(select(T.c.id, T.c.kind).where(T.c.id == task_id)).first()
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.kind != KIND:
            raise BadRequest(f"task {task_id} is a {task.kind} task, not a label task")
        units = conn.execute(
            select(U.c.first_item, U.c.last_item, U.c.state, U.c.verified_scores, U.c.verified_status)
            .where(U.c.task_id == task_id)
            .order_by(U.c.seq)
        ).all()
        lo, hi = units[0].first_item, units[-1].last_item
        items = conn.execute(
            select(It.c.id, It.c.uid, It.c.read_status).where(It.c.id.between(lo, hi)).order_by(It.c.id)
        ).all()
        live = select(G.c.item_id).where(G.c.task_id == task_id, G.c.retired_at.is_(None))
        checked = set(conn.execute(live).scalars())
    by_id = {r.id: r for r in items}
    out: list[schemas.VerifiedLabel] = []
    for u in units:
        values = np.frombuffer(u.verified_scores, dtype="<f4") if u.verified_scores is not None else None
        for k, item_id in enumerate(range(u.first_item, u.last_item + 1)):
            it = by_id[item_id]
            label: int | None = None
            state: Any = u.state if u.state in ("open", "inconclusive") else "open"
            if it.read_status != "ok":
                state = "unreadable"
            elif u.state == "verified" and values is not None:
                v = float(values[k])
                label, state = (int(v), "verified") if np.isfinite(v) else (None, "disputed")
            out.append(schemas.VerifiedLabel(uid=it.uid, label=label, state=state, check=item_id in checked))
    n_ver = sum(1 for u in units if u.state == "verified")
    n_inc = sum(1 for u in units if u.state == "inconclusive")
    return schemas.LabelsOut(
        task_id=task_id,
        units=len(units),
        units_verified=n_ver,
        units_inconclusive=n_inc,
        done=n_ver + n_inc == len(units),
        labels=out,
    )

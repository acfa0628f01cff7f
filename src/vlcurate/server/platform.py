"""Per-process state shared by the request handlers: the engine, the server secret and read-mostly
caches (tasks, the pairs of a unit, gold pools). Everything cached is immutable or refreshed on a
timer, so several server workers can run side by side on one database."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db
from vlcurate.server.errors import NotFound
from vlcurate.server.ratelimit import RateLimiter
from vlcurate.server.settings import ServerSettings
from vlcurate.server.unit_view import ViewItem, replica_view


@dataclass(frozen=True)
class TaskInfo:
    id: int
    dataset_id: int
    kind: str
    model: str
    model_fingerprint: str
    preprocessing: dict[str, Any]
    quorum: int
    max_replicas: int
    tolerance: float
    agree_fraction: float
    unit_size: int
    gold_per_unit: int
    points_per_pair: float
    lease_seconds: int
    trust_after: int
    min_audit_rate: float
    state: str
    label_spec: dict[str, Any] | None = None  # a `label` task's classes and check rule (`labels`)


@dataclass(frozen=True)
class UnitPairs:
    # Tuples of ints and strings: the garbage collector stops tracking them, so thousands of
    # cached units do not make every full collection (which stops the worker) longer.
    item_ids: tuple[int, ...]
    captions: tuple[str | None, ...]


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class Platform:
    """What a request handler needs: engine, settings, secret, caches and the rate limiter."""

    TASK_TTL = 5.0

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        # Single statements that need no BEGIN/COMMIT round trips around them (PostgreSQL; on
        # SQLite the same engine).
        self.autocommit = (
            engine
            if engine.dialect.name == "sqlite"
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.settings = settings
        self.limiter = RateLimiter()
        self._tasks = _LRU(256)
        self._units = _LRU(8192)
        self._views = _LRU(16384)
        self._origins = _LRU(65536)
        self._scorers: dict[str, Any] = {}
        self._scorer_lock = threading.Lock()
        self.secret = self._load_secret()

    def _load_secret(self) -> bytes:
        with db.begin_write(self.engine) as conn:
            row = conn.execute(select(db.server_meta.c.value).where(db.server_meta.c.key == "secret")).first()
            if row is not None:
                return bytes.fromhex(row[0])
            value = secrets.token_hex(32)
            try:
                with conn.begin_nested():
                    conn.execute(insert(db.server_meta).values(key="secret", value=value))
            except IntegrityError:  # another worker won the race
                value = conn.execute(
                    select(db.server_meta.c.value).where(db.server_meta.c.key == "secret")
                ).scalar_one()
            return bytes.fromhex(value)

    def task(self, task_id: int) -> TaskInfo:
        hit = self._tasks.get(task_id)
        if hit is not None and time.monotonic() - hit[0] < self.TASK_TTL:
            return hit[1]
        with self.engine.connect() as conn:
            row = conn.execute(select(db.tasks).where(db.tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        m = row._mapping
        info = TaskInfo(**{f: m[f] for f in TaskInfo.__dataclass_fields__})
        self._tasks.put(task_id, (time.monotonic(), info))
        return info

    def active_task_ids(self) -> list[int]:
        hit = self._tasks.get("active")
        if hit is not None and time.monotonic() - hit[0] < self.TASK_TTL:
            return hit[1]
        with self.engine.connect() as conn:
            # label tasks are leased only by agents that ask for them by id (`vlcurate.server.labels`)
            active = select(db.tasks.c.id).where(db.tasks.c.state == "active", db.tasks.c.kind != "label")
            ids = [r[0] for r in conn.execute(active)]
        if ids:  # a new task shows up at once; an empty list is not cached
            self._tasks.put("active", (time.monotonic(), ids))
        return ids

    def forget_tasks(self) -> None:
        """Drop cached task lists (after a task is created here)."""
        self._tasks.put("active", (0.0, []))

    def unit_pairs(self, first_item: int, last_item: int) -> UnitPairs:
        key = (first_item, last_item)
        hit = self._units.get(key)
        if hit is not None:
            return hit
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.items.c.id, db.items.c.caption)
                .where(db.items.c.id.between(first_item, last_item))
                .order_by(db.items.c.id)
            ).all()
        pairs = UnitPairs(tuple(r.id for r in rows), tuple(r.caption for r in rows))
        self._units.put(key, pairs)
        return pairs

    def remember_unit_pairs(self, first_item: int, last_item: int, pairs: UnitPairs) -> None:
        """Cache a unit's pairs read elsewhere (PostgreSQL's lease function returns them)."""
        self._units.put((first_item, last_item), pairs)

    def replica_view(
        self, lease_id: int, seed: int, unit_items: Sequence[int], gold_items: list[int]
    ) -> list[ViewItem]:
        """`unit_view.replica_view`, remembered per lease: its answer and its submission both need it.

        Kept as plain tuples, which the garbage collector stops tracking (16,384 views of ~70
        dataclass objects each made full collections take 100-260 ms, the whole worker paused).
        """
        key = (lease_id, seed, len(unit_items), unit_items[0] if unit_items else 0, tuple(gold_items))
        hit = self._views.get(key)
        if hit is None:
            view = replica_view(self.secret, lease_id, seed, unit_items, gold_items)
            self._views.put(key, tuple((v.public_id, v.item_id, v.position, v.is_gold) for v in view))
            return view
        return [ViewItem(*v) for v in hit]

    def seen_origin(self, key: tuple[int, str]) -> bool:
        """Whether this process already recorded (contributor, origin); marks it seen if not."""
        if self._origins.get(key) is not None:
            return True
        self._origins.put(key, True)
        return False

    def rescore(self, task: TaskInfo, item_ids: Sequence[int]) -> dict[int, tuple[float | None, str]]:
        """Score pairs again with the task's pinned model, here (disputed hidden checks only)."""
        from vlcurate.models.loader import load_scorer
        from vlcurate.score.memory import score_pairs

        with self._scorer_lock:
            scorer = self._scorers.get(task.model_fingerprint)
            if scorer is None:
                scorer = load_scorer(task.model, device="cpu")
                if scorer.fingerprint != task.model_fingerprint:
                    raise RuntimeError(
                        f"the server's {task.model!r} is not the model task {task.id} pinned "
                        f"({scorer.fingerprint[:12]}... != {task.model_fingerprint[:12]}...)"
                    )
                self._scorers[task.model_fingerprint] = scorer
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.items.c.id, db.items.c.caption, db.item_images.c.data)
                .outerjoin(db.item_images, db.item_images.c.item_id == db.items.c.id)
                .where(db.items.c.id.in_(list(item_ids)))
            ).all()
        with self._scorer_lock:
            results = score_pairs(scorer, [r.data for r in rows], [r.caption for r in rows])
        return {
            int(r.id): (res.score, str(getattr(res.status, "value", res.status)))
            for r, res in zip(rows, results, strict=True)
        }

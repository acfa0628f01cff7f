"""Dashboard fixtures (prefixed `dash_`): a small platform database written row by row with Core
inserts, so the read side is tested against exactly the rows the coordinator writes."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from vlcurate.server import db

XSS_CAPTION = '<script>alert("xss")</script> a red circle & "quotes"'
XSS_NAME = "bob<img src=x onerror=alert(1)>"
PAUSE_REASON = "failed 3 of 4 hidden checks (max error 0.41)"
T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def _image(color: tuple[int, int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class DashWorld:
    """The database plus the writes a live coordinator would make, for tests to drive."""

    engine: Engine
    path: Path
    task_id: int
    alice: int
    bob: int
    carol: int
    agents: dict[int, int]  # contributor id -> agent id
    xss_caption: str = XSS_CAPTION
    xss_name: str = XSS_NAME
    pause_reason: str = PAUSE_REASON

    def verify_unit(
        self,
        unit_id: int,
        scores: list[float],
        at: dt.datetime | None = None,
        credit_to: list[int] | None = None,
    ) -> list[int]:
        """Verify a unit and credit its replicas in one transaction, as the coordinator does
        (the feed keys a verification by its credits); returns the new ledger ids."""
        blob = np.asarray(scores, dtype="<f4").tobytes()
        status = {str(i): "decode_error" for i, s in enumerate(scores) if np.isnan(s)}
        who = [self.alice] if credit_to is None else credit_to
        subs = [(cid, self.submit(cid, unit_id)) for cid in who]
        with self.engine.begin() as conn:
            conn.execute(
                update(db.units)
                .where(db.units.c.id == unit_id)
                .values(
                    state="verified",
                    verified_scores=blob,
                    verified_status=status,
                    verified_at=at or db.utcnow(),
                )
            )
            return [
                self._ledger_row(conn, cid, unit_id, 4.0, "credit", None, sid, "validated")
                for cid, sid in subs
            ]

    def submission_of(self, ledger_id: int) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(db.ledger.c.submission_id).where(db.ledger.c.id == ledger_id)
                ).scalar_one()
            )

    def reopen_unit(self, unit_id: int) -> None:
        """What fraud handling does to a unit verified on a distrusted word alone."""
        with self.engine.begin() as conn:
            conn.execute(
                update(db.units)
                .where(db.units.c.id == unit_id)
                .values(state="open", verified_scores=None, verified_status=None, verified_at=None)
            )

    def submit(self, contributor_id: int, unit_id: int, state: str = "valid") -> int:
        """A replica and its submission; returns the submission id."""
        agent_id = self.agents[contributor_id]
        now = db.utcnow()
        with self.engine.begin() as conn:
            rid = conn.execute(
                insert(db.replicas)
                .values(
                    unit_id=unit_id,
                    task_id=self.task_id,
                    contributor_id=contributor_id,
                    agent_id=agent_id,
                    seed=7,
                    gold_items=[],
                    state=state,
                    leased_at=now,
                    deadline=now + dt.timedelta(minutes=5),
                    finished_at=now,
                )
                .returning(db.replicas.c.id)
            ).scalar_one()
            sid = conn.execute(
                insert(db.submissions)
                .values(
                    replica_id=rid,
                    agent_id=agent_id,
                    contributor_id=contributor_id,
                    unit_id=unit_id,
                    idempotency_key=f"key-{rid:08d}",
                    model_fingerprint="fp",
                    agent_version="0.1",
                    scores=np.zeros(4, "<f4").tobytes(),
                    statuses={},
                    gold_ok=True,
                    state=state,
                )
                .returning(db.submissions.c.id)
            ).scalar_one()
        return int(sid)

    def credit(
        self,
        contributor_id: int,
        unit_id: int,
        points: float,
        *,
        kind: str = "credit",
        reverses_id: int | None = None,
        submission_id: int | None = None,
        reason: str = "validated by quorum",
    ) -> int:
        sid = submission_id if submission_id is not None else self.submit(contributor_id, unit_id)
        with self.engine.begin() as conn:
            return self._ledger_row(conn, contributor_id, unit_id, points, kind, reverses_id, sid, reason)

    def _ledger_row(
        self,
        conn: Any,
        contributor_id: int,
        unit_id: int,
        points: float,
        kind: str,
        reverses_id: int | None,
        submission_id: int,
        reason: str,
    ) -> int:
        lid = conn.execute(
            insert(db.ledger)
            .values(
                contributor_id=contributor_id,
                agent_id=self.agents[contributor_id],
                submission_id=submission_id,
                unit_id=unit_id,
                kind=kind,
                points=points,
                pairs=4,
                reason=reason,
                reverses_id=reverses_id,
            )
            .returning(db.ledger.c.id)
        ).scalar_one()
        total = sum(
            r[0]
            for r in conn.execute(
                select(db.ledger.c.points).where(db.ledger.c.contributor_id == contributor_id)
            )
        )
        conn.execute(
            update(db.contributors).where(db.contributors.c.id == contributor_id).values(points=total)
        )
        return int(lid)

    def pause(self, contributor_id: int, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(db.contributors)
                .where(db.contributors.c.id == contributor_id)
                .values(paused=True, pause_reason=reason, paused_at=db.utcnow())
            )


def build_world(path: Path) -> DashWorld:
    """12 pairs in 3 units of 4: units 1 and 2 verified, unit 3 open; items 6 and 10 are hidden gold.

    Ledger: credits 1-4 (alice, bob on units 1 and 2) and entry 5 reversing bob's credit 4.
    """
    engine = db.make_engine(str(path))
    db.metadata.create_all(engine)
    captions = [f"pair {i}: a blue square" for i in range(1, 13)]
    captions[2] = XSS_CAPTION  # item 3
    with engine.begin() as conn:
        ds = conn.execute(
            insert(db.datasets)
            .values(name="coco-mini", source="/data/coco", kind="wds", n_items=12, created_at=T0)
            .returning(db.datasets.c.id)
        ).scalar_one()
        conn.execute(
            insert(db.items),
            [
                dict(
                    id=i,
                    dataset_id=ds,
                    uid=f"{i:032x}",
                    shard="s0.tar",
                    key=f"{i:04d}",
                    caption=captions[i - 1],
                    width=48,
                    height=32,
                )
                for i in range(1, 13)
            ],
        )
        conn.execute(
            insert(db.item_images),
            [
                dict(
                    item_id=i,
                    data=_image((20 * i, 100, 200 - 10 * i), "PNG" if i == 4 else "JPEG"),
                    ext="png" if i == 4 else "jpg",
                )
                for i in range(1, 13)
            ],
        )
        task = insert_task(conn, dataset_id=ds, name="score-coco", model="tiny-synth", created_at=T0)
        conn.execute(
            insert(db.units),
            [
                dict(
                    id=u,
                    task_id=task,
                    seq=u - 1,
                    first_item=4 * u - 3,
                    last_item=4 * u,
                    n_items=4,
                    state="open",
                    target=2,
                )
                for u in (1, 2, 3)
            ],
        )
        conn.execute(
            insert(db.gold),
            [
                dict(task_id=task, item_id=6, score=0.9, source="server"),
                dict(task_id=task, item_id=10, score=0.2, source="server"),
            ],
        )
        people = {}
        for name, extra in [
            ("alice", dict(gold_pass=4, agree=5, valid_streak=5, n_valid=5)),
            (XSS_NAME, dict(gold_pass=1, gold_fail=1, agree=1, disagree=1, valid_streak=1, n_valid=2)),
            (
                "carol",
                dict(
                    gold_fail=3, gold_pass=1, rejected=2, paused=True, pause_reason=PAUSE_REASON, paused_at=T0
                ),
            ),
        ]:
            people[name] = conn.execute(
                insert(db.contributors)
                .values(name=name, created_at=T0, **extra)
                .returning(db.contributors.c.id)
            ).scalar_one()
        agents = {}
        for cid in people.values():
            agents[cid] = conn.execute(
                insert(db.agents)
                .values(
                    contributor_id=cid,
                    name=f"agent-{cid}",
                    version="0.1",
                    token_hash=f"hash{cid:060d}",
                    rate_per_minute=600,
                    daily_quota=1000,
                    created_at=T0,
                )
                .returning(db.agents.c.id)
            ).scalar_one()
    world = DashWorld(engine, path, task, people["alice"], people[XSS_NAME], people["carol"], agents)
    nan = float("nan")
    a, b = world.alice, world.bob
    world.verify_unit(
        1, [0.31, 0.12, 0.28, nan], at=T0 + dt.timedelta(minutes=1), credit_to=[a, b]
    )  # ledger 1, 2
    _, credit4 = world.verify_unit(
        2, [0.2, 0.9, 0.25, 0.33], at=T0 + dt.timedelta(minutes=2), credit_to=[a, b]
    )
    bob_sub = world.submission_of(credit4)
    world.credit(
        b,
        2,
        -4.0,
        kind="reversal",
        reverses_id=credit4,
        submission_id=bob_sub,
        reason="reversed: <b>failed</b> a later hidden check",
    )
    return world


def insert_task(conn: Any, **values: Any) -> int:
    """A task row with the test world's verification settings; `values` override them."""
    row = (
        dict(
            kind="dva-score",
            model_fingerprint="fp",
            preprocessing={},
            quorum=2,
            max_replicas=5,
            tolerance=0.01,
            agree_fraction=0.98,
            unit_size=4,
            gold_per_unit=1,
            points_per_pair=1.0,
            lease_seconds=60,
            trust_after=3,
            min_audit_rate=0.1,
        )
        | values
    )
    return int(conn.execute(insert(db.tasks).values(**row).returning(db.tasks.c.id)).scalar_one())


@pytest.fixture()
def dash_world(tmp_path: Path) -> Any:
    world = build_world(tmp_path / "platform.db")
    yield world
    world.engine.dispose()

"""Retired hidden checks are the operator's to look at: `GET /api/v1/checks/retired` lists them (the
answer they had and why they stopped grading) with the operator token, and to nobody else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update
from tests.platform_live import admin_headers, setup_task

from vlcurate.server import db


def test_retired_checks_are_listed_for_the_operator_only(live_platform: Any, small_pool: Path) -> None:
    url = live_platform.url
    _, tokens = setup_task(url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    assert httpx.get(f"{url}/api/v1/checks/retired", headers=admin_headers()).json() == []
    with live_platform.engine.begin() as conn:
        gold_id, item_id = conn.execute(select(db.gold.c.id, db.gold.c.item_id).limit(1)).one()
        conn.execute(
            update(db.gold)
            .where(db.gold.c.id == gold_id)
            .values(retired_at=db.utcnow(), retired_reason="disputed by 2 trusted contributors")
        )
        uid = conn.execute(select(db.items.c.uid).where(db.items.c.id == item_id)).scalar_one()
    (check,) = httpx.get(f"{url}/api/v1/checks/retired", headers=admin_headers()).json()
    assert (check["item_id"], check["uid"], check["task"]) == (item_id, uid, "t")
    assert check["retired_reason"] == "disputed by 2 trusted contributors" and check["source"] == "server"
    for headers in ({}, {"Authorization": f"Bearer {tokens[0]}"}):
        assert httpx.get(f"{url}/api/v1/checks/retired", headers=headers).status_code == 403

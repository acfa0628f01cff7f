"""Control and bidi characters on the dashboard, as a hostile dataset or operator puts them there: a
caption with a right-to-left override, an isolate, an escape sequence (and NUL where the database
stores it) reaches the live feed only visibly escaped (`\\u202e`), and so does a pause reason; the
JSON API still carries the text as it is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update
from tests.platform_live import HonestAgent, admin_headers

from vlcurate.server import db

TAIL = " \u202egnp.exe\u2066x\u2069\u200f\u061c\ufeff\x1b[2J\x85"
SHOWN = " \\u202egnp.exe\\u2066x\\u2069\\u200f\\u061c\\ufeff\\u001b[2J\\u0085"
RAW = "\u202e\u2066\u2069\u200f\u061c\ufeff\x1b\x85\x00"


def test_control_and_bidi_characters_reach_the_dashboard_escaped(
    live_platform: Any, small_pool: Path
) -> None:
    url, h = live_platform.url, admin_headers()
    sqlite = live_platform.engine.dialect.name == "sqlite"
    # PostgreSQL text holds no NUL; SQLite's does
    tail, shown = (TAIL + "\x00", SHOWN + "\\u0000") if sqlite else (TAIL, SHOWN)
    r = httpx.post(
        f"{url}/api/v1/datasets", json={"name": "pool", "source": str(small_pool)}, headers=h, timeout=120
    )
    assert r.status_code == 201
    with live_platform.engine.begin() as conn:  # what a scraped web caption may hold
        conn.execute(update(db.items).values(caption=db.items.c.caption + tail))
    task = {"name": "t", "dataset": "pool", "model": "tiny-synth", "unit_size": 100, "gold_per_unit": 2}
    assert httpx.post(f"{url}/api/v1/tasks", json=task, headers=h, timeout=300).status_code == 201
    agents = [
        HonestAgent(
            url, httpx.post(f"{url}/api/v1/agents", json={"contributor": c}, headers=h).json()["token"]
        )
        for c in ("alice", "bob")
    ]
    deadline = time.monotonic() + 120
    while not httpx.get(f"{url}/api/v1/feed").json():  # two honest replicas verify a unit
        assert time.monotonic() < deadline, "no unit was verified"
        for a in agents:
            a.work_one()
    # (pausing one of them would reverse the unit they verified together: pause a third)
    carol = httpx.post(f"{url}/api/v1/agents", json={"contributor": "carol"}, headers=h).json()
    cid = carol["contributor_id"]
    r = httpx.post(f"{url}/api/v1/contributors/{cid}/pause", json={"reason": f"review{tail}"}, headers=h)
    assert r.status_code == 200

    pages = {
        p: httpx.get(url + p).text
        for p in ("/", "/partials/feed", "/partials/flagged", f"/contributors/{cid}")
    }
    for path, html in pages.items():
        assert not any(ch in html for ch in RAW), path
    assert shown in pages["/partials/feed"] and shown in pages["/"]
    assert (
        f"review{shown}" in pages["/partials/flagged"] and f"review{shown}" in pages[f"/contributors/{cid}"]
    )
    # The data itself is unchanged: the JSON API gives the caption as stored.
    assert all(e["caption"].endswith(tail) for e in httpx.get(f"{url}/api/v1/feed").json())

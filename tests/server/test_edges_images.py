"""Lease images, as a scraper would pull them: served only while the lease is active (not after it
was submitted, handed back or expired), and only at the agent's image rate (`image_rate_per_minute`,
a budget of its own: images do not use up the agent's request rate, nor the other way round)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from tests.platform_live import HonestAgent, InThreadServer, admin_headers, setup_task

from vlcurate.server import db


@pytest.fixture
def slow_images(platform_db: str) -> Iterator[Any]:
    """A live server that lets an agent fetch 60 images a minute (bursts of 6)."""
    with InThreadServer(platform_db, image_rate_per_minute=60) as server:
        yield server


def test_images_have_a_rate_limit_of_their_own(slow_images: Any, small_pool: Path) -> None:
    _, tokens = setup_task(slow_images.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=2)
    agent, other = HonestAgent(slow_images.url, tokens[0]), HonestAgent(slow_images.url, tokens[1])
    lease = agent.lease()
    assert lease is not None
    codes = [agent.http.get(it["image_url"]).status_code for it in lease["items"][:20]]
    assert codes[:6] == [200] * 6 and 429 in codes, codes
    r = agent.http.get(lease["items"][-1]["image_url"])
    assert r.status_code == 429 and "image rate limit of 60" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) >= 1
    # The agent's request rate is untouched, and the next agent has a budget of its own.
    assert agent.http.get("/api/v1/me").status_code == 200
    their = other.lease()
    assert their is not None and other.http.get(their["items"][0]["image_url"]).status_code == 200


def test_images_only_while_the_lease_is_active(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    agent = HonestAgent(live_platform.url, tokens[0])
    h = admin_headers()
    mallory = HonestAgent(
        live_platform.url,
        httpx.post(f"{live_platform.url}/api/v1/agents", json={"contributor": "m"}, headers=h).json()[
            "token"
        ],
    )

    def image(who: HonestAgent, lease: dict[str, Any]) -> int:
        return who.http.get(lease["items"][0]["image_url"]).status_code

    submitted = agent.lease()
    assert submitted is not None and image(agent, submitted) == 200
    assert image(mallory, submitted) == 404  # not the holder
    assert agent.submit(submitted, agent.answers(submitted)).status_code == 200
    assert image(agent, submitted) == 409  # submitted: the lease has ended

    released = agent.lease()
    assert released is not None and image(agent, released) == 200
    assert agent.http.delete(f"/api/v1/leases/{released['lease_id']}").status_code == 204
    r = agent.http.get(released["items"][0]["image_url"])
    assert r.status_code == 409 and "no longer served" in r.json()["detail"]

    expired = agent.lease()
    assert expired is not None and image(agent, expired) == 200
    with live_platform.engine.begin() as conn:
        conn.execute(
            update(db.replicas)
            .where(db.replicas.c.id == expired["lease_id"])
            .values(deadline=db.utcnow() - dt.timedelta(seconds=5))
        )
    assert image(agent, expired) in (404, 409)  # past its deadline, swept or not

"""Hostile JSON, as an attacker sends it: 100,000 nested `[` (or bytes that are not UTF-8) to every
route of a real server, with no token, an agent's token or the operator's. A route that reads a
JSON body answers 400 "malformed JSON: ..." (the bare unit-cycle route as FastAPI's routes do);
no route answers 500 or logs a traceback, and nothing is stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.platform_live import HonestAgent, admin_headers, setup_task

from vlcurate.server import db

NESTED = b"[" * 100_000
NOT_UTF8 = b'{"reason": "\xff\xfe"}'
# Pages and streams that no OpenAPI listing shows (the dashboard), with their methods.
HTML_ROUTES = ["/", "/ledger", "/partials/stats", "/partials/ledger", "/contributors/1", "/submissions/1"]


def _routes(url: str, lease_id: int) -> list[tuple[str, str, bool]]:
    """(method, path, reads a JSON body) for every route the server declares, ids filled in."""
    spec = httpx.get(f"{url}/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        if path == "/api/v1/events":  # a stream that never ends by itself; it reads no body
            continue
        concrete = path.replace("{lease_id}", str(lease_id)).replace("{item_id}", "1")
        # no agent or contributor 999999: the operator's calls that read no body change nothing
        concrete = concrete.replace("{agent_id}", "999999").replace("{contributor_id}", "999999")
        for method, op in ops.items():
            out.append((method.upper(), concrete, "requestBody" in op))
    out += [("GET", p, False) for p in HTML_ROUTES]
    return out


def _stored(engine: Any) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (db.datasets, db.tasks, db.agents, db.replicas, db.submissions, db.ledger)
        )


@pytest.mark.parametrize("payload", [NESTED, NOT_UTF8], ids=["nested", "not-utf8"])
def test_hostile_json_to_any_route_is_a_clear_400_never_a_500(
    live_platform: Any, small_pool: Path, caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    agent = HonestAgent(live_platform.url, tokens[0])
    lease = agent.lease()
    assert lease is not None
    routes = _routes(live_platform.url, lease["lease_id"])
    body_routes = {p for _, p, body in routes if body}
    lease_path = f"/api/v1/leases/{lease['lease_id']}"
    # the bare unit-cycle route's calls are among them
    assert {"/api/v1/leases", f"{lease_path}/submit", f"{lease_path}/submit-and-lease"} <= body_routes
    assert "/api/v1/datasets" in body_routes and "/api/v1/contributors/999999/pause" in body_routes
    before = _stored(live_platform.engine)
    wrong = []
    caplog.set_level(logging.ERROR)
    for who, headers in (("nobody", {}), ("agent", dict(agent.http.headers)), ("operator", admin_headers())):
        for method, path, reads_body in routes:
            r = httpx.request(
                method,
                live_platform.url + path,
                content=payload,
                headers={**headers, "content-type": "application/json"},
                timeout=30,
            )
            clear = r.status_code == 400 and r.json()["detail"].startswith("malformed JSON: ")
            if r.status_code >= 500 or "Traceback" in r.text or (reads_body and not clear):
                wrong.append((who, method, path, r.status_code, r.text[:120]))
    assert not wrong, wrong
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert _stored(live_platform.engine) == before
    # The detail says what is wrong, the same on the bare route and on FastAPI's.
    want = "malformed JSON: nested too deeply" if payload is NESTED else "malformed JSON: not UTF-8 text"
    for path in ("/api/v1/leases", f"{lease_path}/submit", "/api/v1/datasets"):
        r = httpx.post(
            live_platform.url + path, content=payload, headers={"content-type": "application/json"}
        )
        assert r.json() == {"detail": want}, (path, r.text)
    # A syntax error is still the 422 it was, with where parsing stopped.
    r = agent.http.post(
        f"{lease_path}/submit", content=b'{"results": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON decode error" in r.text
    # The server still works (the agent's DELETE above handed its lease back): lease and submit.
    again = agent.lease()
    assert again is not None and agent.submit(again, agent.answers(again)).status_code == 200

"""Hostile and broken requests: each gets a clear 4xx and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from tests.platform_live import HonestAgent, InThreadServer, admin_headers, setup_task

from vlcurate.server import db


def _counts(engine: Any) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (db.submissions, db.ledger, db.replicas)
        )


@pytest.fixture
def leased(
    live_platform: Any, small_pool: Path
) -> tuple[Any, HonestAgent, dict[str, Any], list[dict[str, Any]]]:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=2)
    agent = HonestAgent(live_platform.url, tokens[0])
    lease = agent.lease()
    assert lease is not None
    return live_platform, agent, lease, agent.answers(lease)


def _post(agent: HonestAgent, lease: dict[str, Any], body: Any, raw: bytes | None = None) -> httpx.Response:
    path = f"/api/v1/leases/{lease['lease_id']}/submit"
    if raw is not None:
        return agent.http.post(path, content=raw, headers={"content-type": "application/json"})
    return agent.http.post(path, json=body)


def _body(lease: dict[str, Any], results: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    return {
        "idempotency_key": "bad-input-0001",
        "model_fingerprint": lease["task"]["model_fingerprint"],
        "results": results,
        **over,
    }


def test_malformed_submissions_are_refused_and_nothing_is_stored(leased: Any) -> None:
    server, agent, lease, good = leased
    before = _counts(server.engine)
    first = good[0]
    cases: list[tuple[str, Any, bytes | None, int, str]] = [
        ("malformed json", None, b'{"idempotency_key": "x", results: [', 422, "JSON"),
        ("wrong type", _body(lease, "not a list"), None, 422, "list"),
        ("score above 1", _body(lease, [{**first, "score": 1.5}, *good[1:]]), None, 422, "[-1, 1]"),
        ("score below -1", _body(lease, [{**first, "score": -3}, *good[1:]]), None, 422, "[-1, 1]"),
        ("score as text", _body(lease, [{**first, "score": "high"}, *good[1:]]), None, 422, "number"),
        ("unknown field", _body(lease, good, extra=1), None, 422, "Extra inputs"),
        ("too few results", _body(lease, good[:-5]), None, 422, "have no result"),
        (
            "too many results",
            _body(lease, [*good, {"item_id": "f" * 20, "score": 0.1}]),
            None,
            422,
            "not in this unit",
        ),
        ("duplicate item", _body(lease, [*good[:-1], good[0]]), None, 422, "twice"),
        (
            "ok without score",
            _body(lease, [{"item_id": first["item_id"], "status": "ok"}, *good[1:]]),
            None,
            422,
            "needs a score",
        ),
        ("wrong model", _body(lease, good, model_fingerprint="0" * 64), None, 422, "pinned model"),
        ("bad key", _body(lease, good, idempotency_key="no spaces allowed"), None, 422, "pattern"),
    ]
    for name, body, raw, status, words in cases:
        r = _post(agent, lease, body, raw)
        assert r.status_code == status, (name, r.text)
        assert words in r.text, (name, r.text)
    # NaN is not valid JSON for strict clients, but Python's encoder writes it: refused all the same.
    nan_body = json.dumps(_body(lease, [{**first, "score": float("nan")}, *good[1:]])).encode()
    r = _post(agent, lease, None, nan_body)
    assert r.status_code == 422 and "finite" in r.text
    assert _counts(server.engine) == before
    # After all that, the honest submission still goes through.
    assert agent.submit(lease, good).status_code == 200


def test_someone_elses_lease_bad_tokens_and_huge_bodies(leased: Any) -> None:
    server, agent, lease, good = leased
    h = admin_headers()
    other = httpx.post(f"{server.url}/api/v1/agents", json={"contributor": "mallory"}, headers=h).json()
    mallory = HonestAgent(server.url, other["token"])
    before = _counts(server.engine)
    r = mallory.submit(lease, good)
    assert r.status_code == 404 and "not held by this agent" in r.json()["detail"]
    assert mallory.http.get(lease["items"][0]["image_url"]).status_code == 404
    assert mallory.http.post(f"/api/v1/leases/{lease['lease_id']}/heartbeat").status_code == 404
    assert mallory.http.delete(f"/api/v1/leases/{lease['lease_id']}").status_code == 409
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.post(f"{server.url}/api/v1/leases", headers=headers)
        assert r.status_code == 401, headers
    # Revoked: refused at once.
    assert httpx.post(f"{server.url}/api/v1/agents/{other['agent_id']}/revoke", headers=h).status_code == 200
    r = mallory.http.post("/api/v1/leases")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # Expired.
    with server.engine.begin() as conn:
        conn.execute(
            text("UPDATE agents SET expires_at = :t WHERE id = :i"),
            {"t": db.utcnow().replace(year=2000), "i": agent_id(server, agent)},
        )
    r = agent.http.post("/api/v1/leases")
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # Oversized bodies, declared or streamed, never reach the handler.
    big = b'{"idempotency_key": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(
        f"{server.url}/api/v1/datasets", content=big, headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 413

    def chunks() -> Any:
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    r = httpx.post(
        f"{server.url}/api/v1/datasets", content=chunks(), headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 413
    # Operators' endpoints need the operator token.
    assert agent.http.post("/api/v1/datasets", json={"name": "x", "source": "/tmp"}).status_code in (401, 403)
    assert _counts(server.engine) == before


def agent_id(server: Any, agent: HonestAgent) -> int:
    from vlcurate.server.tokens import hash_token

    token = agent.http.headers["Authorization"].split()[1]
    with server.engine.connect() as conn:
        return int(
            conn.execute(
                select(db.agents.c.id).where(db.agents.c.token_hash == hash_token(token))
            ).scalar_one()
        )


def test_sql_and_html_in_text_fields_are_refused_or_stored_as_text(
    live_platform: Any, small_pool: Path
) -> None:
    h = admin_headers()
    url = live_platform.url
    for name in ("x'; DROP TABLE ledger; --", "<script>alert(1)</script>"):
        r = httpx.post(f"{url}/api/v1/agents", json={"contributor": name}, headers=h)
        assert r.status_code == 422 and "pattern" in r.text
        r = httpx.post(f"{url}/api/v1/datasets", json={"name": name, "source": str(small_pool)}, headers=h)
        assert r.status_code == 422
    r = httpx.post(
        f"{url}/api/v1/datasets",
        json={"name": "ok", "source": "/nonexistent/'; DROP TABLE items; --"},
        headers=h,
    )
    assert r.status_code == 422 and "cannot open source" in r.json()["detail"]
    r = httpx.post(f"{url}/api/v1/tasks", json={"name": "t", "dataset": "missing"}, headers=h)
    assert r.status_code == 404
    with live_platform.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.ledger)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(db.datasets)).scalar_one() == 0


def test_rate_limit_and_daily_quota(live_platform: Any, small_pool: Path) -> None:
    setup_task(
        live_platform.url,
        str(small_pool),
        unit_size=10,
        contributors=0,
        gold_per_unit=0,
        gold={"self_score": 0},
    )
    h = admin_headers()
    tok = httpx.post(
        f"{live_platform.url}/api/v1/agents", json={"contributor": "q", "daily_quota": 2}, headers=h
    ).json()["token"]
    a = HonestAgent(live_platform.url, tok)
    assert a.lease() and a.lease()
    r = a.http.post("/api/v1/leases")
    assert r.status_code == 429 and "quota" in r.json()["detail"] and int(r.headers["Retry-After"]) > 0
    assert a.http.get("/api/v1/me").json()["quota_left"] == 0
    tok = httpx.post(
        f"{live_platform.url}/api/v1/agents", json={"contributor": "r", "rate_per_minute": 60}, headers=h
    ).json()["token"]
    b = HonestAgent(live_platform.url, tok)
    codes = [b.http.get("/api/v1/me").status_code for _ in range(12)]
    assert codes[:5] == [200] * 5 and 429 in codes
    assert httpx.post(f"{live_platform.url}/api/v1/leases", headers=h).status_code == 401


@pytest.mark.parametrize("call", ["submit", "submit-and-lease"])
def test_unit_cycle_calls_refuse_huge_bodies_and_odd_requests_like_the_rest_of_the_api(
    leased: Any, call: str
) -> None:
    """The unit-cycle calls have their own fast route (`cycle_route`); its edges answer as FastAPI's."""
    server, agent, lease, good = leased
    before = _counts(server.engine)
    path = f"/api/v1/leases/{lease['lease_id']}/{call}"
    big = b'{"idempotency_key": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = agent.http.post(path, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"detail": "Content Too Large"}

    def chunks() -> Any:
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    r = agent.http.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"detail": "Content Too Large"}
    # Same 422 shape as FastAPI's (locations under "body"), and no echo of the input.
    r = agent.http.post(path, json={"idempotency_key": "edge-case-01", "results": "<script>"})
    assert r.status_code == 422
    assert ["body", "model_fingerprint"] in [e["loc"] for e in r.json()["errors"]]
    assert "<script>" not in r.text
    r = agent.http.post(path, content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text
    # What the route passes on, FastAPI answers: another method, a lease id beyond 64 bits.
    assert agent.http.get(path).status_code == 405
    r = agent.http.post(f"/api/v1/leases/{'9' * 30}/{call}", json={"x": 1})
    assert r.status_code in (404, 422), r.text
    # An empty or wrong Authorization is a 401 before anything is read from the database.
    r = httpx.post(f"{server.url}{path}", json={}, headers={"Authorization": "Basic abc"})
    assert r.status_code in (401, 422)
    r = httpx.post(
        f"{server.url}{path}",
        json={"idempotency_key": "edge-case-02", "model_fingerprint": "x", "results": good},
        headers={"Authorization": "Basic abc"},
    )
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert _counts(server.engine) == before
    # After all that, the honest submission still goes through.
    assert agent.submit(lease, good).status_code == 200


@pytest.fixture
def roomy_platform(platform_db: str) -> Iterator[Any]:
    """A live server whose agents may hold a replica of every unit at once (6 units of 50)."""
    with InThreadServer(platform_db, max_leases_per_agent=10, max_leases_per_contributor=10) as server:
        yield server


def test_the_lease_call_answers_bad_requests_exactly_as_fastapi_would(
    roomy_platform: Any, small_pool: Path
) -> None:
    """`POST /api/v1/leases` goes through the bare unit-cycle route too: every refusal is the one
    FastAPI's own route gives (same status, same body), and none of them leases anything."""
    live_platform = roomy_platform
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    agent = HonestAgent(live_platform.url, tokens[0])
    url = f"{live_platform.url}/api/v1/leases"
    json_type = {"content-type": "application/json"}
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("task id as text", {"json": {"task_id": "three"}}, 422),
        ("body not an object", {"json": [1, 2]}, 422),
        ("malformed json", {"content": b'{"task_id": ', "headers": json_type}, 422),
        ("key with spaces", {"headers": {"Idempotency-Key": "no spaces allowed"}}, 422),
        ("body and key both bad", {"json": {"task_id": 1.5}, "headers": {"Idempotency-Key": "k" * 129}}, 422),
        ("html in the key", {"headers": {"Idempotency-Key": "<script>x</script>"}}, 422),
        ("unknown task", {"json": {"task_id": 999_999}}, 404),
    ]
    before = _counts(live_platform.engine)
    for name, request, status in cases:
        ours = agent.http.post("/api/v1/leases", **request)
        live_platform.app.cycle_route, route = None, live_platform.app.cycle_route
        try:
            theirs = agent.http.post("/api/v1/leases", **request)
        finally:
            live_platform.app.cycle_route = route
        assert ours.status_code == theirs.status_code == status, (name, ours.text, theirs.text)
        assert ours.content == theirs.content or ours.json() == theirs.json(), name
        assert "<script>" not in ours.text
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.post(url, headers=headers)
        assert r.status_code == 401 and "detail" in r.json(), headers
    big = b'{"task_id": 1, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert agent.http.post("/api/v1/leases", content=big, headers=json_type).status_code == 413
    assert agent.http.get("/api/v1/leases").status_code == 405  # passed on to FastAPI
    assert _counts(live_platform.engine) == before
    # A good request: a lease, and a retry with the same key gets the same one.
    key = {"Idempotency-Key": "route-lease-01"}
    first = agent.http.post("/api/v1/leases", headers=key)
    again = agent.http.post("/api/v1/leases", headers=key)
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json()["lease_id"] == again.json()["lease_id"] and len(first.json()["items"]) == 50
    # Once this contributor holds a replica of every unit there is no work for it: 204, no body.
    answers = [agent.http.post("/api/v1/leases") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [204], [r.text for r in answers]
    assert answers[-1].content == b""

"""Ids out of range, as an attacker sends them: an id beyond 64 bits (or below 1) in a path, a query or
a body is a 404 or 422 on every route of a real server, never a 500, and the server keeps working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.platform_live import HonestAgent, admin_headers, setup_task

HUGE = "99999999999999999999999"  # the id: 77 bits
JUST_OVER = str(2**63)  # one past the largest BIGINT
NEGATIVE = "-99999999999999999999999"
BAD_IDS = (HUGE, JUST_OVER, NEGATIVE)


def _requests(bad: str, lease: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx options) for every route that takes an id, with `bad` in that id."""
    sub = {
        "idempotency_key": "edge-ids-0001",
        "model_fingerprint": lease["task"]["model_fingerprint"],
        "results": [{"item_id": it["item_id"], "score": 0.1} for it in lease["items"]],
    }
    body_id = int(bad)  # a JSON number, as a script would send it
    return [
        # the public reads and the dashboard
        ("GET", f"/api/v1/contributors/{bad}", {}),
        ("GET", f"/contributors/{bad}", {}),
        ("GET", f"/submissions/{bad}", {}),
        ("GET", f"/feed/images/{bad}", {}),
        ("GET", f"/api/v1/feed?after_id={bad}", {}),
        ("GET", f"/api/v1/ledger?before_id={bad}", {}),
        ("GET", f"/api/v1/ledger?after_id={bad}", {}),
        ("GET", f"/api/v1/ledger?submission_id={bad}", {}),
        ("GET", f"/ledger?before_id={bad}", {}),
        ("GET", f"/partials/ledger?before_id={bad}", {}),
        # operators
        ("POST", f"/api/v1/agents/{bad}/revoke", {"headers": admin_headers()}),
        ("POST", f"/api/v1/contributors/{bad}/pause", {"headers": admin_headers(), "json": {"reason": "x"}}),
        ("POST", f"/api/v1/contributors/{bad}/unpause", {"headers": admin_headers()}),
        # agents
        ("POST", "/api/v1/leases", {"json": {"task_id": body_id}}),
        ("POST", f"/api/v1/leases/{bad}/heartbeat", {}),
        ("DELETE", f"/api/v1/leases/{bad}", {}),
        ("GET", f"/api/v1/leases/{bad}/images/{lease['items'][0]['item_id']}", {}),
        ("POST", f"/api/v1/leases/{bad}/submit", {"json": sub}),
        ("POST", f"/api/v1/leases/{bad}/submit-and-lease", {"json": sub}),
        (
            "POST",
            f"/api/v1/leases/{lease['lease_id']}/submit-and-lease",
            {"json": {**sub, "next_task_id": body_id}},
        ),
    ]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_beyond_64_bits_are_404_or_422_never_500(live_platform: Any, small_pool: Path, bad: str) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    agent = HonestAgent(live_platform.url, tokens[0])
    lease = agent.lease()
    assert lease is not None
    answers = {}
    for method, path, options in _requests(bad, lease):
        headers = options.pop("headers", None) or dict(agent.http.headers)
        r = httpx.request(method, live_platform.url + path, headers=headers, timeout=30, **options)
        answers[(method, path)] = (r.status_code, r.text[:200])
    wrong = {k: v for k, v in answers.items() if v[0] not in (404, 422)}
    assert not wrong, wrong
    assert not any("Traceback" in text or "Internal Server Error" in text for _, text in answers.values())
    # The largest id that fits is an ordinary id that names nothing.
    top = str(2**63 - 1)
    assert httpx.get(f"{live_platform.url}/api/v1/ledger?before_id={top}").status_code == 200
    assert httpx.get(f"{live_platform.url}/contributors/{top}").status_code == 404
    assert agent.http.post(f"/api/v1/leases/{top}/heartbeat").status_code == 404
    # Ids start at 1 (cursors such as after_id at 0): below that nothing is named either.
    for method, path, options in _requests("-1", lease):
        headers = options.pop("headers", None) or dict(agent.http.headers)
        r = httpx.request(method, live_platform.url + path, headers=headers, timeout=30, **options)
        assert r.status_code in (404, 422), (method, path, r.status_code, r.text[:200])
    # Nothing was harmed: the lease still goes through.
    assert agent.submit(lease, agent.answers(lease)).status_code == 200

"""Scores are strict numbers, as the README promises: a score sent as a string (`"0.5"`, `" 1e-1 "`)
or a boolean is a 422 on both unit-cycle calls and nothing is stored; a JSON integer (0, 1, -1) is
a number and is taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.platform_live import HonestAgent, setup_task

from vlcurate.server import db

NOT_NUMBERS = ["0.5", " 1e-1 ", "1", True, False]


def _submissions(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(db.submissions)).scalar_one())


@pytest.mark.parametrize("call", ["submit", "submit-and-lease"])
def test_scores_must_be_numbers_not_strings_or_booleans(
    live_platform: Any, small_pool: Path, call: str
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=1)
    agent = HonestAgent(live_platform.url, tokens[0])
    lease = agent.lease()
    assert lease is not None
    good = agent.answers(lease)
    at = next(i for i, r in enumerate(good) if r["status"] == "ok")
    path = f"/api/v1/leases/{lease['lease_id']}/{call}"

    def body(score: Any, key: str) -> dict[str, Any]:
        results = [dict(r) for r in good]
        results[at]["score"] = score
        return {
            "idempotency_key": key,
            "model_fingerprint": lease["task"]["model_fingerprint"],
            "results": results,
        }

    for n, bad in enumerate(NOT_NUMBERS):
        r = agent.http.post(path, json=body(bad, f"strict-score-{n:04d}"))
        assert r.status_code == 422, (bad, r.text)
        assert ["body", "results", str(at), "score"] in [e["loc"] for e in r.json()["errors"]], r.text
        assert "valid number" in r.json()["detail"]
    assert _submissions(live_platform.engine) == 0
    # An integer is a number: 0 is taken as 0.0 (a 200, whatever the verifier then makes of it).
    r = agent.http.post(path, json=body(0, "strict-score-int"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["submission"] if call == "submit-and-lease" else answer)["lease_id"] == lease["lease_id"]
    assert _submissions(live_platform.engine) == 1

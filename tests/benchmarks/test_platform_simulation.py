"""The cheater simulation at a reduced size: every strategy is caught, no honest contributor is
paused, nothing is paid for dishonest work, and the ledger balances (benchmarks/platform_simulation.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _simulation() -> Any:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import platform_simulation

    return platform_simulation


@pytest.mark.slow
def test_every_cheater_caught_and_nothing_wrongly_paid(tmp_path: Path) -> None:
    sim = _simulation()
    # The sleeper fakes 25% of each unit (10% in the benchmark) so that a small pool is enough to
    # catch it for sure; everything else is the benchmark's own setting, on a real server.
    r = sim.run(
        pairs=2560,
        honest=4,
        cheaters_per_strategy=1,
        trust_after=3,
        sleeper_garbage=0.25,
        modes=("adaptive",),
        max_seconds=150,
        workdir=tmp_path,
    )
    m = r["modes"]["adaptive"]
    assert m["completed"] and m["all_units_verified"], m["units_by_state"]
    for name in sim.STRATEGIES:
        s = m["strategies"][name]
        assert s["caught_share"] == 1.0, (name, s)
        assert s["errors"] == [], (name, s["errors"])
        assert s["dishonest_credited_net"] == 0.0, (name, s)
    for name in sim.ISSUE_STRATEGIES:
        assert m["strategies"][name]["max_cheating_units_to_catch"] <= sim.FEW_UNITS, name
    assert m["honest"]["paused"] == 0, m["honest"]["paused_names"]
    assert m["honest"]["errors"] == []
    assert m["wrongly_paid_points"] == 0.0, m["wrongly_paid_detail"]
    assert m["ledger_audit_problems"] == []
    assert m["submissions_credited_twice"] == 0
    assert m["verified_pairs_off_by_more_than_tolerance"] == 0
    assert m["verified_status_mismatches"] == 0
    assert m["verified_max_abs_error"] <= 0.0051  # the honest agents' noise, nothing more
    replay = m["strategies"]["replay"]["notes"][0]
    assert replay["same_key_replay"] == {"status": 200, "replayed": True, "same_submission": True}
    rejected = replay["new_key_same_lease_status"] + replay["new_key_new_lease_status"]
    assert rejected and all(400 <= s < 500 for s in rejected)
    # an old key on a new lease is never a new submission: a 4xx, or the first answer replayed
    for seen in replay["old_key_new_lease"] + replay["old_key_relabelled_new_lease"]:
        assert 400 <= seen["status"] < 500 or (seen["replayed"] and seen["same_submission"]), seen
    assert m["overhead"] is not None and m["overhead"] > 1.0

"""Faults at a reduced size (benchmarks/platform_faults.py): agents dying mid-unit, the server
killed with SIGKILL and restarted, PostgreSQL connections dropped; afterwards every pair has exactly
one verified score, the ledger balances, nothing is lost or credited twice. The agents work as the
bundled agent does (one submit-and-lease call per unit), and the audit catches a credit left standing
on a paused contributor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _faults() -> Any:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import platform_faults

    return platform_faults


@pytest.mark.slow
def test_faults_lose_nothing_and_pay_once(tmp_path: Path) -> None:
    faults = _faults()
    r = faults.run(
        db="both",
        pairs=1280,
        honest=3,
        vanishers=2,
        kills=1,
        drops=2,
        lease_seconds=8,
        max_seconds=150,
        workdir=tmp_path,
    )
    assert "sqlite" in r["runs"]
    for backend, run in r["runs"].items():
        if "skipped" in run:
            continue
        assert run["completed"], (backend, run["units_by_state"], run["events"])
        assert all(e["done"] for e in run["events"]), (backend, run["events"])
        exp = run["export"]
        assert exp["every_pair_exactly_one_verified_score"], (backend, exp)
        assert exp["uids_exported"] == exp["pairs_in_dataset"]
        assert run["ledger_audit_problems"] == [], backend
        assert run["submissions_credited_twice"] == 0, backend
        assert run["unit_paid_twice_to_one_contributor"] == 0, backend
        assert run["submissions_lost"] == 0, backend
        assert run["agents"]["paused"] == [], backend
        assert run["agents"]["submissions_answered_200"] > 0
        # one request per unit cycle, as the bundled agent: every unit was reported with
        # submit-and-lease, and most of them brought the next unit along
        agents = run["agents"]
        assert agents["submit_and_lease_cycles"] == agents["submissions_answered_200"], (backend, agents)
        assert sum(agents["cycles_without_next_unit"].values()) < agents["submit_and_lease_cycles"] / 2, (
            backend,
            agents,
        )
        # a lease left behind by an agent that vanished was requeued (or its late submission counted)
        assert all(s in ("expired", "valid", "invalid") for s in run["vanished_leases_final_state"].values())
        # a credit left standing on a paused contributor is caught, by the function and the command
        planted = run["audit_catches_credit_on_paused"]
        assert planted["planted"] and planted["units_with_its_standing_credits"] >= 1, (backend, planted)
        assert planted["every_unit_flagged"] and planted["cli_every_unit_flagged"], (backend, planted)
        assert planted["cli_exit_code"] == 1, (backend, planted)
        assert all(t for t in r["targets"][backend].values()), (backend, r["targets"][backend])
    if "postgresql" in r["runs"] and "skipped" not in r["runs"]["postgresql"]:
        drops = [e for e in r["runs"]["postgresql"]["events"] if e["kind"] == "drop_db"]
        assert drops and all(e["backends_terminated"] >= 1 for e in drops)

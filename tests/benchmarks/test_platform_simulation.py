"""The cheater simulation at a reduced size (benchmarks/platform_simulation.py), on SQLite and, when
it is reachable, PostgreSQL. Real servers, real HTTP, each simulated contributor from its own
loopback address (the server links accounts seen from one address).

- Single cheaters: every one that sends junk is paused within a few units and keeps nothing, no
  honest contributor is paused, and the ledger balances.
- Colluding groups (set difference, feed scraping, memory, walking away, hoarding, poisoning, a
  sleeper ring, a copy ring): none is paid for junk, no junk becomes the answer of a hidden check,
  no junk-verified unit stands, leases held and walk-aways are capped, accounts from one address are
  linked, and honest contributors never meet a check they have seen before.
"""

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


# Two or three accounts per group keep the run small; honest agents stay the majority.
SMALL_GROUPS = {
    "setdiff": 2,
    "feed": 2,
    "memory": 2,
    "walkaway": 2,
    "hoard": 2,
    "poison": 3,
    "sleeper_ring": 2,
    "copy_ring": 2,
}


def _runs(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    assert "sqlite" in r["runs"]
    return [(b, modes["adaptive"]) for b, modes in r["runs"].items() if "skipped" not in modes]


def _common(where: str, m: dict[str, Any]) -> None:
    """What must hold in every run: nothing paid for junk, a clean answer key, no junk-verified unit,
    no honest contributor paused, the ledger balanced."""
    assert m["server_links_loopback"], where + "the server has no --link-loopback"
    assert m["completed"] and m["all_units_verified"], (where, m["units_by_state"])
    assert m["junk_paid_points"] == 0.0, (where, m["wrongly_paid_detail"])
    assert m["ledger_audit_problems"] == [], where
    assert m["submissions_credited_twice"] == 0, where
    assert m["junk_check_answers"] == 0, (where, m["check_answers"])
    assert set(m["check_answers"]["by_source"]) == {"server"}, (where, m["check_answers"])
    assert m["junk_verified_units_standing"] == 0, (where, m["junk_verified_units"])
    # A verified pair off the truth can only come from a copier that landed on its partner's unit
    # and copied, by caption, the score of another pair with the same caption: two replicas agree
    # with one pair of 64 apart (agree_fraction 0.98). Junk never verifies a pair.
    for u in m["verified_units_with_pairs_off"]:
        assert any("copy" in name for name in u["valid_from"]), (where, u)
    assert m["honest"]["paused"] == 0, (where, m["honest"]["paused_names"])
    assert m["honest"]["errors"] == [], where
    repeat = m["check_repeat_rate"]["honest"]
    assert repeat["contributors"] > 0 and repeat["max"] == 0.0, (where, repeat)


@pytest.mark.slow
def test_every_single_cheater_stopped_and_nothing_paid_for_junk(tmp_path: Path) -> None:
    sim = _simulation()
    # The sleeper fakes 25% of each unit (10% in the benchmark) so that a small pool is enough to
    # catch it for sure; units of 64 with 8 checks catch a partial faker faster than the default.
    r = sim.run(
        pairs=2560,
        honest=4,
        cheaters_per_strategy=1,
        groups={},
        unit_size=64,
        gold_per_unit=8,
        trust_after=3,
        sleeper_garbage=0.25,
        modes=("adaptive",),
        db="both",
        max_seconds=150,
        workdir=tmp_path,
    )
    for backend, m in _runs(r):
        where = f"{backend}: "
        _common(where, m)
        # Every junk sender is paused within a few units and keeps nothing. The copier is left out:
        # it hands leases back looking for its partner's unit until the walk-away limit refuses
        # it, or, landing there, sends correct answers (measured, in `no_work_paid_points`).
        for name in sim.STRATEGIES:
            s = m["strategies"][name]
            assert s["errors"] == [], (where, name, s["errors"])
            if name != "copy":
                assert s["caught_share"] == 1.0, (where, name, s)
                assert s["dishonest_credited_net"] == 0.0, (where, name, s)
                assert s["max_cheating_units_to_catch"] <= sim.FEW_UNITS, (where, name, s)
        replay = m["strategies"]["replay"]["notes"][0]
        assert replay["same_key_replay"] == {"status": 200, "replayed": True, "same_submission": True}
        rejected = replay["new_key_same_lease_status"] + replay["new_key_new_lease_status"]
        assert rejected and all(400 <= s < 500 for s in rejected)
        for seen in replay["old_key_new_lease"] + replay["old_key_relabelled_new_lease"]:
            assert 400 <= seen["status"] < 500 or (seen["replayed"] and seen["same_submission"]), seen
        assert m["overhead"] is not None and m["overhead"] > 1.0


@pytest.mark.slow
def test_no_colluding_group_paid_for_junk(tmp_path: Path) -> None:
    sim = _simulation()
    r = sim.run(
        pairs=3840,
        honest=20,
        cheaters_per_strategy=0,
        strategies=(),
        groups=SMALL_GROUPS,
        trust_after=3,
        modes=("adaptive",),
        db="both",
        max_seconds=150,
        workdir=tmp_path,
    )
    for backend, m in _runs(r):
        where = f"{backend}: "
        _common(where, m)
        honest = m["honest"]["agents"]
        assert honest > m["population"] - honest, (where, m["population"])
        assert set(m["groups"]) == {f"ring-{s}" for s in SMALL_GROUPS}, where
        for name, g in m["groups"].items():
            assert g["errors"] == [], (where, name, g["errors"])
            assert g["junk_paid_points"] == 0.0, (where, name, g)
            # accounts seen from one address are linked; the others are not
            if g["shared_origin"]:
                assert g["linked_pairs_seen_by_server"] >= 1, (where, name, g)
            else:
                assert g["linked_pairs_seen_by_server"] == 0, (where, name, g)
            # walking away is limited (30 an hour by default; a member may hold 2 leases when it
            # reaches the limit), and so is holding leases (2 per agent)
            assert max(g["hand_backs_per_account"]) <= 32, (where, name, g["hand_backs_per_account"])
            assert g["max_leases_held_by_one_account"] <= 2, (where, name, g)
        # the pair that only walks away never gets a unit it can junk safely
        assert m["groups"]["ring-walkaway"]["units_submitted"] == 0, (where, m["groups"]["ring-walkaway"])
        # a copier linked to its worker is never paid for the copy
        assert m["groups"]["ring-copy_ring"]["no_work_paid_points"] == 0.0, where

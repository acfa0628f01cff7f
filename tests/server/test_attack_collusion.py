"""Issue 13 as attacks on a real server (SQLite, then PostgreSQL): two accounts that agree on junk,
accounts run from one address, and what happens to quorum credits when a member turns out a cheater.

Each test plays the attack over HTTP and then judges the outcome in the server's database.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.server import attack_kit as kit


def test_two_accounts_agreeing_on_junk_are_never_paid(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        # 6 units of 16; each account runs 2 agents holding 2 leases each (the default caps), so the
        # two accounts always hold some unit together.
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=16, gold_per_unit=4)
        a = w.account("mallory-a", agents=2)
        b = w.account("mallory-b", agents=2)
        log = kit.set_difference_attack(a, b, unit_size=16, rounds=3)

        paid = {x.name: w.points(x) for x in (a, b)}
        story = (
            f"paid {paid}; shared units {log.shared_units}, set differences {log.differences}, "
            f"walked away from {log.walked_away} leases, {log.submitted} submissions "
            f"(HTTP {sorted(set(log.statuses))}), answers {[(s['state'], s['detail']) for s in log.answers]}"
        )
        assert paid == {"mallory-a": 0.0, "mallory-b": 0.0}, f"junk was paid: {story}"
        assert log.shared_units, f"the two accounts never held one unit together: {story}"
        # Every replica of a unit sees the same items: comparing two leases reveals nothing.
        assert all(d == (0, 0) for d in log.differences), f"replicas of one unit differ: {story}"
        assert all(s < 500 for s in log.statuses), story
        assert a.me()["paused"] and b.me()["paused"], f"junk accounts still working: {story}"
        assert w.verified_units_with(a, b) == [], f"junk units stand verified: {story}"
        assert w.audit() == []


def test_linked_accounts_are_one_voice(platform_db: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 16), unit_size=16, gold_per_unit=2)  # one unit
        shared = w.new_host()
        one = w.account("sock-1", host=shared)
        two = w.account("sock-2", host=shared)  # another account, same machine
        other = w.account("stranger")

        first = one.agent.work_one()
        second = two.agent.work_one()
        assert first is not None and second is not None, "the one unit was not leased to both accounts"
        unit = first["unit_id"]
        assert second["unit_id"] == unit
        assert (first["state"], second["state"]) == ("pending", "pending"), (
            f"two linked accounts verified a unit on their own: {first}, {second}"
        )
        assert w.unit_state(unit) == "open"
        assert w.points(one) == w.points(two) == 0.0

        third = other.agent.work_one()
        assert third is not None and third["unit_id"] == unit
        assert third["state"] == "valid" and third["points_credited"] == 16.0, third
        assert w.unit_state(unit) == "verified"
        # The first of the linked pair is paid, the other not; both submissions were right.
        assert (w.points(one), w.points(two)) == (16.0, 0.0)
        assert w.ledger(two) == []
        assert w.points(other) == 16.0
        assert [s.state for s in w.submissions(one) + w.submissions(two)] == ["valid", "valid"]
        assert w.audit() == []


def _verify_together(w: kit.World, *accounts: kit.Account) -> int:
    outcomes = [acc.agent.work_one() for acc in accounts]
    assert all(o is not None for o in outcomes), outcomes
    units = {o["unit_id"] for o in outcomes if o is not None}
    assert len(units) == 1, outcomes
    (unit,) = units
    assert w.unit_state(unit) == "verified", outcomes
    return unit


def test_pausing_a_cheater_reverses_the_quorum_it_was_part_of(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 16), unit_size=16, gold_per_unit=2)  # one unit
        cheat, partner, later = w.account("turncoat"), w.account("partner"), w.account("latecomer")
        unit = _verify_together(w, cheat, partner)
        assert w.points(cheat) == w.points(partner) == 16.0

        r = w.pause(cheat, "ran two accounts")
        assert r.status_code == 200, r.text
        assert r.json()["paused"] is True

        def reversed_credits(acc: kit.Account) -> list[Any]:
            rows = w.ledger(acc)
            undone = {e.reverses_id for e in rows if e.kind == "reversal"}
            return [e for e in rows if e.kind == "credit" and e.unit_id == unit and e.id in undone]

        rows = {acc.name: w.ledger(acc) for acc in (cheat, partner)}
        assert reversed_credits(cheat), f"the cheater's quorum credit stands: {rows}"
        assert reversed_credits(partner), f"the credit resting on the cheater's word stands: {rows}"
        assert w.points(cheat) == w.points(partner) == 0.0
        assert w.unit_state(unit) == "open", "the unit the cheater verified was not reopened"
        assert w.audit() == []

        # An independent contributor agrees with the partner: the unit stands again, the partner is
        # paid again for the same work, the cheater never.
        third = later.agent.work_one()
        assert third is not None and third["unit_id"] == unit, third
        assert third["state"] == "valid", third
        assert w.unit_state(unit) == "verified"
        assert w.points(partner) == 16.0 and w.points(later) == 16.0 and w.points(cheat) == 0.0
        assert cheat.agent.ask().status_code == 403
        assert w.audit() == []


def test_the_audit_reports_a_credit_resting_on_a_paused_contributor(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 16), unit_size=16, gold_per_unit=2)
        cheat, partner = w.account("turncoat"), w.account("partner")
        _verify_together(w, cheat, partner)
        assert w.audit() == []
        w.set_paused_behind_the_ledgers_back(cheat)  # paused, but its quorum credits not reversed
        problems = w.audit()
        assert problems, "ledger.audit is clean although two credits rest on a paused contributor"

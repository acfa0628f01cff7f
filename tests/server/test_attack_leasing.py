"""Issue 13 as attacks on leasing (SQLite, then PostgreSQL, real server): landing two accounts on one
unit, steering by handing leases back, hoarding leases, and starving a unit by walking away."""

from __future__ import annotations

import time

import pytest
from tests.server import attack_kit as kit


def test_two_accounts_leasing_one_after_the_other_land_apart(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rounds = 10
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 192), unit_size=8, gold_per_unit=2)  # 24 units
        a, b = w.account("pair-a"), w.account("pair-b")
        together = 0
        for _ in range(rounds):
            la, lb = a.agent.lease(), b.agent.lease()
            assert la is not None and lb is not None
            together += la["unit_id"] == lb["unit_id"]
            for acc, lease in ((a, la), (b, lb)):  # honest work, so nobody walks away or is paused
                r = acc.agent.send(lease, acc.agent.answers(lease))
                assert r.status_code == 200, r.text
        # Random assignment over ~20 open units: a few coincidences at most (lowest-first: all).
        assert together <= rounds // 2, f"{together} of {rounds} consecutive lease pairs landed on one unit"
        assert w.audit() == []


def test_handing_leases_back_to_pick_a_unit_is_capped(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cap = 5
    with kit.platform(platform_db, max_walkaways_per_hour=cap) as w:
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=8, gold_per_unit=2, lease_seconds=5)
        a, b = w.account("steer-a"), w.account("steer-b")  # 12 units of 8
        kit.wait_out_the_hour()
        target = a.agent.lease()
        assert target is not None
        # b wants a's unit. A lease let expire is walking away too...
        expired = b.agent.lease()
        assert expired is not None
        time.sleep(max(0.0, _seconds_left(expired)) + 1.0)
        # ...and so is handing back whatever is not the wanted unit, again and again.
        walked, hits = 1, 0
        refused = None
        for _ in range(4 * cap):
            r = b.agent.ask()
            if r.status_code != 200:
                refused = r
                break
            hits += r.json()["unit_id"] == target["unit_id"]
            back = b.agent.release(r.json())
            assert back.status_code == 204, back.text
            walked += 1
        story = f"{walked} leases walked away from (1 expired), landed on the wanted unit {hits} times"
        assert refused is not None, f"{story}, never refused"
        assert refused.status_code == 429, f"{story}, then {refused.status_code} {refused.text[:200]}"
        assert cap <= walked <= cap + 1, f"{story}: refused with a cap of {cap}"
        # Handing back is not a sin by itself: another contributor is not held up.
        other = w.account("bystander")
        assert other.agent.lease() is not None


def test_one_token_or_one_contributor_cannot_hoard_leases(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:  # default caps: 2 per agent, 4 per contributor
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=8, gold_per_unit=2)  # 12 units
        hoarder = w.account("hoarder", agents=3)
        first, second, third = hoarder.agents
        held = []
        for _ in range(2):
            r = first.ask()
            assert r.status_code == 200, r.text
            held.append(r.json())
        over = first.ask()
        assert over.status_code == 429, f"a third lease for one token: {over.status_code} {over.text[:200]}"
        assert "cap 2" in over.json()["detail"], over.json()
        hb = first.http.post(f"/api/v1/leases/{held[0]['lease_id']}/heartbeat")
        assert hb.status_code == 200, hb.text  # keeping a lease alive is fine; a third one is not
        assert first.ask().status_code == 429
        for _ in range(2):
            r = second.ask()
            assert r.status_code == 200, r.text
        over = third.ask()
        assert over.status_code == 429, (
            f"a fifth lease for one contributor: {over.status_code} {over.text[:200]}"
        )
        assert "cap 4" in over.json()["detail"], over.json()
        # Handing one back makes room again.
        assert first.release(held[0]).status_code == 204
        assert third.ask().status_code == 200


def test_walking_away_does_not_starve_a_unit(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        # 3 units of 16, quorum 2, two contributors (the README's alice and bob): every unit needs both.
        w.make_task(kit.pool(tmp_path_factory, 48), unit_size=16, gold_per_unit=2, lease_seconds=5)
        alice, bob = w.account("alice"), w.account("bob")
        handed_back = alice.agent.lease()  # Ctrl-C: the agent hands the lease back
        assert handed_back is not None
        assert alice.agent.release(handed_back).status_code == 204
        forgotten = alice.agent.lease()  # the agent dies: the lease expires
        assert forgotten is not None
        time.sleep(max(0.0, _seconds_left(forgotten)) + 1.0)
        assert alice.agent.http.post(f"/api/v1/leases/{forgotten['lease_id']}/heartbeat").status_code == 409

        for _ in range(6):
            done_a = alice.agent.work_one()
            done_b = bob.agent.work_one()
            if done_a is None and done_b is None:
                break
        left = [(u.id, u.state) for u in w.units() if u.state != "verified"]
        walked = sorted({handed_back["unit_id"], forgotten["unit_id"]})
        assert left == [], f"units never verified: {left} (alice walked away from units {walked})"
        assert w.points(alice) == w.points(bob) == 48.0
        assert w.audit() == []


def _seconds_left(lease: dict[str, object]) -> float:
    import datetime as dt

    deadline = dt.datetime.fromisoformat(str(lease["deadline"]))
    return (deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()

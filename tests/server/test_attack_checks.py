"""Issue 13 as attacks on the hidden checks (SQLite, then PostgreSQL, real server): poisoning the
answer key with a junk quorum, and spotting checks by repetition or from the public feed."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from tests.server import attack_kit as kit

from vlcurate.score.memory import score_pairs

# Server-scored answers for exactly the checks of 12 units x 2 (units of 8 of the 96 pairs): every unit
# has its checks, and (before issue 13) the pool was small enough that a contributor soon met the
# same checks again and crowd answers promoted into it made up much of it.
GOLD = {"self_score": 24}


def test_a_junk_quorum_never_becomes_the_answer_key(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=8, gold_per_unit=2, gold=GOLD)  # 12 units
        a = w.account("poison-a", agents=2)
        b = w.account("poison-b", agents=2)
        log = kit.set_difference_attack(a, b, unit_size=8, rounds=2)
        honest = w.account("honest")
        outcomes = []
        for _ in range(6):
            got = honest.agent.work_one()
            if got is None:
                break
            outcomes.append((got["unit_id"], got["state"], got["detail"]))
        me = honest.me()
        gold = w.gold()

        sources = Counter(g.source for g in gold)
        story = f"check sources {dict(sources)}; colluders' answers {[s['state'] for s in log.answers]}"
        assert set(sources) <= {"server", "operator"}, f"crowd answers in the answer key: {story}"
        # And the server's answers are the pinned model's own: re-score every check here.
        truth = _pinned_scores(w, [g.item_id for g in gold])
        wrong = [
            (g.item_id, g.score, truth[g.item_id])
            for g in gold
            if g.status == "ok" and (truth[g.item_id] is None or abs(g.score - truth[g.item_id]) > 1e-4)
        ]
        assert wrong == [], f"checks whose answer is not the pinned model's: {wrong}; {story}"
        assert not me["paused"], f"honest agent paused: {me['pause_reason']}; its work {outcomes}; {story}"
        assert all("hidden checks" not in detail for _, _, detail in outcomes), outcomes
        assert w.points(a) == w.points(b) == 0.0, story
        assert w.audit() == []


def _pinned_scores(w: kit.World, item_ids: list[int]) -> dict[int, float | None]:
    from sqlalchemy import select

    from vlcurate.server import db

    with w.engine.connect() as conn:
        rows = conn.execute(
            select(db.items.c.id, db.items.c.caption, db.item_images.c.data)
            .join(db.item_images, db.item_images.c.item_id == db.items.c.id)
            .where(db.items.c.id.in_(item_ids))
        ).all()
    scored = score_pairs(kit.Agent.scorer(), [bytes(r.data) for r in rows], [r.caption for r in rows])
    return {r.id: (p.score if p.status == "ok" else None) for r, p in zip(rows, scored, strict=True)}


def test_a_contributor_does_not_meet_the_same_check_twice(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=8, gold_per_unit=2, gold=GOLD)  # 12 units
        worker = w.account("memory")
        served: list[set[int]] = []  # item ids per lease, told apart the attacker's way
        index = w.item_keys()
        for _ in range(10):
            lease = worker.agent.lease()
            assert lease is not None
            served.append({index[k] for k in worker.agent.keys(lease) if k in index})
            r = worker.agent.send(lease, worker.agent.answers(lease))
            assert r.status_code == 200, r.text
        checks = {g.item_id for g in w.gold()}
        seen = Counter(i for items in served for i in items & checks)
        repeats = {i: n for i, n in seen.items() if n > 1}
        assert seen, "no hidden check was served in 10 leases"
        rate = sum(n - 1 for n in seen.values()) / sum(seen.values())
        assert repeats == {}, f"checks served again (repeat rate {rate:.0%}): {repeats}"


def test_the_public_feed_does_not_tell_checks_apart(
    platform_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with kit.platform(platform_db) as w:
        w.make_task(kit.pool(tmp_path_factory, 96), unit_size=8, gold_per_unit=2, gold=GOLD)  # 12 units
        alice, bob = w.account("alice"), w.account("bob")
        for _ in range(12):
            alice.agent.work_one()
            bob.agent.work_one()
            if sum(u.state == "verified" for u in w.units()) >= 3:
                break
        verified = [u for u in w.units() if u.state == "verified"]
        assert len(verified) >= 3
        checks = {g.item_id for g in w.gold()}
        public = httpx.Client(base_url=w.url, timeout=30)  # no token: anyone
        feed = {e["item_id"] for e in public.get("/api/v1/feed", params={"limit": 500}).json()}

        def looks(item_id: int) -> tuple[bool, int, str, tuple[str, ...]]:
            r = public.get(f"/feed/images/{item_id}")
            names = tuple(sorted(h for h in r.headers if h not in ("date", "content-length")))
            return item_id in feed, r.status_code, r.headers.get("content-type", ""), names

        in_units = [i for u in verified for i in range(u.first_item, u.last_item + 1)]
        hidden = [i for i in in_units if i in checks]
        assert hidden, f"no check among the items of verified units {[u.id for u in verified]}"
        seen_checks = {i: looks(i) for i in hidden}
        seen_others = {i: looks(i) for i in in_units if i not in checks}
        assert set(seen_checks.values()) == set(seen_others.values()) == {next(iter(seen_others.values()))}, (
            f"checks {seen_checks} look different from the other items {seen_others}"
        )
        assert next(iter(seen_others.values()))[:2] == (True, 200)

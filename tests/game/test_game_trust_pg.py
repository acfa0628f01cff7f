"""The judging and reversal rules on PostgreSQL too (the platform's second database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.game import test_game_trust as rules
from tests.game.conftest import Game, Pools, make_game
from tests.vlm_live import VLMServer


@pytest.fixture
def pg_game(platform_db: str, pools: Pools, vlm: VLMServer) -> Iterator[Game]:
    if not platform_db.startswith("postgresql"):
        pytest.skip("SQLite is covered by test_game_trust.py")
    g = make_game(platform_db, pools, vlm)
    yield g
    g.engine.dispose()


def test_confirmation_links_and_late_reversal_on_postgresql(pg_game: Game) -> None:
    rules.test_linked_accounts_never_judge_each_other_and_a_late_link_reverses_the_pay(pg_game)

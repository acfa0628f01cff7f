"""An agent plays GAP over real HTTP (uvicorn) with a prober VLM: it finds the tainted images'
wrong answers, is recorded as `origin: agent`, and earns under the same rules as people."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select
from tests.game.conftest import Pools
from tests.platform_live import ADMIN, InThreadServer
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.server import db


def test_an_agent_plays_a_session_through_the_api(tmp_path: Path, pools: Pools, vlm: VLMServer) -> None:
    with InThreadServer(str(tmp_path / "p.db")) as server:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        g = httpx.post(
            server.url + "/api/v1/game/games",
            headers=admin,
            json={"name": "g1", "pool": str(pools.main), "easy_pool": str(pools.easy)}
            | {"vlm_url": vlm.base_url, "model": "tiny-synth"},
            timeout=60,
        )
        assert g.status_code == 201, g.text
        a = httpx.post(
            server.url + "/api/v1/agents", headers=admin, json={"contributor": "bot", "name": "gap"}
        )
        assert a.status_code in (200, 201), a.text
        r = CliRunner().invoke(
            app,
            [
                *("agent", "play", "--game", "g1", "--server", server.url),
                *("--vlm-url", vlm.base_url, "--questions", "1"),
            ],
            env={"VLCURATE_TOKEN": a.json()["token"]},
        )
        assert r.exit_code == 0, r.output
        assert "played 1 sessions" in r.output
        with server.engine.connect() as conn:
            player = conn.execute(select(db.game_players)).one()
            flags = conn.execute(select(db.game_flags.c.tainted)).all()
            points = conn.execute(
                select(db.contributors.c.points).where(db.contributors.c.id == player.contributor_id)
            ).scalar_one()
    assert player.origin == "agent" and player.kind == "token"
    tainted_flags = sum(1 for f in flags if f.tainted)
    assert tainted_flags >= 4  # the honest prober disagrees with the tainted answers
    assert points == 20.0 * tainted_flags

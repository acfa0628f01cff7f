"""GAP fixtures: two synthetic image pools (easy: one object; main: three or four), the tiny-synth
VLM server (one process per test session), and the platform app with a game on a real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from tests.platform_live import ADMIN
from tests.vlm_live import VLMServer

from vlcurate.server import db
from vlcurate.synth.scene import Scene, generate_scene, scene_rng

BOT_TOKEN = "123456:TEST-bot-token"
N_POOL = 14


def _write_pool(root: Path, n: int, n_objects: int, seed: int) -> dict[str, Scene]:
    root.mkdir(parents=True)
    scenes = {}
    for i in range(n):
        s = generate_scene(scene_rng(seed, i), n_objects=n_objects)
        (root / f"img{i:03d}.png").write_bytes(s.encode("png"))
        (root / f"img{i:03d}.txt").write_text(s.caption_text)
        scenes[f"img{i:03d}"] = s
    return scenes


@dataclass
class Pools:
    easy: Path
    main: Path
    scenes: dict[bytes, Scene] = field(default_factory=dict)


@pytest.fixture(scope="session")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Pools:
    root = tmp_path_factory.mktemp("gap-pools")
    easy = _write_pool(root / "easy", N_POOL, 1, seed=11)
    main = _write_pool(root / "main", N_POOL, 3, seed=12)
    out = Pools(root / "easy", root / "main")
    for folder, scenes in (("easy", easy), ("main", main)):
        for name, s in scenes.items():
            out.scenes[(root / folder / f"{name}.png").read_bytes()] = s
    return out


@pytest.fixture(autouse=True)
def no_gold_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging tasks on tainted flags (known truth) are drawn at random; tests that count tasks
    have none (a test about them sets `judging.GOLD_SHARE` itself)."""
    from vlcurate.server.game import judging

    monkeypatch.setattr(judging, "GOLD_SHARE", 0.0)


@pytest.fixture(scope="session")
def vlm() -> Iterator[VLMServer]:
    with VLMServer() as server:
        yield server


class Game:
    """A platform app with one game, and helpers to play it as several players."""

    def __init__(self, app: Any, pools: Pools, vlm_url: str, **game: Any) -> None:
        self.app = app
        self.engine = app.state.engine
        self.pools = pools
        self.admin = TestClient(app, client=("198.51.100.1", 1000))
        r = self.admin.post(
            "/api/v1/game/games",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={
                "name": "g1",
                "pool": str(pools.main),
                "easy_pool": str(pools.easy),
                "vlm_url": vlm_url,
                "model": "tiny-synth",
                **game,
            },
        )
        assert r.status_code == 201, r.text
        self.game = r.json()
        self._n = 0

    def client(self, address: str | None = None) -> TestClient:
        self._n += 1
        return TestClient(self.app, client=(address or f"203.0.113.{self._n}", 40000 + self._n))

    def guest(self, name: str = "p", address: str | None = None) -> TestClient:
        c = self.client(address)
        r = c.post("/api/v1/game/login/guest", json={"name": name})
        assert r.status_code == 200, r.text
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        c.player_id = r.json()["player_id"]  # type: ignore[attr-defined]
        return c

    def tainted(self, image_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    select(db.game_session_images.c.tainted).where(
                        db.game_session_images.c.public_id == image_id
                    )
                ).scalar_one()
            )

    def scene(self, image_id: str) -> Scene:
        SI, Im = db.game_session_images, db.game_images
        with self.engine.connect() as conn:
            data = conn.execute(
                select(Im.c.data).join(SI, SI.c.image_id == Im.c.id).where(SI.c.public_id == image_id)
            ).scalar_one()
        return self.pools.scenes[data]

    def expire(self, image_id: str) -> None:
        """Move an image's deadline into the past (the clock a test cannot wait 120 s for)."""
        SI = db.game_session_images
        with db.begin_write(self.engine) as conn:
            conn.execute(
                update(SI).where(SI.c.public_id == image_id).values(deadline=db.utcnow().replace(year=2020))
            )

    @staticmethod
    def ask(c: TestClient, sid: str, iid: str, q: str, key: str | None = None) -> Any:
        return c.post(
            f"/api/v1/game/sessions/{sid}/images/{iid}/questions",
            json={"question": q, "client_key": key or uuid.uuid4().hex},
        )

    def play(self, c: TestClient, flag_when: Any = None) -> dict[str, Any]:
        """A whole session: one question per image; flag where `flag_when(tainted, answer_right)`."""
        s = c.post("/api/v1/game/sessions", json={"game": "g1"})
        assert s.status_code == 201, s.text
        body = s.json()
        sid = body["session_id"]
        while body["state"] == "active":
            im = body["image"]
            iid = im["image_id"]
            scene = self.scene(iid)
            r = self.ask(c, sid, iid, "How many objects are there?")
            assert r.status_code == 200, r.text
            right = r.json()["answer"].strip() == str(scene.n_objects)
            if flag_when is not None and flag_when(self.tainted(iid), right):
                f = c.post(
                    f"/api/v1/game/sessions/{sid}/images/{iid}/flag",
                    json={"question_id": r.json()["question_id"], "corrected": str(scene.n_objects)},
                )
                assert f.status_code == 200, f.text
            n = c.post(f"/api/v1/game/sessions/{sid}/next", json={"position": im["position"]})
            assert n.status_code == 200, n.text
            body = n.json()
        return body


def make_game(db_url: str, pools: Pools, vlm: VLMServer, **game: Any) -> Game:
    from vlcurate.server.app import create_app
    from vlcurate.server.settings import ServerSettings

    app = create_app(
        ServerSettings(db=db_url, admin_token=ADMIN, telegram_bot_token=BOT_TOKEN, telegram_max_age_s=3600)
    )
    return Game(app, pools, vlm.base_url, **game)


@pytest.fixture
def game(tmp_path: Path, pools: Pools, vlm: VLMServer) -> Iterator[Game]:
    g = make_game(str(tmp_path / "game.db"), pools, vlm)
    yield g
    g.engine.dispose()

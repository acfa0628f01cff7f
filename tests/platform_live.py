"""Real platform servers for tests: `vlcurate serve` in a subprocess (so it can be killed with -9
and restarted), PostgreSQL schemas made fresh per test, and a small setup helper."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PG_BASE = os.environ.get("VLCURATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN = "test-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_BASE, connect_timeout=3):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def pg_schema(base: str = PG_BASE, tag: str = "t") -> Iterator[str]:
    """A fresh PostgreSQL schema; yields a URL whose search_path points at it; dropped afterwards.

    The URL also names the connections (`application_name`), so that a test can drop exactly the
    server's connections, and cleanup ends only those, not other users of the same database.
    """
    import psycopg

    base = base.split("?", 1)[0]
    name = f"{tag.replace('-', '_')}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{base}?options=-csearch_path%3D{name}&application_name={name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND application_name = %s",
                (name,),
            )
            conn.execute(f"DROP SCHEMA {name} CASCADE")


class ServerProcess:
    """`vlcurate serve` on a free port; `kill()` is SIGKILL, `start()` brings it back on the same port."""

    def __init__(
        self, db: str, *, port: int | None = None, args: list[str] | None = None, log: Path | None = None
    ):
        self.db = db
        self.port = port or free_port()
        self.args = args or []
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "vlcurate.cli.main",
            "serve",
            "--db",
            self.db,
            "--port",
            str(self.port),
            "--admin-token",
            ADMIN,
            "--log-level",
            "warning",
            *self.args,
        ]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log}")
            try:
                if httpx.get(self.url + "/api/v1/datasets", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server did not start within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, as in a crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def setup_task(
    url: str,
    pool_dir: str,
    *,
    dataset: str = "pool",
    task: str = "t",
    contributors: int = 2,
    **task_opts: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Register `pool_dir` as a dataset, create a tiny-synth task and one agent per contributor."""
    h = admin_headers()
    r = httpx.post(
        f"{url}/api/v1/datasets", json={"name": dataset, "source": pool_dir}, headers=h, timeout=120
    )
    r.raise_for_status()
    body = {"name": task, "dataset": dataset, "model": "tiny-synth", **task_opts}
    r = httpx.post(f"{url}/api/v1/tasks", json=body, headers=h, timeout=300)
    r.raise_for_status()
    tokens = []
    for i in range(contributors):
        a = httpx.post(f"{url}/api/v1/agents", json={"contributor": f"contrib-{i}"}, headers=h, timeout=30)
        a.raise_for_status()
        tokens.append(a.json()["token"])
    return r.json(), tokens


class InThreadServer:
    """The platform app (or `app`, any ASGI app) under a real uvicorn server in a background thread."""

    def __init__(self, db: str | None = None, *, app: Any = None, **settings: Any) -> None:
        import uvicorn

        from vlcurate.server.app import create_app
        from vlcurate.server.settings import ServerSettings

        self.app = (
            app if app is not None else create_app(ServerSettings(db=db, admin_token=ADMIN, **settings))
        )
        self.engine = self.app.state.engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,  # an open event stream must not hold the shutdown
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


class HonestAgent:
    """A minimal honest agent over HTTP for server tests: lease, download, score with tiny-synth, submit."""

    _scorer: Any = None

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    @classmethod
    def scorer(cls) -> Any:
        if cls._scorer is None:
            from vlcurate.models.loader import load_scorer

            cls._scorer = load_scorer("tiny-synth", device="cpu")
        return cls._scorer

    def lease(self) -> dict[str, Any] | None:
        r = self.http.post("/api/v1/leases")
        if r.status_code == 204:
            return None
        r.raise_for_status()
        return dict(r.json())

    def answers(self, lease: dict[str, Any]) -> list[dict[str, Any]]:
        from vlcurate.score.memory import score_pairs

        images = [self.http.get(it["image_url"]).content for it in lease["items"]]
        scored = score_pairs(self.scorer(), images, [it["caption"] for it in lease["items"]])
        return [
            {"item_id": it["item_id"], "score": p.score, "status": p.status}
            for it, p in zip(lease["items"], scored, strict=True)
        ]

    def submit(
        self, lease: dict[str, Any], results: list[dict[str, Any]], key: str | None = None
    ) -> httpx.Response:
        body = {
            "idempotency_key": key or f"sub-{lease['lease_id']}-{uuid.uuid4().hex[:8]}",
            "model_fingerprint": lease["task"]["model_fingerprint"],
            "results": results,
        }
        return self.http.post(f"/api/v1/leases/{lease['lease_id']}/submit", json=body)

    def work_one(self) -> dict[str, Any] | None:
        lease = self.lease()
        if lease is None:
            return None
        r = self.submit(lease, self.answers(lease))
        r.raise_for_status()
        return dict(r.json())

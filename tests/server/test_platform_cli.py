"""The operator's commands against a real server: register, create, revoke, export, audit."""

from __future__ import annotations

from pathlib import Path

from tests.platform_live import ADMIN, HonestAgent, InThreadServer
from typer.testing import CliRunner

from vlcurate.cli.main import app


def test_operator_commands_end_to_end(tmp_path: Path, small_pool: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "p.db")
    with InThreadServer(db) as server:
        env = {"VLCURATE_SERVER": server.url, "VLCURATE_ADMIN_TOKEN": ADMIN}
        r = runner.invoke(app, ["platform", "add-dataset", "pool", str(small_pool)], env=env)
        assert r.exit_code == 0 and "300 pairs, 0 unreadable" in r.stdout
        r = runner.invoke(
            app, ["platform", "add-task", "t", "--dataset", "pool", "--unit-size", "150"], env=env
        )
        assert r.exit_code == 0 and "2 units of up to 150 pairs" in r.stdout and "quorum 2" in r.stdout
        tokens = []
        for who in ("ann", "ben", "cat"):
            r = runner.invoke(app, ["platform", "add-agent", who], env=env)
            assert r.exit_code == 0
            tokens.append(r.stdout.strip().rsplit(" ", 1)[-1])
        r = runner.invoke(app, ["platform", "revoke", "3"], env=env)
        assert r.exit_code == 0 and "revoked" in r.stdout
        assert HonestAgent(server.url, tokens[2]).http.post("/api/v1/leases").status_code == 401
        r = runner.invoke(app, ["platform", "export", "t", "--db", db, "--out", str(tmp_path / "x")])
        assert r.exit_code == 0 and "0/3 shards" in r.stdout and "not fully verified" in r.stdout
        for t in tokens[:2]:
            a = HonestAgent(server.url, t)
            while a.work_one() is not None:
                pass
        r = runner.invoke(app, ["platform", "export", "t", "--db", db, "--out", str(tmp_path / "x")])
        assert r.exit_code == 0 and "3/3 shards, 300 pairs" in r.stdout
        r = runner.invoke(app, ["platform", "audit", "--db", db])
        assert r.exit_code == 0 and "ledger balances" in r.stdout
        # Clear one-line errors: a wrong token, an unknown task, a server that is not there.
        r = runner.invoke(app, ["platform", "add-agent", "dan"], env={**env, "VLCURATE_ADMIN_TOKEN": "wrong"})
        assert r.exit_code == 2 and "HTTP 403" in r.stderr
        r = runner.invoke(app, ["platform", "export", "nope", "--db", db, "--out", str(tmp_path / "y")])
        assert r.exit_code == 2 and "no task named 'nope'" in r.stderr
        r = runner.invoke(app, ["platform", "add-agent", "dan", "--server", "http://127.0.0.1:9"], env=env)
        assert r.exit_code == 2 and "cannot reach" in r.stderr

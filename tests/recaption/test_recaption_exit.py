"""`vlcurate recaption`'s exit status: EXIT_PARTIAL (3) when pairs are left without their final
caption (a spent budget, VLM errors, an unreadable shard), 2 for usage errors. No VLM is needed:
with `--budget-requests 0` no request is ever sent. (0 for a complete run: test_recaption_live.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.platform_live import free_port
from typer.testing import CliRunner

from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app
from vlcurate.recaption.report import run_problems
from vlcurate.synth.pool import write_pool


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    write_pool(out, 8, seed=2, shard_size=4)
    return out / "shards"


def _run(inputs: str, out: Path, *extra: str) -> tuple[int, str]:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # never asked: the budget is 0
    r = CliRunner().invoke(
        app,
        ["recaption", inputs, "--out", str(out), "--vlm-url", dead, "--cache-dir", "none", "-q", *extra],
        env={"COLUMNS": "300"},
    )
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def test_a_spent_budget_is_partial(shards: Path, tmp_path: Path) -> None:
    code, out = _run(str(shards), tmp_path / "r", "--budget-requests", "0")
    assert code == EXIT_PARTIAL, out
    assert "2 of 2 shards incomplete" in out and "8 of 8 pairs not recaptioned (budget 8)" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["complete"] is False and summary["this_run"]["requests"] == 0


def test_a_truncated_shard_is_partial(shards: Path, tmp_path: Path) -> None:
    data = (shards / "00000000.tar").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000000.tar").write_bytes(data[: len(data) // 2])
    code, out = _run(str(tmp_path / "in"), tmp_path / "r", "--budget-requests", "0")
    assert code == EXIT_PARTIAL, out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["incomplete_shards"][0]["read_error"]


def test_usage_errors_stay_2(shards: Path, tmp_path: Path) -> None:
    assert _run(str(shards), tmp_path / "r", "--style", "poem")[0] == 2
    assert _run(str(tmp_path / "nope.tar"), tmp_path / "r2")[0] == 2


def test_problems_of_a_summary() -> None:
    done = {
        "shards_total": 1,
        "incomplete_shards": [],
        "pairs": 3,
        "counts_by_status": {"ok": 2, "no_caption": 1},
    }
    assert run_problems(done) == []
    bad = {**done, "counts_by_status": {"ok": 1, "decode_error": 1, "vlm_error": 1}}
    assert run_problems(bad) == ["2 of 3 pairs not recaptioned (decode_error 1, vlm_error 1)"]


def test_tiny_synth_on_photos_warns_and_on_scenes_not(shards: Path, coco_pairs: list, tmp_path: Path) -> None:
    _, out = _run(str(shards), tmp_path / "scenes", "--budget-requests", "0")
    assert "tiny-synth knows only" not in out
    manifest = tmp_path / "photos.csv"
    manifest.write_text("filepath,title\n" + "".join(f'{p.path},"{p.caption}"\n' for p in coco_pairs[:6]))
    _, out = _run(str(manifest), tmp_path / "photos", "--budget-requests", "0")
    assert out.count("warning: tiny-synth knows only") == 1, out

"""`vlcurate score`'s exit status and warnings: 0 only when everything was scored, EXIT_PARTIAL (3)
when a shard or a pair failed (all of them included), 2 for usage errors; and a warning when the
synthetic-world model scores images from elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from tests.score.shards import write_coco_shards
from typer.testing import CliRunner

from vlcurate.base.records import derive_uid
from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app
from vlcurate.models.tiny_synth_check import SynthWorldCheck
from vlcurate.synth.pool import write_pool

runner = CliRunner()
WARNING = "tiny-synth knows only"


def _score(inputs: str, out: Path, model: str, *extra: str) -> tuple[int, str]:
    r = runner.invoke(
        app,
        ["score", inputs, "--out", str(out), "--model", model, "--workers", "0", "-q", *extra],
        env={"COLUMNS": "300"},
    )
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, coco_pairs: list) -> Path:
    d = tmp_path_factory.mktemp("good")
    write_coco_shards(d, coco_pairs, n_shards=1, per_shard=6)
    return d


def test_all_done_is_0(good: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _score(str(good / "00000000.tar"), tmp_path / "r", f"local-dir:{tiny_model_dir}")
    assert code == 0, out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["complete"] is True and summary["problems"] == [] and summary["pairs_failed"] == 0


def test_every_shard_failed_is_partial_not_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "00000000.tar").write_bytes(b"this is not a tar file at all" * 40)
    code, out = _score(str(tmp_path / "00000000.tar"), tmp_path / "r", f"local-dir:{tiny_model_dir}")
    assert "0/1 done" in out
    assert code == EXIT_PARTIAL, out
    assert "1 of 1 shards not done" in out and "Traceback" not in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["complete"] is False and summary["shards_missing"] == ["00000000"]


def test_a_missing_shard_of_a_pattern_is_partial(good: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _score(str(good / "{00000000..00000001}.tar"), tmp_path / "r", f"local-dir:{tiny_model_dir}")
    assert code == EXIT_PARTIAL, out
    assert "1 of 2 shards not done" in out and "00000001" in out


def test_a_truncated_shard_is_partial(good: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = (good / "00000000.tar").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000000.tar").write_bytes(data[: int(len(data) * 0.6)])
    code, out = _score(str(tmp_path / "in"), tmp_path / "r", f"local-dir:{tiny_model_dir}")
    assert code == EXIT_PARTIAL, out
    assert "partly read" in out


def test_an_unreadable_image_is_partial_and_a_rerun_says_so_again(
    coco_pairs: list, tiny_model_dir: Path, tmp_path: Path
) -> None:
    photo = coco_pairs[0].path.read_bytes()
    (tmp_path / "in").mkdir()
    with wds.TarWriter(str(tmp_path / "in" / "00000000.tar")) as w:
        for i, data in enumerate([photo, photo[: len(photo) // 3], coco_pairs[1].path.read_bytes()]):
            caption = f"a photo {i}"
            uid = derive_uid(data, caption)
            w.write(
                {"__key__": f"k{i}", "jpg": data, "txt": caption, "json": json.dumps({"uid": uid}).encode()}
            )
    model = f"local-dir:{tiny_model_dir}"
    code, out = _score(str(tmp_path / "in"), tmp_path / "r", model)
    assert code == EXIT_PARTIAL, out
    assert "1 of 3 pairs have no score (decode_error 1)" in out
    # Nothing left to do, but the run is still not complete: the same answer.
    code, out = _score(str(tmp_path / "in"), tmp_path / "r", model)
    assert code == EXIT_PARTIAL, out


def test_usage_errors_stay_2(good: Path, tmp_path: Path) -> None:
    code, out = _score(str(good), tmp_path / "r", "no-such-model")
    assert code == 2, out
    code, out = _score(str(tmp_path / "nothing" / "*.tar"), tmp_path / "r2", "tiny-synth")
    assert code == 2, out


# ---- tiny-synth outside the synthetic world ----------------------------------------------------


def test_tiny_synth_on_photos_warns_once(good: Path, tmp_path: Path) -> None:
    code, out = _score(str(good), tmp_path / "r", "tiny-synth")
    assert code == 0, out
    assert out.count(WARNING) == 1, out
    line = next(line for line in out.splitlines() if WARNING in line)
    assert "mean nothing" in line and "dfn-b16" in line
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["warnings"]) == 1 and WARNING in summary["warnings"][0]


def test_tiny_synth_on_a_synth_pool_does_not_warn(tmp_path: Path) -> None:
    write_pool(tmp_path / "pool", 48, seed=1, shard_size=24)
    code, out = _score(str(tmp_path / "pool" / "shards"), tmp_path / "r", "tiny-synth")
    assert code == 0, out
    assert WARNING not in out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] == []


def test_other_models_never_warn(good: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out = _score(str(good), tmp_path / "r", f"local-dir:{tiny_model_dir}")
    assert code == 0 and WARNING not in out


def test_check_decides_on_the_first_images() -> None:
    check = SynthWorldCheck(active=True, sample=4)
    assert [check.add(64, 64) for _ in range(3)] == [None, None, None]
    assert check.add(640, 480) is None  # 3 of 4 are scenes: no warning, and decided
    assert check.finish() is None and check.add(640, 480) is None
    photos = SynthWorldCheck(active=True, sample=4)
    assert [photos.add(640, 480) for _ in range(3)] == [None, None, None]
    message = photos.add(500, 375)
    assert message is not None and "0 of the first 4" in message
    few = SynthWorldCheck(active=True)
    few.add(300, 200)
    assert few.finish() is not None and few.finish() is None  # a short run is judged at its end, once
    assert SynthWorldCheck(active=False).add(300, 200) is None

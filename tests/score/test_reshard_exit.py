"""`vlcurate reshard`'s exit status: 0 when everything found was written, EXIT_PARTIAL (3) when an
input shard is missing or broken or a subset sample could not be written, 2 for usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.score.shards import write_coco_shards
from typer.testing import CliRunner

from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app
from vlcurate.cli.reshard_cmd import reshard_problems
from vlcurate.io.subset import write_subset


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, coco_pairs: list) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("wds")
    return d, write_coco_shards(d, coco_pairs, n_shards=2, per_shard=6)


def _reshard(inputs: str, subset: Path, out: Path) -> tuple[int, str]:
    r = CliRunner().invoke(
        app, ["reshard", inputs, "--subset", str(subset), "--out", str(out)], env={"COLUMNS": "300"}
    )
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def test_everything_written_is_0(shards: tuple[Path, list[str]], tmp_path: Path) -> None:
    d, uids = shards
    write_subset(tmp_path / "s.npy", uids[::2])
    code, out = _reshard(str(d), tmp_path / "s.npy", tmp_path / "o")
    assert code == 0, out


def test_a_truncated_input_shard_is_partial(shards: tuple[Path, list[str]], tmp_path: Path) -> None:
    d, uids = shards
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000000.tar").write_bytes((d / "00000000.tar").read_bytes())
    data = (d / "00000001.tar").read_bytes()
    (tmp_path / "in" / "00000001.tar").write_bytes(data[: int(len(data) * 0.6)])
    write_subset(tmp_path / "s.npy", uids)
    code, out = _reshard(str(tmp_path / "in"), tmp_path / "s.npy", tmp_path / "o")
    assert code == EXIT_PARTIAL, out
    assert "1 of 2 input shards missing or broken" in out and "Traceback" not in out


def test_an_image_that_cannot_be_read_is_partial(coco_pairs: list, tmp_path: Path) -> None:
    """A manifest row whose image file is gone: its subset sample cannot be written."""
    (tmp_path / "img").mkdir()
    rows = ["image,caption,uid"]
    uids = []
    for i, p in enumerate(coco_pairs[:3]):
        if i != 1:  # the second image is missing on disk
            (tmp_path / "img" / f"{i}.jpg").write_bytes(p.path.read_bytes())
        uid = f"{i + 1:032x}"
        uids.append(uid)
        rows.append(f"img/{i}.jpg,a photo {i},{uid}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    write_subset(tmp_path / "s.npy", uids)
    code, out = _reshard(str(tmp_path / "m.csv"), tmp_path / "s.npy", tmp_path / "o")
    assert code == EXIT_PARTIAL, out
    assert "1 subset samples not written" in out


def test_usage_errors_stay_2(shards: tuple[Path, list[str]], tmp_path: Path) -> None:
    d, _ = shards
    code, out = _reshard(str(d), tmp_path / "absent.npy", tmp_path / "o")
    assert code == 2, out


def test_problems_of_a_summary() -> None:
    assert reshard_problems({"input_shards": 2, "shard_errors": [], "not_written": {}}) == []
    s = {"input_shards": 2, "shard_errors": [{"shard": "a", "error": "x"}], "not_written": {"fetch_error": 2}}
    assert reshard_problems(s) == [
        "1 of 2 input shards missing or broken",
        "2 subset samples not written (fetch_error 2)",
    ]

"""Single-file inputs (a big CSV/TSV/JSONL, one Parquet file, a flat image folder) are cut into
row-range shards with stable names, read exactly as the whole file is, and `vlcurate score`
resumes them range by range."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.io.shards import DEFAULT_ROWS_PER_SHARD
from vlcurate.io.sources import open_source


def _samples(src: Any) -> list[Any]:
    return [s for sh in src.shards() for s in src.iter_samples(sh)]


def _view(samples: list[Any]) -> list[tuple[Any, ...]]:
    return [(s.uid, s.key, s.text, s.image_ref, s.status, s.meta.get("row"), s.source) for s in samples]


def _awkward_captions(pairs: list[Any], n: int) -> list[dict[str, str]]:
    """n rows over the photos, with captions a naive line count would get wrong."""
    rows = []
    for i in range(n):
        p = pairs[i % len(pairs)]
        text = f"{p.caption} #{i}"
        if i % 97 == 5:
            text = f'a caption over\ntwo lines, with "quotes" #{i}'
        elif i % 89 == 7:
            text = f'a 5" screen, and a stray quote #{i}'
        rows.append({"filepath": str(p.path), "title": text})
    return rows


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_cut_into_ranges_reads_like_the_whole_file(
    tmp_path: Path, coco_pairs: list[Any], delimiter: str
) -> None:
    rows = _awkward_captions(coco_pairs, 2500)
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filepath", "title"], delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
        fh.write("\n")  # a trailing blank line is not a row
    whole = open_source(str(path), rows_per_shard=10**6)
    assert [s.name for s in whole.shards()] == ["big"] and whole.shards()[0].rows is None
    cut = open_source(str(path), rows_per_shard=1000)
    names = [s.name for s in cut.shards()]
    assert names == ["big-r000000000-000001000", "big-r000001000-000002000", "big-r000002000-000002500"]
    assert [s.name for s in open_source(str(path), rows_per_shard=1000).shards()] == names  # stable
    samples = _samples(cut)
    assert len(samples) == 2500 and [s.text for s in samples] == [r["title"] for r in rows]
    assert _view(samples) == _view(_samples(whole))
    assert samples[1500].key == "big_00001500" and samples[1500].source == f"{path}#row=1500"
    # Any shard alone reads just its rows.
    third = list(cut.iter_samples(cut.shards()[2]))
    assert [s.meta["row"] for s in third] == list(range(2000, 2500))
    assert [s.name for s in open_source(str(path), rows_per_shard=999).shards()][
        1
    ] == "big-r000000999-000001998"


def test_default_rows_per_shard(tmp_path: Path) -> None:
    n = DEFAULT_ROWS_PER_SHARD + 1
    path = tmp_path / "urls.csv"
    path.write_text("url,caption\n" + "".join(f"http://example.com/{i}.jpg,photo {i}\n" for i in range(n)))
    src = open_source(str(path))
    assert [s.name for s in src.shards()] == ["urls-r000000000-000010000", "urls-r000010000-000010001"]
    [last] = list(src.iter_samples(src.shards()[1]))
    assert (last.text, last.key, last.image_ref) == (
        f"photo {n - 1}",
        f"urls_{n - 1:08d}",
        f"http://example.com/{n - 1}.jpg",
    )


def test_jsonl_with_blank_and_bad_lines(tmp_path: Path, coco_pairs: list[Any]) -> None:
    lines = []
    for i in range(230):
        p = coco_pairs[i % len(coco_pairs)]
        lines.append(json.dumps({"image": str(p.path), "caption": f"{p.caption} {i}"}))
        if i % 50 == 3:
            lines.append("")
        if i % 70 == 9:
            lines.append("{broken")
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    whole = _samples(open_source(str(path), rows_per_shard=10**6))
    cut = open_source(str(path), rows_per_shard=40)
    assert len(cut.shards()) == -(-len(lines) // 40)  # rows are lines
    assert _view(_samples(cut)) == _view(whole)
    assert sum(s.status.value == "read_error" for s in whole) == 4


def test_parquet_ranges_cross_row_groups(tmp_path: Path, coco_pairs: list[Any]) -> None:
    n = 130
    table = pa.table(
        {
            "jpg": [coco_pairs[i % 7].path.read_bytes() for i in range(n)],
            "caption": [f"{coco_pairs[i % 7].caption} {i}" for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=17)
    whole = _samples(open_source(str(tmp_path / "one.parquet"), rows_per_shard=10**6))
    cut = open_source(str(tmp_path / "one.parquet"), rows_per_shard=40, batch_size=6)
    assert [s.name for s in cut.shards()][-1] == "one-r000000120-000000130"
    samples = _samples(cut)
    assert _view(samples) == _view(whole) and len(samples) == n
    assert samples[45].image == coco_pairs[45 % 7].path.read_bytes()
    assert samples[45].source == f"{tmp_path / 'one.parquet'}#row=45"


def test_flat_image_folder(tmp_path: Path, coco_pairs: list[Any]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_pairs[:25]:
        shutil.copy(p.path, folder / p.path.name)
        (folder / p.path.with_suffix(".txt").name).write_text(p.caption)
    whole = _samples(open_source(str(folder)))
    cut = open_source(str(folder), rows_per_shard=10)
    assert [s.name for s in cut.shards()] == [
        "photos-r000000000-000000010",
        "photos-r000000010-000000020",
        "photos-r000000020-000000025",
    ]
    samples = _samples(cut)
    assert _view(samples) == _view(whole) and len(samples) == 25
    assert samples[0].source == str(folder / sorted(p.path.name for p in coco_pairs[:25])[0])


def test_score_resumes_range_by_range(tmp_path: Path, coco_pairs: list[Any], tiny_model_dir: Path) -> None:
    """`vlcurate score` takes range shards as they are: one table and marker per range, and a
    range whose output is lost (as after kill -9) is the only one scored again."""
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    path = tmp_path / "train.csv"
    path.write_text("filepath\ttitle\n" + "".join(f"{p.path}\t{p.caption}\n" for p in coco_pairs[:25]))
    cfg = ScoreConfig(
        model=f"local-dir:{tiny_model_dir}",
        batch_size=8,
        workers=0,
        progress=False,
        source_options={"rows_per_shard": 10},
    )
    first = score_dataset(str(path), tmp_path / "run", cfg)
    tables = sorted(p.stem for p in (tmp_path / "run" / "scores").glob("*.parquet"))
    assert tables == [
        "train-r000000000-000000010",
        "train-r000000010-000000020",
        "train-r000000020-000000025",
    ]
    assert first["pairs"] == 25 and first["counts_by_status"] == {"ok": 25}
    (tmp_path / "run" / "done" / "train-r000000010-000000020.json").unlink()
    again = score_dataset(str(path), tmp_path / "run", cfg)
    assert again["this_run"]["pairs_this_run"] == 10 and again["pairs"] == 25

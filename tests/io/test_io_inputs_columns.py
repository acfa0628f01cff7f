"""open_clip's training CSV/TSV (`filepath`, `title`, tab or comma) and any other column names
through `image_column`, `text_column`, `url_column` and `kind`; the shared CLI options for them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from vlcurate.base.records import Status, derive_uid
from vlcurate.cli.data_options import data_options
from vlcurate.io.sources import ShardReadError, open_source


def _read(spec: Any, **opts: Any) -> list[Any]:
    src = open_source(spec, **opts)
    return [s for shard in src.shards() for s in src.iter_samples(shard)]


def _open_clip_rows(pairs: list[Any]) -> list[dict[str, str]]:
    return [{"filepath": str(p.path), "title": p.caption} for p in pairs]


@pytest.mark.parametrize(
    ("name", "delimiter"), [("train.csv", "\t"), ("train.csv", ","), ("train.tsv", "\t")]
)
def test_open_clip_csv_tab_or_comma(tmp_path: Path, coco_pairs: list[Any], name: str, delimiter: str) -> None:
    """open_clip reads `--csv-img-key filepath --csv-caption-key title`, tab-separated by default,
    whatever the file's suffix; captions with commas, quotes and tabs survive."""
    pairs = coco_pairs[:5]
    rows = _open_clip_rows(pairs)
    rows[1]["title"] = 'A 5" display, "quoted", with commas'
    with open(tmp_path / name, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filepath", "title"], delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    samples = _read(str(tmp_path / name))
    assert [s.text for s in samples] == [r["title"] for r in rows]
    assert [s.image_ref for s in samples] == [str(p.path) for p in pairs]
    assert all(s.status is Status.OK for s in samples)
    assert samples[0].uid == derive_uid(str(pairs[0].path), pairs[0].caption)


def test_named_columns_and_url_fallback(tmp_path: Path, coco_pairs: list[Any]) -> None:
    p0, p1 = coco_pairs[:2]
    rows = [
        {"pic": str(p0.path), "link": "http://example.com/a.jpg", "alt": p0.caption, "id": "x"},
        {"pic": "", "link": "http://example.com/b.webp", "alt": p1.caption, "id": "y"},
        {"pic": "", "link": "", "alt": "nothing", "id": "z"},
    ]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s = _read(
        str(tmp_path / "m.csv"), image_column="pic", url_column="link", text_column="alt", key_column="id"
    )
    assert s[0].image_ref == str(p0.path) and s[0].text == p0.caption and s[0].key == "x"
    assert s[1].image_ref == "http://example.com/b.webp" and s[1].image_ext == "webp"
    assert s[1].uid == derive_uid("http://example.com/b.webp", p1.caption)
    assert s[2].status is Status.MISSING_IMAGE
    # Only a URL column named: that is the image.
    only_url = _read(str(tmp_path / "m.csv"), url_column="link", text_column="alt")
    assert [x.image_ref for x in only_url[:2]] == ["http://example.com/a.jpg", "http://example.com/b.webp"]
    with pytest.raises(ShardReadError, match=r"the image column 'photo'.*columns found"):
        _read(str(tmp_path / "m.csv"), image_column="photo", text_column="alt")
    with pytest.raises(ShardReadError, match=r"the URL column 'href'"):
        _read(str(tmp_path / "m.csv"), url_column="href", text_column="alt")


def test_kind_forces_a_manifest_with_an_odd_suffix(tmp_path: Path, coco_pairs: list[Any]) -> None:
    (tmp_path / "pairs.txt").write_text(
        "filepath\ttitle\n" + "".join(f"{p.path}\t{p.caption}\n" for p in coco_pairs[:3])
    )
    with pytest.raises(ValueError, match="cannot tell the input kind"):
        open_source(str(tmp_path / "pairs.txt"))
    samples = _read(str(tmp_path / "pairs.txt"), kind="manifest")
    assert [s.text for s in samples] == [p.caption for p in coco_pairs[:3]]


def test_options_checked_per_kind(tmp_path: Path, wds_shards: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) for wds input: text_column"):
        open_source(str(wds_shards), text_column="alt")
    with pytest.raises(ValueError, match="rows_per_shard must be positive"):
        open_source(str(wds_shards / "00000000.tar"), kind="parquet", rows_per_shard=0)
    # None means "not given": a command can pass every option it has.
    src = open_source(str(wds_shards), text_column=None, image_column=None, rows_per_shard=None)
    assert len(src.shards()) == 2


def test_data_options_decorator(tmp_path: Path, coco_pairs: list[Any]) -> None:
    app = typer.Typer()
    seen: dict[str, Any] = {}

    @app.command("read")
    @data_options
    def read(
        inputs: Annotated[list[str], typer.Argument()],
        limit: Annotated[int, typer.Option()] = 3,
        *,
        source_options: dict[str, Any],
    ) -> None:
        seen["options"] = source_options
        if limit:
            seen["samples"] = _read(inputs[0], **source_options)[:limit]

    @app.command("other")
    def other() -> None:
        pass

    (tmp_path / "t.csv").write_text(
        "path\talt\n" + "".join(f"{p.path}\t{p.caption}\n" for p in coco_pairs[:4])
    )
    runner = CliRunner()
    args = ["read", str(tmp_path / "t.csv"), "--image-column", "path", "--text-column", "alt"]
    result = runner.invoke(app, [*args, "--rows-per-shard", "2", "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == {"image_column": "path", "text_column": "alt", "rows_per_shard": 2}
    assert [s.text for s in seen["samples"]] == [p.caption for p in coco_pairs[:4]]
    result = runner.invoke(
        app, [*args, "--captions", "first", "--label-map", "m.json", "--kind", "manifest", "--limit", "0"]
    )
    assert result.exit_code == 0, result.output
    assert seen["options"]["captions"] == "first" and seen["options"]["label_map"] == "m.json"
    assert seen["options"]["kind"] == "manifest"
    with pytest.raises(ValueError, match=r"unknown option\(s\) for manifest input: label_map"):
        _read(str(tmp_path / "t.csv"), **seen["options"])
    assert runner.invoke(app, [*args, "--captions", "some"]).exit_code == 2
    assert runner.invoke(app, [*args, "--rows-per-shard", "0"]).exit_code == 2
    helptext = runner.invoke(app, ["read", "--help"]).output
    for flag in (
        "--kind",
        "--image-column",
        "--text-column",
        "--url-column",
        "--rows-per-shard",
        "--label-map",
    ):
        assert flag in helptext

    with pytest.raises(TypeError, match="needs a `source_options` parameter"):
        data_options(lambda x: x)


def test_every_reader_says_where_a_pair_came_from(
    tmp_path: Path, wds_shards: Path, coco_pairs: list[Any]
) -> None:
    """`Sample.source`, beside the uid: shard and member, file and row (and caption), or path."""
    p = coco_pairs[0]
    (tmp_path / "m.tsv").write_text(f"filepath\ttitle\n{p.path}\t{p.caption}\n")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / p.path.name).write_bytes(p.path.read_bytes())
    llava = [
        {
            "id": "q1",
            "image": str(p.path),
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "A."},
            ],
        }
    ]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    tar = wds_shards / "00000000.tar"
    found = {
        "wds": _read(str(tar))[0].source,
        "manifest": _read(str(tmp_path / "m.tsv"))[0].source,
        "folder": _read(str(tmp_path / "f"))[0].source,
        "instruct": _read(str(tmp_path / "llava.json"), kind="instruct")[0].source,
    }
    assert found == {
        "wds": f"{tar}#000000000.jpg",
        "manifest": f"{tmp_path / 'm.tsv'}#row=0",
        "folder": str(tmp_path / "f" / p.path.name),
        "instruct": f"{tmp_path / 'llava.json'}#row=0",
    }


def test_byte_order_mark_and_crlf(tmp_path: Path, coco_pairs: list[Any]) -> None:
    """Spreadsheet exports: a UTF-8 byte order mark before the header and CRLF line ends."""
    body = "".join(f'{p.path},"{p.caption}"\r\n' for p in coco_pairs[:3])
    (tmp_path / "excel.csv").write_bytes(("\ufefffilepath,title\r\n" + body).encode("utf-8"))
    samples = _read(str(tmp_path / "excel.csv"), rows_per_shard=2)
    assert [s.text for s in samples] == [p.caption for p in coco_pairs[:3]]
    assert [s.image_ref for s in samples] == [str(p.path) for p in coco_pairs[:3]]

"""WebDataset conventions (`.txt.gz`, `.caption`, a `caption`/`text` field in `.json`, `.cls`
labels through a template and a label map, `.jpeg/.png/.webp`) and img2dataset's output folder
(its `.parquet` beside each `.tar`: url, caption, status joined by key)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from io_testkit import datacomp_uid, write_tar
from PIL import Image

from vlcurate.base.records import Status, derive_uid
from vlcurate.io.reshard import reshard
from vlcurate.io.sources import open_source
from vlcurate.io.subset import write_subset


def _read(spec: Any, **opts: Any) -> list[Any]:
    src = open_source(spec, **opts)
    return [s for shard in src.shards() for s in src.iter_samples(shard)]


def _encode(path: Path, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").resize((64, 48)).save(buf, format=fmt)
    return buf.getvalue()


def test_caption_and_image_conventions(tmp_path: Path, coco_pairs: list[Any]) -> None:
    p = coco_pairs[:6]
    png, webp = _encode(p[1].path, "PNG"), _encode(p[2].path, "WEBP")
    tar = write_tar(
        tmp_path / "conv.tar",
        [
            ("a", [("jpeg", p[0].path.read_bytes()), ("txt.gz", gzip.compress(p[0].caption.encode()))]),
            ("b", [("png", png), ("caption", p[1].caption.encode())]),
            ("c", [("webp", webp), ("json", json.dumps({"caption": p[2].caption}).encode())]),
            ("d", [("jpg", p[3].path.read_bytes()), ("json", json.dumps({"text": p[3].caption}).encode())]),
            ("e", [("jpg", p[4].path.read_bytes()), ("txt.gz", b"not gzip at all")]),
            ("f", [("JPG", p[5].path.read_bytes()), ("TXT", p[5].caption.encode())]),
        ],
    )
    s = {x.key: x for x in _read(str(tar))}
    assert (s["a"].text, s["a"].image_ext, s["a"].image) == (p[0].caption, "jpeg", p[0].path.read_bytes())
    assert (s["b"].text, s["b"].image_ext, s["b"].image) == (p[1].caption, "png", png)
    assert (s["c"].text, s["c"].image_ext, s["c"].image) == (p[2].caption, "webp", webp)
    assert s["d"].text == p[3].caption and s["d"].status is Status.OK
    assert s["e"].status is Status.MISSING_TEXT and "not valid gzip" in s["e"].meta["text_warning"]
    assert s["f"].text == p[5].caption and s["f"].image_ext == "jpg"
    assert s["a"].uid == derive_uid(p[0].path.read_bytes(), p[0].caption)
    assert s["b"].source == f"{tar}#b.png" and s["e"].source == f"{tar}#e.jpg"


def test_cls_labels_through_template_and_map(tmp_path: Path, coco_pairs: list[Any]) -> None:
    names = ["airplane", "bus", "giraffe"]
    items = [
        (f"{i:04d}", [("jpg", p.path.read_bytes()), ("cls", f"{i % 4}\n".encode()), ("txt", b"ignored")])
        for i, p in enumerate(coco_pairs[:5])
    ]
    items.append(("nolabel", [("jpg", coco_pairs[5].path.read_bytes())]))
    tar = write_tar(tmp_path / "labels.tar", items)
    (tmp_path / "names.json").write_text(json.dumps(names))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "names_obj.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    for label_map in ("names.json", "names.txt", "names_obj.json"):
        s = _read(str(tar), label_template="a photo of a {label}.", label_map=str(tmp_path / label_map))
        assert [x.text for x in s[:3]] == [f"a photo of a {n}." for n in names]
        assert s[3].status is Status.MISSING_TEXT and "label '3' is not in the label map" in (
            s[3].error or ""
        )
        assert s[4].text == "a photo of a airplane." and s[4].meta["label"] == "0"
        assert s[5].status is Status.MISSING_TEXT and "no .cls member" in (s[5].error or "")
    no_map = _read(str(tar), label_template="class {cls}")
    assert [x.text for x in no_map[:4]] == ["class 0", "class 1", "class 2", "class 3"]
    assert no_map[0].uid == derive_uid(coco_pairs[0].path.read_bytes(), "class 0")
    plain = _read(str(tar))  # without label options the text member is the caption, as before
    assert plain[0].text == "ignored"
    with pytest.raises(ValueError, match=r"label_template .* is not valid"):
        open_source(str(tar), label_template="a {name}")
    with pytest.raises(ValueError, match="label map not found"):
        open_source(str(tar), label_map=str(tmp_path / "gone.json"))


def _img2dataset_folder(root: Path, pairs: list[Any]) -> Path:
    """What `img2dataset --output_format webdataset` leaves: per shard a tar of the successes, a
    parquet of every URL tried (key, url, caption, status, error_message, ...) and a stats json."""
    out = root / "i2d"
    for s in range(2):
        chunk = pairs[s * 5 : s * 5 + 5]
        rows, items = [], []
        for i, p in enumerate(chunk):
            key = f"{s:05d}{i:04d}"
            status = "success" if i not in (1, 3) else "failed_to_download"
            rows.append(
                {
                    "key": key,
                    "url": f"http://example.com/{p.path.name}",
                    "caption": p.caption,
                    "status": status,
                    "error_message": None if status == "success" else "HTTP Error 404: Not Found",
                    "uid": datacomp_uid(s * 5 + i),
                    "width": 256 if status == "success" else None,
                }
            )
            if status == "success":
                doc = {"url": rows[-1]["url"], "key": key, "status": status, "uid": datacomp_uid(s * 5 + i)}
                items.append((key, [("jpg", p.path.read_bytes()), ("json", json.dumps(doc).encode())]))
        write_tar(out / f"{s:05d}.tar", items)
        pq.write_table(pa.Table.from_pylist(rows), out / f"{s:05d}.parquet")
        (out / f"{s:05d}_stats.json").write_text(json.dumps({"count": 5, "successes": len(items)}))
    return out


def test_img2dataset_output_folder(tmp_path: Path, coco_pairs: list[Any]) -> None:
    folder = _img2dataset_folder(tmp_path, coco_pairs[:10])
    src = open_source(str(folder))
    assert [(s.kind, s.name) for s in src.shards()] == [("wds", "00000"), ("wds", "00001")]
    samples = _read(str(folder))
    assert len(samples) == 10
    ok = [s for s in samples if s.status is Status.OK]
    failed = [s for s in samples if s.status is Status.FETCH_ERROR]
    assert len(ok) == 6 and len(failed) == 4
    # Joined by key: the tar's samples take their caption from the parquet (no .txt member).
    assert [s.text for s in ok[:3]] == [coco_pairs[i].caption for i in (0, 2, 4)]
    assert ok[0].meta["img2dataset_status"] == "success" and ok[0].uid == datacomp_uid(0)
    # Failed downloads follow each shard's samples, traceable and fetchable again.
    f0 = failed[0]
    assert f0.key == "000000001" and f0.uid == datacomp_uid(1) and f0.text == coco_pairs[1].caption
    assert f0.image_ref == f"http://example.com/{coco_pairs[1].path.name}"
    assert f0.error == "img2dataset failed_to_download: HTTP Error 404: Not Found"
    assert f0.source == f"{folder / '00000.parquet'}#row=1"
    assert [s.key for s in samples[:5]] == ["000000000", "000000002", "000000004", "000000001", "000000003"]


def test_img2dataset_row_missing_from_tar_and_reshard(tmp_path: Path, coco_pairs: list[Any]) -> None:
    folder = _img2dataset_folder(tmp_path, coco_pairs[:10])
    table = pq.read_table(folder / "00001.parquet").to_pylist()
    table[1]["status"] = "success"  # says downloaded, but the tar does not hold it
    pq.write_table(pa.Table.from_pylist(table), folder / "00001.parquet")
    samples = _read(str(folder))
    lost = [s for s in samples if s.status is Status.READ_ERROR]
    assert [s.key for s in lost] == ["000010001"] and "not in the tar" in (lost[0].error or "")
    write_subset(tmp_path / "subset.npy", [datacomp_uid(i) for i in range(10)])
    summary = reshard(str(folder), tmp_path / "subset.npy", tmp_path / "out")
    assert summary["written"] == 6
    assert summary["not_written"] == {"fetch_error": 3, "read_error": 1}
    written = pq.read_table(tmp_path / "out" / "00000000.parquet").column("uid").to_pylist()
    assert written == [datacomp_uid(i) for i in (0, 2, 4, 5, 7, 9)]
    assert np.load(tmp_path / "subset.npy").shape == (10,)


def test_reshard_index_parquet_is_not_img2dataset(wds_shards: Path, tmp_path: Path) -> None:
    """A parquet beside a tar without img2dataset's `status` column (ours) is left alone."""
    pq.write_table(pa.table({"uid": ["x"], "key": ["00000"], "text": ["t"]}), wds_shards / "00000000.parquet")
    samples = _read(str(wds_shards))
    assert len(samples) == 8 and all(s.status is Status.OK for s in samples)
    assert "img2dataset_status" not in samples[0].meta

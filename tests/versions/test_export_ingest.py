"""Inputs read as versions (instruction files, run folders) and versions written in trainer formats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.versions.conftest import sample

from vlcurate.io.instruct.formats import parse_record
from vlcurate.io.instruct.hf import iter_hf_rows
from vlcurate.versions.errors import MissingDataError, VersionError
from vlcurate.versions.ingest import read_instruct
from vlcurate.versions.store import VersionStore


def test_instruct_file_becomes_a_version_with_drops_explained(tmp_path: Path, llava_file: Path) -> None:
    store = VersionStore(tmp_path / "vs")
    ing = read_instruct([llava_file], store.root)
    assert sorted(s["id"] for s in ing.samples) == ["q0", "q1", "q2", "q3", "q4"] and ing.dropped == 2
    first = next(s for s in ing.samples if s["id"] == "q0")
    assert first["images"] == [str(llava_file.parent / "images" / "a.png")] and first["kind"] == "colour"
    info = store.commit(ing.samples, parent=None, message="raw", events=ing.events)
    gone = store.lineage("gone", info.id).history[0].events[0]
    assert gone.dropped and gone.reason == "image:missing image 0 (images/nope.png)"
    broken = [e for e in store.events(info.id).to_pylist() if e["sample_id"].endswith("#row=6")]
    assert (
        broken
        and broken[0]["reason"].startswith("invalid:")
        and "'conversations' must be" in broken[0]["reason"]
    )
    with pytest.raises(VersionError, match="no such file"):
        read_instruct([tmp_path / "absent.json"], store.root)
    (tmp_path / "bad.json").write_text('[{"id": 1, "conversations": [')
    with pytest.raises(VersionError, match="not a valid JSON array"):
        read_instruct([tmp_path / "bad.json"], store.root)


@pytest.mark.parametrize("fmt", ["llava", "sharegpt", "openai", "hf", "jsonl"])
def test_export_round_trips_in_every_trainer_format(tmp_path: Path, llava_file: Path, fmt: str) -> None:
    store = VersionStore(tmp_path / "vs")
    ing = read_instruct([llava_file], store.root)
    vid = store.commit(ing.samples, parent=None, message="raw").id
    res = store.export(vid, fmt, tmp_path / "out")
    out = tmp_path / "out"
    assert res["samples"] == 5 and json.loads((out / "version.json").read_text())["version"] == vid
    if fmt == "hf":
        rows = [s for _, s in iter_hf_rows(str(out / "data.parquet"))]
        assert pq.read_metadata(out / "data.parquet").num_rows == 5
        assert all(not isinstance(r, Exception) and r.images[0].data for r in rows)
    elif fmt == "jsonl":
        lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert [x["id"] for x in lines] == ["q0", "q1", "q2", "q3", "q4"]
    else:
        recs = json.loads((out / "data.json").read_text())
        parsed = [parse_record(r, fmt=fmt) for r in recs]
        assert [p.id for p in parsed] == ["q0", "q1", "q2", "q3", "q4"]
        assert parsed[1].messages[1].content == "Blue." and parsed[0].meta["kind"] == "colour"
        for p in parsed:  # images were copied beside the JSON
            assert (out / str(p.images[0].path)).is_file()


def test_export_stops_on_deleted_images_unless_told_to_skip(tmp_path: Path, images: dict[str, str]) -> None:
    store = VersionStore(tmp_path / "vs")
    vid = store.commit(
        [sample(1, images["red"]), sample(2, images["blue"]), {"id": "qa", "question": "Q?", "answer": "A"}],
        parent=None,
        message="v",
    ).id
    Path(images["blue"]).unlink()
    with pytest.raises(
        MissingDataError, match=r"references deleted data: sample 's002': image 0 .* is missing"
    ):
        store.export(vid, "llava", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.export-*"))
    res = store.export(vid, "llava", tmp_path / "out", missing="skip")
    assert res["samples"] == 2 and res["skipped_missing"] == 1
    assert json.loads((tmp_path / "out" / "missing.jsonl").read_text())["id"] == "s002"
    recs = json.loads((tmp_path / "out" / "data.json").read_text())
    qa = next(r for r in recs if r["id"] == "qa")
    assert [t["value"] for t in qa["conversations"]] == ["Q?", "A"]
    with pytest.raises(VersionError, match="already exists and is not empty"):
        store.export(vid, "llava", tmp_path / "out")
    with pytest.raises(VersionError, match="unknown export format"):
        store.export(vid, "yaml", tmp_path / "other")


def test_hf_parquet_with_embedded_images_is_stored_once_and_exported_back(
    tmp_path: Path, llava_file: Path
) -> None:
    from vlcurate.io.instruct.writer import InstructWriter

    store = VersionStore(tmp_path / "vs")
    records = [parse_record(r) for r in json.loads(llava_file.read_text())[:5]]
    writer = InstructWriter(tmp_path / "hfdata", "hf", name="train")
    for rec in records:
        writer.add(rec, [(llava_file.parent / str(rec.images[0].path)).read_bytes()])
    path = writer.close()
    ing = read_instruct([path], store.root)
    assert len(ing.samples) == 5 and ing.dropped == 0
    stored = {p for s in ing.samples for p in s["images"]}
    assert len(stored) == 2 and all(
        Path(p).is_relative_to(store.root.resolve() / "objects" / "images") for p in stored
    )
    vid = store.commit(ing.samples, parent=None, message="hf").id
    store.export(vid, "hf", tmp_path / "out")
    rows = [s for _, s in iter_hf_rows(str(tmp_path / "out" / "data.parquet"))]
    originals = {(llava_file.parent / "images" / n).read_bytes() for n in ("a.png", "b.png")}
    assert {r.images[0].data for r in rows if not isinstance(r, Exception)} == originals


def test_run_folders_that_hold_no_instruction_data_are_refused(tmp_path: Path) -> None:
    import pyarrow as pa

    from vlcurate.versions.ingest import read_run

    with pytest.raises(VersionError, match="is not a `vlcurate run` output folder"):
        read_run(tmp_path)
    (tmp_path / "decisions").mkdir()
    pq.write_table(
        pa.table({"uid": ["a"], "key": ["a"], "text": ["a cat"], "keep": [True]}),
        tmp_path / "decisions" / "s.parquet",
    )
    (tmp_path / "report.json").write_text(json.dumps({"steps": [{"op": "clip_score"}]}))
    with pytest.raises(VersionError, match="no 'messages' column; versions hold instruction data"):
        read_run(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(VersionError, match=r"report\.json: not JSON"):
        read_run(tmp_path)

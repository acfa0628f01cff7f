"""Formats: round trips through every writer and the reader, validation errors, broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.instruct_io.conftest import llava, png, write_json

from vlcurate.io.instruct.formats import SampleError, parse_record, to_record
from vlcurate.io.instruct.model import ImageData, InstructSample, Message
from vlcurate.io.instruct.reader import InstructFileError
from vlcurate.io.instruct.writer import InstructWriter
from vlcurate.io.jsonscan import JsonScanError, array_elements
from vlcurate.io.sources import open_source


def rows(path: Path | str, **options: object) -> list[dict[str, object]]:
    """Every sample the instruct source yields, as the batch columns it carries."""
    src = open_source(str(path), kind="instruct", **options)
    out = []
    for shard in src.shards():
        for s in src.iter_samples(shard):
            out.append(
                {"uid": s.uid, "key": s.key, "text": s.text, "image": s.image, "shard": shard.name, **s.meta}
            )
    return out


def sample(i: int, n_images: int = 1) -> InstructSample:
    return InstructSample(
        id=f"x{i}",
        images=[ImageData(path=f"img{i}_{k}.png") for k in range(n_images)],
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content="<image>" * n_images + "How many?"),
            Message(role="assistant", content="Two."),
            Message(role="user", content="Sure?"),
            Message(role="assistant", content="Yes."),
        ],
        meta={"short_answer": "2", "choices": None, "nested": {"a": [1, 2]}, "score": 0.5},
    )


@pytest.mark.parametrize("fmt", ["llava", "sharegpt", "openai", "hf"])
def test_round_trip_every_format_keeps_everything(fmt: str, tmp_path: Path) -> None:
    samples = [sample(0, 1), sample(1, 2), sample(2, 0)]
    w = InstructWriter(tmp_path, fmt, name="data")
    for s in samples:
        w.add(s, [png("red") for _ in s.images])
    path = w.close()
    assert path.name == ("data.parquet" if fmt == "hf" else "data.json")
    got = rows(path, format="auto" if fmt != "hf" else "hf")
    assert [r["key"] for r in got] == ["x0", "x1", "x2"]
    assert all(r["keep"] for r in got), [r["reason"] for r in got]
    for s, r in zip(samples, got, strict=True):
        assert json.loads(r["messages"]) == [m.model_dump() for m in s.messages]
        assert json.loads(r["meta"]) == s.meta
        assert r["uid"] == s.uid and len(str(r["uid"])) == 32
        assert (r["image"] == png("red")) if s.images else r["image"] is None
        assert len(r["extra_images"]) == max(0, len(s.images) - 1)  # type: ignore[arg-type]
    assert got[0]["text"] == "How many?"


def test_llava_record_layout(tmp_path: Path) -> None:
    rec = to_record(sample(0), "llava", ["images/a.png"])
    assert list(rec)[:3] == ["id", "image", "conversations"] and rec["image"] == "images/a.png"
    assert rec["conversations"][0] == {"from": "system", "value": "Be brief."}
    assert rec["conversations"][1]["from"] == "human" and rec["conversations"][2]["from"] == "gpt"
    two = to_record(sample(1, 2), "llava", ["a.png", "b.png"])
    assert two["image"] == ["a.png", "b.png"]
    assert "image" not in to_record(sample(2, 0), "llava", [])


def test_hf_parquet_has_image_features_and_datasets_reads_it(tmp_path: Path) -> None:
    w = InstructWriter(tmp_path, "hf", name="data")
    w.add(sample(0, 2), [png("red"), png("blue")])
    path = w.close()
    features = json.loads(pq.read_schema(path).metadata[b"huggingface"])["info"]["features"]
    assert features["images"] == {"feature": {"_type": "Image"}, "_type": "Sequence"}
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    assert type(ds.features["images"].feature).__name__ == "Image"
    row = ds[0]
    assert [im.getpixel((0, 0)) for im in row["images"]] == [(255, 0, 0), (0, 0, 255)]
    assert row["messages"][1] == {"role": "user", "content": "<image><image>How many?"}
    assert json.loads(row["meta"])["short_answer"] == "2"


def test_hf_single_image_column_as_published_llava_copies_have_it(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "conversations": datasets.List(
                {"from": datasets.Value("string"), "value": datasets.Value("string")}
            ),
        }
    )
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]
    ds = datasets.Dataset.from_dict(
        {"id": ["q1"], "image": [{"bytes": png(), "path": None}], "conversations": [conv]}, features=feats
    )
    ds.to_parquet(str(tmp_path / "llava.parquet"))
    (r,) = rows(tmp_path / "llava.parquet", format="hf")
    assert r["keep"] and r["image"] == png() and r["text"] == "What?" and r["key"] == "q1"


def test_openai_content_parts_and_jsonl(data_dir: Path) -> None:
    recs = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": "Hello."}], "images": ["a.png"]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "b.png"}},
                                                   {"type": "text", "text": "And?"}]},
                      {"role": "assistant", "content": "Blue."}]},
    ]  # fmt: skip
    path = data_dir / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    got = rows(path)
    assert [r["keep"] for r in got] == [True, True]
    assert got[1]["image"] == png("blue") and got[0]["text"] == "Hi"
    assert got[0]["key"] == rows(path)[0]["key"]  # an id derived from content is stable


def test_sharegpt_with_images_list(data_dir: Path) -> None:
    turns = [{"from": "human", "value": "<image><image>Compare."}, {"from": "gpt", "value": "Two."}]
    rec = {"conversations": turns, "images": ["a.png", "b.png"], "system": "sys"}
    (r,) = rows(write_json(data_dir / "d.json", [rec]), format="sharegpt")
    assert r["keep"] and r["image"] == png("red") and r["extra_images"] == [png("blue")]
    assert json.loads(r["meta"]) == {"system": "sys"}  # type: ignore[arg-type]


def test_image_root_option(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    path = write_json(tmp_path / "d.json", [llava(0)])
    assert rows(path)[0]["reason"] == "image:missing image 0 (a.png)"
    assert rows(path, image_root=str(tmp_path / "imgs"))[0]["keep"]


def test_placeholder_mismatch_is_a_dropped_row_naming_the_sample(data_dir: Path) -> None:
    two = [{"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}]
    one = [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]
    recs = [
        llava(0),
        {"id": "extra", "image": "a.png", "conversations": two},
        {"id": "missing", "image": ["a.png", "b.png"], "conversations": one},
    ]
    got = rows(write_json(data_dir / "d.json", recs))
    assert [r["keep"] for r in got] == [True, False, False]
    assert "'extra': 2 <image> placeholder(s) but 1 image(s)" in str(got[1]["reason"])
    assert "'missing': 1 <image> placeholder(s) but 2 image(s)" in str(got[2]["reason"])


def test_wrong_types_are_clear_per_sample_errors() -> None:
    bad = {
        "a list": ([1, 2], "expected a JSON object, got list"),
        "no turns": ({"id": "a"}, "no 'conversations' or 'messages' list"),
        "empty turns": ({"conversations": []}, "non-empty list"),
        "turn type": ({"conversations": ["hi"]}, "message 0 must be an object, got str"),
        "no role": ({"conversations": [{"value": "x"}]}, "no 'from'/'role' string"),
        "content": ({"messages": [{"role": "user", "content": 3}]}, "content must be a string or a list"),
        "image": ({"image": 7, "conversations": [{"from": "human", "value": "x"}]}, "image 0 must be a path"),
        "id": ({"id": [1], "conversations": [{"from": "human", "value": "x"}]}, "'id' must be a string"),
    }
    for name, (rec, message) in bad.items():
        with pytest.raises(SampleError, match=r"f\.json sample 4") as info:
            parse_record(rec, source="f.json", index=4)
        assert message in str(info.value), name
    with pytest.raises(SampleError, match="format openai"):
        parse_record({"conversations": [{"from": "human", "value": "x"}]}, fmt="openai")


def test_bad_records_become_rows_with_reasons(data_dir: Path) -> None:
    text = json.dumps([llava(0), "oops", llava(2, image="gone.png"), {"id": "t", "conversations": 5}])
    got = rows(write_json(data_dir / "d.json", json.loads(text)))
    assert [r["keep"] for r in got] == [True, False, False, False]
    assert str(got[1]["reason"]).startswith("invalid:") and "sample 1" in str(got[1]["reason"])
    assert got[2]["reason"] == "image:missing image 0 (gone.png)"
    assert "non-empty list" in str(got[3]["reason"])


def test_unreadable_image_is_a_dropped_row(data_dir: Path) -> None:
    (data_dir / "bad.png").write_bytes(b"not an image")
    (data_dir / "empty.png").write_bytes(b"")
    got = rows(write_json(data_dir / "d.json", [llava(0, image="bad.png"), llava(1, image="empty.png")]))
    assert all(str(r["reason"]).startswith("image:unreadable image 0") for r in got)


def test_invalid_jsonl_line_is_a_row_not_a_crash(data_dir: Path) -> None:
    path = data_dir / "d.jsonl"
    path.write_text(json.dumps(llava(0)) + "\n{broken\n" + json.dumps(llava(2)) + "\n")
    got = rows(path)
    assert [r["keep"] for r in got] == [True, False, True]
    assert "sample 1" in str(got[1]["reason"]) and "invalid JSON" in str(got[1]["reason"])


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[{"id": "a", "conversations": []},\n {"id": "b", "conv', "line 2"),  # truncated mid-string
        ('[{"id": "a"},\n {"id": "b"}', "line 2"),  # array never closed
        ('{"id": "a"}', "expected a JSON array"),
        ('[{"id": "a"} {"id": "b"}]', "expected ',' or ']'"),
        ('[{"id": "a"},]', "trailing comma"),
        ("", "expected a JSON array"),
    ],
)
def test_broken_json_file_names_file_and_position(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(InstructFileError) as info:
        open_source(str(path), kind="instruct")
    assert str(path) in str(info.value) and where in str(info.value)


def test_json_scanner_ranges_match_json_loads() -> None:
    data = [{"a": 'x]}"[{', "b": [1, {"c": None}]}, "s,]", 3, [], {"d": "\\"}]
    buf = json.dumps(data).encode()
    assert [json.loads(buf[s:e]) for s, e in array_elements(buf)] == data
    with pytest.raises(JsonScanError, match="line 1 column"):
        list(array_elements(buf[:-5]))


def test_big_array_is_cut_into_shards_and_every_sample_read_once(data_dir: Path) -> None:
    path = write_json(data_dir / "d.json", [llava(i) for i in range(25)])
    src = open_source(str(path), kind="instruct", samples_per_shard=10)
    assert [s.name for s in src.shards()] == ["d-00000", "d-00001", "d-00002"]
    got = rows(path, samples_per_shard=10)
    assert [r["key"] for r in got] == [f"s{i}" for i in range(25)]
    lines = data_dir / "d.jsonl"
    lines.write_text("".join(json.dumps(llava(i)) + "\n" for i in range(25)))
    assert [r["key"] for r in rows(lines, samples_per_shard=7)] == [f"s{i}" for i in range(25)]


def test_source_option_errors(data_dir: Path) -> None:
    path = write_json(data_dir / "d.json", [llava(0)])
    with pytest.raises(ValueError, match="unknown option"):
        open_source(str(path), kind="instruct", image_column="x")
    with pytest.raises(ValueError, match="unknown instruct format 'alpaca'"):
        open_source(str(path), kind="instruct", format="alpaca")
    with pytest.raises(ValueError, match="samples_per_shard must be positive"):
        open_source(str(path), kind="instruct", samples_per_shard=0)
    (data_dir / "d.txt").write_text("[]")
    with pytest.raises(InstructFileError, match=r"\.json, \.jsonl or \.parquet"):
        open_source(str(data_dir / "d.txt"), kind="instruct")

"""Benchmark files in every layout `vlcurate eval` reads, and the errors that name the bad lines."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlcurate.evals.bench import BenchFileError, read_benchmark
from vlcurate.synth.bench import make_benchmark, make_training_samples
from vlcurate.synth.scene import scene_from_seed


def test_jsonl_from_the_synthetic_benchmark(tmp_path: Path) -> None:
    path = make_benchmark(tmp_path, 12, seed=1)
    items = read_benchmark(tmp_path)  # the folder finds bench.jsonl
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [i.id for i in items] == [r["id"] for r in rows]
    for item, row in zip(items, rows, strict=True):
        assert (
            item.type == row["type"] and item.answers == [row["answer"]] and item.category == row["category"]
        )
        assert item.image_ref == str(tmp_path.resolve() / row["image"])  # relative to the file
        assert item.description == row["description"] and item.meta["form"] == row["meta"]["form"]
        assert (item.choices is not None) == (row["type"] == "mc")


def test_csv_tsv_json_and_parquet_layouts(tmp_path: Path) -> None:
    (tmp_path / "mm.tsv").write_text(
        "index\tquestion\tA\tB\tC\tD\tanswer\tcategory\timage\n"
        "7\tWhat colour is the star?\tred\tblue\tgreen\t\tA\tcolour\timg/x.png\n"
    )
    [mm] = read_benchmark(tmp_path / "mm.tsv")
    assert (mm.id, mm.type, mm.choices, mm.answers, mm.category) == (
        "7",
        "mc",
        ["red", "blue", "green"],
        ["A"],
        "colour",
    )
    assert mm.image_ref == str(tmp_path.resolve() / "img" / "x.png")

    (tmp_path / "qa.csv").write_text('question,answer,options\n"Is it red?",yes,\n"How many?",3,\n')
    yes, count = read_benchmark(tmp_path / "qa.csv")
    assert (yes.id, yes.type, count.type) == ("0", "yesno", "short")

    records = [
        {"question_id": "c1", "captions": ["a red star", "one red star"], "image": "https://x.org/a.png"},
        {"id": "m1", "question": "Pick", "options": {"A": "cat", "B": "dog"}, "label": "B", "extra": 5},
    ]
    (tmp_path / "b.json").write_text(json.dumps(records, indent=1))
    cap, mc = read_benchmark(tmp_path / "b.json")
    assert cap.type == "caption" and cap.answers == ["a red star", "one red star"]
    assert cap.image_ref == "https://x.org/a.png" and cap.question.startswith("Write a caption")
    assert mc.choices == ["cat", "dog"] and mc.meta == {"extra": 5}

    png = scene_from_seed(0, 0).encode("png")
    table = pa.table(
        {
            "id": ["p1"],
            "question": ["How many objects are there?"],
            "answer": ["2"],
            "image": [{"bytes": png, "path": "s.png"}],
        }
    )
    pq.write_table(table, tmp_path / "b.parquet")
    [p] = read_benchmark(tmp_path / "b.parquet")
    assert p.image_bytes == png and p.image == "s.png" and p.answers == ["2"]


def test_vlmevalkit_tsv_with_base64_images_hints_and_shared_images(tmp_path: Path) -> None:
    """MMBench as VLMEvalKit ships it: images inline in base64 (a cell far over csv's 128 KiB
    default), a later row naming an earlier row's index instead of repeating its image, hints."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    big = buf.getvalue()
    jpg = scene_from_seed(0, 1).encode("jpg")
    b64 = base64.b64encode(big).decode()
    assert len(b64) > 131072
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "7.png").write_bytes(jpg)
    rows = [
        ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"],
        ["10", "What is shown?", "Look closely.", "noise", "a cat", "a dog", "", "A", "perception", b64],
        ["11", "Is it colourful?", "nan", "yes", "no", "", "", "A", "perception", "10"],
        ["12", "Which?", "", "x", "y", "", "", "B", "other", base64.b64encode(jpg).decode()],
        ["13", "A file?", "", "x", "y", "", "", "B", "other", "img/7.png"],
        ["14", "Not an image", "", "x", "y", "", "", "B", "other", "QUJD" * 40],
    ]
    (tmp_path / "mmbench.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    first, shared, inline_jpg, on_disk, not_image = read_benchmark(tmp_path / "mmbench.tsv")
    assert first.image_bytes == big and first.image == "<base64>" and first.image_ref is None
    assert first.question == "Hint: Look closely.\nWhat is shown?" and "hint" not in first.meta
    assert first.choices == ["noise", "a cat", "a dog"] and first.answers == ["A"]
    assert shared.image_bytes == big and shared.question == "Is it colourful?"  # row 10's image
    assert inline_jpg.image_bytes == jpg
    assert on_disk.image_bytes is None and on_disk.image_ref == str(tmp_path.resolve() / "img" / "7.png")
    # base64 that decodes to no image stays a (missing) path: the run marks it, never shows garbage
    assert not_image.image_bytes is None and not_image.image_ref is not None
    assert Image.open(io.BytesIO(shared.image_bytes)).size == (320, 320)


def test_the_layouts_public_benchmarks_ship_in(tmp_path: Path) -> None:
    """POPE, VQAv2/VizWiz, ScienceQA, SEED-Bench, TextVQA and MM-Vet as they come, unedited."""
    (tmp_path / "pope.jsonl").write_text(
        json.dumps({"question_id": 1, "image": "COCO_1.jpg", "text": "Is there a dog?", "label": "no"}) + "\n"
    )
    [pope] = read_benchmark(tmp_path / "pope.jsonl")
    assert (pope.id, pope.question, pope.type, pope.answers) == ("1", "Is there a dog?", "yesno", ["no"])
    assert pope.image_ref == str(tmp_path.resolve() / "COCO_1.jpg")

    vqa = {
        "question_id": 5,
        "image": "v.jpg",
        "question": "What colour?",
        "answers": [
            {"answer": "red", "answer_confidence": "yes"},
            {"answer": "dark red", "answer_confidence": "maybe"},
        ],
    }
    sqa = {"id": "s", "question": "Which is a mammal?", "choices": ["frog", "whale"], "answer": 1, "hint": ""}
    seed = {
        "question_id": "101",
        "question": "Where?",
        "choice_a": "park",
        "choice_b": "beach",
        "choice_c": "road",
        "choice_d": "shop",
        "answer": "B",
        "image": "s.png",
    }
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (vqa, sqa, seed)))
    v, q, sd = read_benchmark(tmp_path / "mixed.jsonl")
    assert v.answers == ["red", "dark red"] and v.type == "short"
    assert q.type == "mc" and q.answers == ["B"] and q.question == "Which is a mammal?"  # index 1
    assert sd.choices == ["park", "beach", "road", "shop"] and sd.answers == ["B"] and sd.meta == {}

    (tmp_path / "textvqa.json").write_text(
        json.dumps(
            {
                "dataset_name": "textvqa",
                "data": [
                    {"question_id": 7, "question": "What brand?", "answers": ["nokia"] * 3, "image": "t.jpg"}
                ],
            }
        )
    )
    [t] = read_benchmark(tmp_path / "textvqa.json")
    assert (t.id, t.answers, t.image_ref) == ("7", ["nokia"] * 3, str(tmp_path.resolve() / "t.jpg"))

    (tmp_path / "mmvet.json").write_text(
        json.dumps(
            {
                "v1_0": {
                    "imagename": "v1_0.png",
                    "question": "What is x?",
                    "answer": "3",
                    "capability": "math",
                },
                "v1_1": {"imagename": "v1_1.png", "question": "Who?", "answer": "a cat"},
            }
        )
    )
    a, b = read_benchmark(tmp_path / "mmvet.json")
    assert (a.id, b.id, a.meta["capability"]) == ("v1_0", "v1_1", "math")
    assert a.image_ref == str(tmp_path.resolve() / "v1_0.png")

    (tmp_path / "config.json").write_text(json.dumps({"name": "x", "version": 2}))
    with pytest.raises(BenchFileError, match="a JSON object that is no benchmark"):
        read_benchmark(tmp_path / "config.json")
    (tmp_path / "broken.json").write_text('{"data": [')
    with pytest.raises(BenchFileError, match="invalid JSON"):
        read_benchmark(tmp_path / "broken.json")


def test_mmmu_parquet_with_several_images_and_python_literal_options(tmp_path: Path) -> None:
    """MMMU as the hub ships it: options as a Python list literal, images in image_1..image_7 (bytes,
    most of them null); every present image is kept in order and none is left in meta."""
    one, two = scene_from_seed(0, 1).encode("png"), scene_from_seed(0, 2).encode("png")
    table = pa.table(
        {
            "id": ["validation_Art_1", "validation_Art_2"],
            "question": ["Compare <image 1> and <image 2>. Which has more objects?", "What is in <image 1>?"],
            "options": ["['the first', 'the second', \"neither's\"]", "['a star', 'a cross']"],
            "answer": ["B", "A"],
            "image_1": [{"bytes": one, "path": None}, {"bytes": two, "path": None}],
            "image_2": [{"bytes": two, "path": None}, None],
            "image_3": [None, None],
        }
    )
    pq.write_table(table, tmp_path / "mmmu.parquet")
    a, b = read_benchmark(tmp_path / "mmmu.parquet")
    assert a.choices == ["the first", "the second", "neither's"] and a.answers == ["B"] and a.type == "mc"
    assert a.image_bytes == one and [m.image_bytes for m in a.more_images] == [two]
    assert b.image_bytes == two and b.more_images == [] and b.choices == ["a star", "a cross"]
    assert not any(k.startswith("image_") for k in a.meta) and not any(k.startswith("image_") for k in b.meta)
    # a text that is neither JSON nor a literal list is still refused by name
    (tmp_path / "bad.csv").write_text("question,options\nq?,\"['a', oops\"\n")
    with pytest.raises(BenchFileError, match="choices must be a list"):
        read_benchmark(tmp_path / "bad.csv")


def test_an_image_field_that_holds_several_images(tmp_path: Path) -> None:
    """VLMEvalKit's multi-image cell (a list of base64 strings written as text) and a JSON list of
    paths: the first is the image, the rest follow it in order."""
    one, two = scene_from_seed(0, 1).encode("png"), scene_from_seed(0, 2).encode("png")
    cell = str([base64.b64encode(one).decode(), base64.b64encode(two).decode()])
    (tmp_path / "multi.tsv").write_text(f"index\tquestion\tanswer\timage\n1\tSame?\tno\t{cell}\n")
    [t] = read_benchmark(tmp_path / "multi.tsv")
    assert t.image_bytes == one and [m.image_bytes for m in t.more_images] == [two]
    rec = {"id": "j", "question": "Same?", "answer": "no", "images": ["a.png", "b.png"]}
    (tmp_path / "multi.jsonl").write_text(json.dumps(rec) + "\n")
    [j] = read_benchmark(tmp_path / "multi.jsonl")
    assert j.image_ref == str(tmp_path.resolve() / "a.png")
    assert [m.image_ref for m in j.more_images] == [str(tmp_path.resolve() / "b.png")]


def test_coco_captions_are_a_caption_benchmark(coco_dir: Path, tmp_path: Path) -> None:
    """Real COCO captions: one caption item per photo, the photo found in the split's folder, its
    human captions the references (the file the user already has for `vlcurate score`)."""
    path = coco_dir / "annotations" / "captions_val2017.json"
    doc = json.loads(path.read_text())
    items = read_benchmark(path)
    assert len(items) == len(doc["images"]) and {i.type for i in items} == {"caption"}
    by_id = {str(im["id"]): im for im in doc["images"]}
    for item in items:
        im = by_id[item.id]
        assert item.image_ref == str((coco_dir / "val2017" / im["file_name"]).resolve())
        want = [a["caption"] for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert item.answers == [c.strip() for c in want] and len(item.answers) >= 5
    # moved away from its photos: the images' coco_url
    (tmp_path / "c.json").write_text(path.read_text())
    moved = read_benchmark(tmp_path / "c.json")
    assert all(i.image_ref and i.image_ref.startswith("http://images.cocodataset.org/") for i in moved)


def test_instruction_data_reads_as_a_benchmark(tmp_path: Path) -> None:
    data = make_training_samples(tmp_path, 8, seed=2)
    items = read_benchmark(data)
    assert len(items) == 8
    (tmp_path / "version.json").write_text("{}")  # an export's bookkeeping beside its data file
    assert [i.id for i in read_benchmark(tmp_path)] == [i.id for i in items]  # the folder: its one data file
    hf = read_benchmark(make_training_samples(tmp_path / "hf", 8, seed=2, fmt="hf"))
    assert [(i.id, i.question, i.answers, i.choices, i.category) for i in hf] == [
        (i.id, i.question, i.answers, i.choices, i.category) for i in items
    ]
    assert all(i.image_bytes == Path(j.image_ref or "").read_bytes() for i, j in zip(hf, items, strict=True))
    for it in items:
        assert not it.question.endswith("single word or number.") and "Answer with" not in it.question
        assert it.answers and it.image_ref and Path(it.image_ref).is_file()
        if it.type == "mc":
            assert it.choices and it.answers[0] in "ABCD"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("b.jsonl", '{"question": "q?", "answer": "a"}\n{"question": \n', "b.jsonl:2: invalid JSON"),
        ("b.jsonl", '{"question": "q?", "answer": "a"}\n\n[1]\n', "b.jsonl:3: expected a JSON object"),
        ("b.jsonl", '{"answer": "a"}\n', "b.jsonl:1: no question"),
        ("b.jsonl", '{"id": 1, "question": "q"}\n{"id": 1, "question": "r"}\n', "b.jsonl:2: id '1' repeats"),
        ("b.jsonl", '{"question": "q", "type": "essay"}\n', "type must be mc, short, yesno or caption"),
        ("b.jsonl", '{"question": "q", "type": "mc"}\n', "b.jsonl:1: a multiple-choice item needs choices"),
        ("b.json", '[\n {"question": "q"},\n {"answer": 2}\n]', "b.json:3: no question"),
        ("b.json", '[{"question": "q"},', "not a JSON array"),
        ("b.csv", "question,choices\nq,notalist\n", "b.csv:2: choices must be a list"),
        ("b.xml", "<q/>", "unknown benchmark format"),
        ("b.jsonl", "\n\n", "holds no items"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, name: str, text: str, expected: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(BenchFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_benchmark(tmp_path / name)


def test_spreadsheet_exports_latin1_bom_and_bad_json_objects(tmp_path: Path) -> None:
    """An Excel CSV starts with a byte order mark (its first column must still read as `question`);
    a Latin-1 file is refused by name with the fix; so is a JSON object whose items are not a list."""
    (tmp_path / "bom.csv").write_bytes("\ufeffquestion,answer\nIs it red?,yes\n".encode())
    [item] = read_benchmark(tmp_path / "bom.csv")
    assert (item.question, item.answers, item.type) == ("Is it red?", ["yes"], "yesno")
    (tmp_path / "latin.tsv").write_bytes("question\tanswer\nWas ist das?\tK\xe4se\n".encode("latin-1"))
    with pytest.raises(BenchFileError, match=r"latin\.tsv: not UTF-8 text near line 1 .*iconv"):
        read_benchmark(tmp_path / "latin.tsv")
    (tmp_path / "obj.json").write_text('{"data": 5, "name": "x"}')
    with pytest.raises(BenchFileError, match="a JSON object that is no benchmark"):
        read_benchmark(tmp_path / "obj.json")


def test_many_bad_lines_are_counted_and_missing_files_are_clear(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text("oops\n" * 9)
    with pytest.raises(BenchFileError, match=r"9 bad benchmark record\(s\).*b.jsonl:5.*\(and 4 more\)"):
        read_benchmark(tmp_path / "b.jsonl")
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(BenchFileError, match=r"found b\.jsonl, other\.json"):
        read_benchmark(tmp_path)
    with pytest.raises(FileNotFoundError, match="benchmark not found"):
        read_benchmark(tmp_path / "missing.jsonl")

"""`vlcurate build` end to end on synthetic scenes (truth known) and COCO-mini (expansion)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tests.builder.conftest import ALL_SHAPES, scene_of, true_class, write_scene_pool
from typer.testing import CliRunner

from vlcurate.builder.formats import read_dataset
from vlcurate.builder.job import BuildConfig, build, work_dir_for
from vlcurate.cli.main import app
from vlcurate.synth.vocab import SHAPES


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def _box_iou(a: list[int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def classify_run(single_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("cls") / "shapes"
    cfg = BuildConfig(
        request=f"a classification set of {ALL_SHAPES}, 12 each", pools=[str(single_pool)], out=out
    )
    return out, build(cfg)


def test_classification_labels_match_the_truth_and_alr_tracks_accuracy(
    classify_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = classify_run
    exported = _jsonl(out / "labels.jsonl")
    per_class = summary["counts"]["per_class"]
    assert set(per_class) == set(SHAPES) and all(10 <= n <= 12 for n in per_class.values())
    assert summary["short_classes"] == {c: n for c, n in per_class.items() if n < 12}  # said, not hidden
    right = [r["labels"][0]["class"] == true_class(r["source"], True) for r in exported]
    assert np.mean(right) >= 0.95  # what is exported was checked twice
    # ALR over every label made (before supervision) against the true accuracy of those labels
    cands = _jsonl(out / "review" / "candidates.jsonl")
    truth = [r["labels"][0]["class"] == true_class(r["source"], True) for r in cands]
    alr = summary["metrics"]["alr"]
    assert abs(alr["alr"] - np.mean(truth)) <= 0.05
    assert alr["ci95"][0] <= alr["alr"] <= alr["ci95"][1]
    bal = summary["metrics"]["balance"]
    assert bal["cbi"] < 0.021 and bal["min_max_ratio"] >= 10 / 12
    # every label keeps its confidence, model and check; doubtful ones are queued, not exported
    lab = exported[0]["labels"][0]
    assert lab["model"] == "zero-shot:tiny-synth" and lab["verified"] is True and 0 < lab["confidence"] <= 1
    queued = {q["uid"] for q in _jsonl(out / "review" / "queue.jsonl")}
    assert not queued & {r["uid"] for r in exported}
    # the export re-imports, the card and the spec are there, the work folder is gone
    ds = read_dataset(out / "imagefolder")
    assert len(ds.items) == sum(per_class.values()) and sorted(ds.splits()) == ["test", "train", "val"]
    card = (out / "README.md").read_text()
    assert "Annotation Label Reliability" in card and "Class Balance Index" in card and "circle" in card
    assert (out / "spec.yaml").is_file() and (out / "report" / "report.json").is_file()
    assert not work_dir_for(out).exists()


def test_the_report_puts_each_stage_cost_beside_what_it_removed(
    classify_run: tuple[Path, dict[str, Any]],
) -> None:
    import re

    out, summary = classify_run
    rep = json.loads((out / "report" / "report.json").read_text())
    stages = {s["stage"]: s for s in rep["stages"]}
    assert list(stages) == [
        "demand", "collect", "tools", "embed", "retrieve", "label", "verify", "supervise", "export"
    ]  # fmt: skip
    cands = _jsonl(out / "review" / "candidates.jsonl")
    n_labels = sum(len(r["labels"]) for r in cands)
    # real calls, counted where they happen: every cleaned pool image embedded once, every candidate
    # classified once, every label looked at again once by the crop check
    assert stages["embed"]["calls"]["images_encoded"] == stages["tools"]["kept"] == stages["embed"]["saw"]
    assert stages["label"]["calls"]["images_encoded"] == len(cands) == stages["label"]["saw"]
    assert stages["verify"]["calls"]["images_encoded"] == n_labels
    assert stages["label"]["calls"]["image_encode_batches"] >= 1 and "vlm_requests" not in rep["model_calls"]
    assert rep["model_calls"]["images_encoded"] == sum(
        s["calls"].get("images_encoded", 0) for s in rep["stages"]
    )
    assert all(s["seconds"] >= 0 for s in rep["stages"]) and not any(s["resumed"] for s in rep["stages"])
    # what was removed, with why: the tools' drops and the labels held back for review
    held = {q["uid"] for q in _jsonl(out / "review" / "queue.jsonl")}
    assert stages["supervise"]["removed"] == len(held) > 0
    assert stages["export"]["kept"] == sum(summary["counts"]["per_class"].values())
    assert summary["stages"] == rep["stages"]
    html = (out / "report" / "report.html").read_text()
    thumbs = re.findall(r"src='(thumbs/[0-9a-f]+\.png)'", html)
    assert len(thumbs) >= min(len(held), 36) and all((out / "report" / t).is_file() for t in thumbs)
    assert "Doubtful labels held back for review" in html and "Cost and effect per stage" in html
    for png in ("plots/per_class_counts.png", "plots/per_class_reliability.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG" and png in html
    md = (out / "report" / "report.md").read_text()
    assert "Cost and effect per stage" in md and "images kept" in md and "pairs" not in md


def test_detection_and_segmentation_against_the_truth(multi_pool: Path, tmp_path: Path) -> None:
    cfg = BuildConfig(
        request=f"segmentation of {ALL_SHAPES}, 10 each", pools=[str(multi_pool)], out=tmp_path / "seg"
    )
    summary = build(cfg)
    assert set(summary["formats"]) == {"coco", "yolo"}
    right, ious, n_truth = 0, [], 0
    exported = _jsonl(tmp_path / "seg" / "labels.jsonl")
    for r in exported:
        scene = scene_of(r["source"], single=False)
        n_truth += scene.n_objects
        for lab in r["labels"]:
            best = max(range(scene.n_objects), key=lambda k: _box_iou(lab["box"], scene.objects[k].bbox))
            ok = _box_iou(lab["box"], scene.objects[best].bbox) >= 0.5
            right += ok and SHAPES[scene.objects[best].label] == lab["class"]
    n_labels = sum(len(r["labels"]) for r in exported)
    assert n_labels == n_truth  # every object of an exported image is labelled
    assert right / n_labels >= 0.95
    coco = read_dataset(tmp_path / "seg" / "coco")
    for it in coco.items:
        scene = scene_of(Path(next(r["source"] for r in exported if r["file"] == it.name)).stem, single=False)
        for a in it.anns:
            assert a.mask is not None
            ious.append(max(((a.mask & m).sum() / (a.mask | m).sum()) for m in scene.masks))
    assert np.mean(ious) >= 0.85
    assert summary["metrics"]["balance"]["cbi"] < 0.05


def test_a_subset_of_the_shapes_leaves_the_others_unlabelled(multi_pool: Path, tmp_path: Path) -> None:
    request = "8 images each of circles, stars and crosses for detection, not squares or triangles"
    summary = build(BuildConfig(request=request, pools=[str(multi_pool)], out=tmp_path / "sub"))
    assert summary["spec"]["other"] == ["square", "triangle"]
    right = n = 0
    for r in _jsonl(tmp_path / "sub" / "labels.jsonl"):
        scene = scene_of(r["source"], single=False)
        for lab in r["labels"]:
            best = max(range(scene.n_objects), key=lambda k: _box_iou(lab["box"], scene.objects[k].bbox))
            n += 1
            right += (
                _box_iou(lab["box"], scene.objects[best].bbox) >= 0.5
                and SHAPES[scene.objects[best].label] == lab["class"]
            )
    assert n >= 24 and right / n >= 0.95  # no square or triangle passed off as a class


def _plant(pool: Path, photos: list[Path]) -> list[str]:
    names = []
    for k, f in enumerate(photos):
        im = Image.open(f).convert("RGB")
        w, h = im.size
        for kind, img in (
            ("resized", im.resize((w // 2, h // 2))),
            ("cropped", im.crop((w // 20, h // 20, w, h))),
        ):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=70)
            (pool / f"planted-{kind}-{k}.jpg").write_bytes(buf.getvalue())
            names.append(f"planted-{kind}-{k}.jpg")
        shutil.copy(f, pool / f"planted-same-{k}.jpg")
        names.append(f"planted-same-{k}.jpg")
    return names


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_expanding_coco_mini_lets_no_test_image_or_copy_back_in(
    coco_dir: Path, tmp_path: Path, fmt: str
) -> None:
    # the existing dataset: COCO-mini val photos with their boxes, as COCO or YOLO, 6 of them the test split
    from vlcurate.builder.formats import write_dataset

    src = tmp_path / "src"
    (src / "annotations").mkdir(parents=True)
    raw = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    keep = {im["id"] for im in sorted(raw["images"], key=lambda i: i["file_name"])[:18]}
    raw["images"] = [im for im in raw["images"] if im["id"] in keep]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in keep]
    (src / "annotations" / "instances_val2017.json").write_text(json.dumps(raw))
    (src / "val2017").symlink_to(coco_dir / "val2017")
    existing = read_dataset(src, masks=False)
    for i, it in enumerate(sorted(existing.items, key=lambda x: x.name)):
        it.split = "test" if i < 6 else "train"
    write_dataset(existing, fmt, tmp_path / "existing")
    test_files = sorted(it.path for it in existing.items if it.split == "test" and it.path)
    # the pool: new photos (COCO train) plus planted copies of test images
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in sorted((coco_dir / "train2017").glob("*.jpg"))[:12]:
        shutil.copy(f, pool / f.name)
    planted = _plant(pool, test_files[:3])
    out = tmp_path / "expanded"
    summary = build(
        BuildConfig(
            request="",
            pools=[str(pool)],
            out=out,
            expand=tmp_path / "existing",
            task="classify",
            images_per_class=2,
            formats=["imagefolder"],
            max_rounds=1,
        )
    )
    assert summary["copies_of_expanded_removed"] == len(planted)
    sources = {Path(r["source"]).name for r in _jsonl(out / "review" / "candidates.jsonl")}
    assert not sources & set(planted)
    assert summary["spec"]["classes"][0]["name"] in existing.classes


def test_resume_after_a_failed_export_and_the_bad_inputs(
    single_pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlcurate.builder import job

    out = tmp_path / "shapes"
    cfg = BuildConfig(request="circles and squares, 5 each", pools=[str(single_pool)], out=out)

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(job, "export_all", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build(cfg)
    assert not out.exists() and work_dir_for(out).is_dir()  # nothing half-written, progress kept
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    first = json.loads((work_dir_for(out) / "costs.json").read_text())["stages"]
    stages: list[str] = []
    summary = build(cfg, progress=lambda s, m: stages.append(m))
    assert summary["resumed"]["pool"] and any("already labelled" in m for m in stages)
    assert summary["counts"]["per_class"] == {"circle": 5, "square": 5}
    # reused stages report what the first run recorded; labelling counts every label made in both
    costs = {s["stage"]: s for s in summary["stages"]}
    for name in ("collect", "tools"):
        assert costs[name]["resumed"] and costs[name]["calls"] == first[name]["calls"]
        assert costs[name]["kept"] == first[name]["kept"] and costs[name]["removed"] == len(
            first[name]["removed"]
        ) + sum(first[name]["removed_unseen"].values())
    n_cands = len(_jsonl(out / "review" / "candidates.jsonl"))
    assert costs["label"]["resumed"] and costs["label"]["calls"]["images_encoded"] == n_cands
    assert costs["label"]["calls"]["images_encoded"] >= first["label"]["calls"]["images_encoded"]
    assert (
        not costs["embed"]["resumed"] and costs["embed"]["calls"]["images_encoded"] == costs["tools"]["kept"]
    )
    runner = CliRunner()
    r = runner.invoke(
        app, ["build", "circles and squares, 5 each", "--pool", str(single_pool), "--out", str(out)]
    )
    assert r.exit_code == 2 and "exists and is not empty" in r.output
    r = runner.invoke(
        app,
        ["build", "300 images each for detection", "--pool", str(single_pool), "--out", str(tmp_path / "x")],
    )
    assert r.exit_code == 2 and "names no classes" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["build", "circles", "--pool", str(empty), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "cannot read pool" in r.output
    (tmp_path / "bad").mkdir()
    r = runner.invoke(
        app,
        [
            "build",
            "circles",
            "--pool",
            str(single_pool),
            "--out",
            str(tmp_path / "z"),
            "--expand",
            str(tmp_path / "bad"),
        ],
    )
    assert r.exit_code == 2 and "not a dataset folder" in r.output
    r = runner.invoke(
        app,
        ["build", "circles, 3 each", "--pool", str(single_pool), "--out", str(tmp_path / "d"), "--dry-run"],
    )
    assert r.exit_code == 0 and '"pool_images": 260' in r.output and not (tmp_path / "d").exists()
    r = runner.invoke(
        app,
        [
            "build",
            "circles for detection",
            "--pool",
            str(single_pool),
            "--out",
            str(tmp_path / "h"),
            "--detector",
            "owlv2",
        ],
    )
    assert (
        r.exit_code == 2
        and "google/owlv2-base-patch16-ensemble" in r.output
        and "huggingface-cli download" in r.output
    )


def test_cli_builds_from_a_spec_file(single_pool: Path, tmp_path: Path) -> None:
    from vlcurate.builder.demand import parse_request

    spec = tmp_path / "spec.yaml"
    spec.write_text(parse_request("4 images each of stars and crosses").to_yaml())
    r = CliRunner().invoke(
        app, ["build", "--spec", str(spec), "--pool", str(single_pool), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    assert "ALR" in r.output and (tmp_path / "o" / "imagefolder").is_dir()
    again = write_scene_pool(tmp_path / "p2", 3, single=True)
    assert len(list(again.iterdir())) == 3

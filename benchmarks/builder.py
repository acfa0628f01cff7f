"""`vlcurate build` on the synthetic world, where the truth is known.

Prints one JSON object: label accuracy (exported labels and every label made), box mAP@0.5 and mask
IoU against the scenes' truth, ALR against the true accuracy of the labels it rates, CBI, planted
copies left (of pool images and of the expanded set's test split), time per 1,000 pool images per
stage. Usage: .venv/bin/python benchmarks/builder.py [--n 1000] [--per-class 40] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _common import bench_dir, emit, machine_info
from vlcurate.builder.formats import Ann, Dataset, Item, write_dataset
from vlcurate.builder.job import BuildConfig, build
from vlcurate.synth.scene import Scene, generate_scene, scene_rng
from vlcurate.synth.vocab import SHAPES

SEED = 42
ALL = "circles, squares, triangles, stars and crosses"


def scene(i: int, single: bool) -> Scene:
    return generate_scene(scene_rng(SEED, i), n_objects=1 if single else None)


def _jpeg(img: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def copies_of(img: Image.Image) -> list[bytes]:
    """A re-encoded, a resized and a slightly cropped copy."""
    w, h = img.size
    return [
        _jpeg(img, 80),
        _jpeg(img.resize((w * 2, h * 2)), 90),
        _jpeg(img.crop((2, 2, w, h)).resize((w, h)), 90),
    ]


def write_pool(folder: Path, n: int, single: bool, plant_every: int, test_ids: list[int]) -> dict[str, int]:
    """Scenes 0..n-1 as PNG, a copy of every `plant_every`-th one, and copies of the test scenes."""
    folder.mkdir(parents=True)
    origin: dict[str, int] = {}
    for i in range(n):
        s = scene(i, single)
        (folder / f"{i:05d}.png").write_bytes(s.encode("png"))
        origin[f"{i:05d}.png"] = i
        if plant_every and i % plant_every == 0:
            name = f"copy-{i:05d}.jpg"
            (folder / name).write_bytes(copies_of(s.image)[i % 3])
            origin[name] = i
    for t in test_ids:
        for k, data in enumerate(copies_of(scene(t, single).image)):
            (folder / f"testcopy-{t:05d}-{k}.jpg").write_bytes(data)
            origin[f"testcopy-{t:05d}-{k}.jpg"] = t
    return origin


def existing_dataset(path: Path, ids: list[int], single: bool, train_ids: Sequence[int] = ()) -> None:
    """The labelled set being expanded: its test split (planted back into the pool as copies) and a
    train split, whose labels are the trusted sample the build measures its verifier on."""
    items = []
    for split, members in (("test", ids), ("train", list(train_ids))):
        for i in members:
            s = scene(i, single)
            anns = [Ann(SHAPES[o.label], o.bbox) for o in s.objects]
            items.append(Item(f"{i:05d}.png", split, 64, 64, anns, data=s.encode("png")))
    write_dataset(Dataset(list(SHAPES), items), "yolo", path)


def box_iou(a: list[int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def average_precision(preds: list[tuple[float, bool]], n_truth: int) -> float:
    """All-point interpolated AP (VOC 2010+) from (confidence, is true positive) pairs."""
    if not n_truth:
        return float("nan")
    preds = sorted(preds, key=lambda p: -p[0])
    tp = np.cumsum([p[1] for p in preds])
    fp = np.cumsum([not p[1] for p in preds])
    recall = np.concatenate([[0], tp / n_truth, [1]])
    precision = np.concatenate([[1], tp / np.maximum(tp + fp, 1), [0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    idx = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[idx + 1] - recall[idx]) * precision[idx + 1]).sum())


def box_map50(records: list[dict[str, Any]], origin: dict[str, int], single: bool) -> float:
    """Mean over classes of AP at IoU 0.5 for the labelled boxes of these images against their truth."""
    aps = []
    for c in SHAPES:
        preds, n_truth = [], 0
        for r in records:
            s = scene(origin[Path(r["source"]).name], single)
            n_truth += sum(1 for o in s.objects if SHAPES[o.label] == c)
            for lab in r["labels"]:
                if lab["class"] == c:
                    hit = any(box_iou(lab["box"], o.bbox) >= 0.5 and SHAPES[o.label] == c for o in s.objects)
                    preds.append((lab["confidence"], hit))
        aps.append(average_precision(preds, n_truth))
    return round(float(np.nanmean(aps)), 4)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def per_stage(stages: list[dict[str, Any]], n_pool: int) -> dict[str, dict[str, Any]]:
    """Each stage's time per 1,000 images it handled and per 1,000 pool images, and its model calls."""
    out = {}
    for s in stages:
        seen = s["saw"] or n_pool
        out[s["stage"]] = {
            "seconds": s["seconds"],
            "images_in": s["saw"],
            "seconds_per_1000_images_in": round(s["seconds"] / max(1, seen) * 1000, 3),
            "seconds_per_1000_pool_images": round(s["seconds"] / n_pool * 1000, 3),
            "model_calls": s["calls"],
        }
    return out


def run(task: str, root: Path, n: int, per_class: int, trusted: int = 400) -> dict[str, Any]:
    single = task == "classify"
    test_ids = list(range(n, n + 20))  # scenes only the existing dataset has
    pool = root / f"pool-{task}"
    origin = write_pool(pool, n, single, plant_every=20, test_ids=test_ids)
    existing = root / f"existing-{task}"
    existing_dataset(existing, test_ids, single, list(range(n + 20, n + 20 + trusted)))
    request = f"{per_class} images each of {ALL}" + ("" if single else " for segmentation")
    out = root / f"out-{task}"
    t0 = time.perf_counter()
    summary = build(BuildConfig(request=request, pools=[str(pool)], out=out, expand=existing))
    seconds = time.perf_counter() - t0
    exported = jsonl(out / "labels.jsonl")
    cands = jsonl(out / "review" / "candidates.jsonl")
    names = [Path(r["source"]).name for r in exported]
    ids = [origin[x] for x in names]
    result: dict[str, Any] = {
        "pool_images": len(origin),
        "exported_images": len(exported),
        "per_class": summary["counts"]["per_class"],
        "alr": summary["metrics"]["alr"],
        "cbi": summary["metrics"]["balance"]["cbi"],
        "min_max_ratio": summary["metrics"]["balance"]["min_max_ratio"],
        "duplicates_left": len(ids) - len(set(ids)),
        "test_copies_planted": len(test_ids) * 3,
        "test_copies_left": sum(1 for i in ids if i in set(test_ids)),
        "copies_of_expanded_removed": summary["copies_of_expanded_removed"],
        "queued_for_review": summary["queued_for_review"],
        "seconds_total": round(seconds, 2),
        "seconds_per_1000_pool_images": summary["seconds_per_1000_pool_images"],
        "models": summary["models"],
        "per_stage": per_stage(summary["stages"], len(origin)),
    }

    def correct(r: dict[str, Any]) -> list[bool]:
        s = scene(origin[Path(r["source"]).name], single)
        if single:
            return [r["labels"][0]["class"] == SHAPES[s.objects[0].label]]
        out_ = []
        for lab in r["labels"]:
            k = max(range(s.n_objects), key=lambda j: box_iou(lab["box"], s.objects[j].bbox))
            out_.append(
                box_iou(lab["box"], s.objects[k].bbox) >= 0.5 and SHAPES[s.objects[k].label] == lab["class"]
            )
        return out_

    exp_ok = [c for r in exported for c in correct(r)]
    all_ok = [c for r in cands for c in correct(r)]
    checked = [lab["verified"] for r in cands for lab in r["labels"]]
    result["label_accuracy_exported"] = round(float(np.mean(exp_ok)), 4)
    result["label_accuracy_all_labels"] = round(float(np.mean(all_ok)), 4)
    alr = summary["metrics"]["alr"]
    result["alr_minus_true_accuracy"] = round(alr["alr"] - float(np.mean(all_ok)), 4)
    result["true_accuracy_in_alr_ci95"] = alr["ci95"][0] <= float(np.mean(all_ok)) <= alr["ci95"][1]
    if alr.get("calibrated"):  # the share the check confirmed, before the correction
        result["raw_confirmed_minus_true_accuracy"] = round(alr["raw"]["alr"] - float(np.mean(all_ok)), 4)
    result["verifier_agreement_with_truth"] = round(
        float(np.mean([a == b for a, b in zip(all_ok, checked, strict=True)])), 4
    )
    if not single:
        from vlcurate.builder.formats import read_dataset

        result["box_map50_exported"] = box_map50(exported, origin, single)
        result["box_map50_all_labels"] = box_map50(cands, origin, single)
        coco = read_dataset(out / "coco")
        by_file = {r["file"]: origin[Path(r["source"]).name] for r in exported}
        ious = []
        for it in coco.items:
            s = scene(by_file[it.name], single)
            for a in it.anns:
                assert a.mask is not None
                ious.append(max(float((a.mask & m).sum() / (a.mask | m).sum()) for m in s.masks))
        result["mask_iou_mean"] = round(float(np.mean(ious)), 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000, help="scenes per pool")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--trusted", type=int, default=400, help="train images of the expanded set")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    root = bench_dir() / "builder"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    out = {
        "machine": machine_info(),
        "scorer": "tiny-synth, bundled (device and precision per run under models.scorer)",
        "classify": run("classify", root, args.n, args.per_class, args.trusted),
        "segment": run("segment", root, args.n, args.per_class, args.trusted),
    }
    c, s = out["classify"], out["segment"]
    out["time_per_1000_images"] = {
        "cpu": out["machine"]["cpu_model"],
        "precision": c["models"]["scorer"],
        "classify": {k: v["seconds_per_1000_images_in"] for k, v in c["per_stage"].items()},
        "segment": {k: v["seconds_per_1000_images_in"] for k, v in s["per_stage"].items()},
    }
    summary = (
        f"classify acc {c['label_accuracy_exported']} ALR-acc {c['alr_minus_true_accuracy']} CBI {c['cbi']}; "
        f"segment mAP50 {s['box_map50_exported']} mask IoU {s['mask_iou_mean']}; test copies left "
        f"{c['test_copies_left']}+{s['test_copies_left']}"
    )
    emit(out, summary, args.json_out)


if __name__ == "__main__":
    main()

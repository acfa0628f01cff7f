"""Pieces of the Data-Juicer comparison that are not timing: its venv, its input, its recipe, agreement.

Kept apart from `datajuicer_compare.py` so that the script reads as the experiment and this as the
plumbing; nothing here imports Data-Juicer (that runs in its own venv, see `dj_runner.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import TreePeakRss

# Data-Juicer's multimodal format: the image placeholder token in the text (SpecialTokens.image).
DJ_IMAGE_TOKEN = "<__dj__image>"
DJ_TORCH = "torch==2.13.0"
DJ_PACKAGES = ["py-data-juicer", "transformers", "imagededup", "aiohttp", "ray"]
SCORE_TOLERANCE = 1e-3


def _log(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def ensure_dj_venv(repo_root: Path) -> Path:
    """`.bench/dj-venv` with Data-Juicer, created when missing; returns its python.

    torch is installed first, alone, so that pip takes the CPU wheel the constraints file pins;
    imagededup (DJ's pHash), aiohttp and ray are imports Data-Juicer needs but does not declare
    (it would otherwise install them itself at import time, inside the timed run).
    """
    venv = repo_root / ".bench" / "dj-venv"
    python = venv / "bin" / "python"
    # find_spec, not import: importing imagededup pulls in torchvision, which needs dj_runner's shim
    modules = ["data_juicer", "imagededup", "aiohttp", "transformers", "ray"]
    probe = [
        str(python),
        "-c",
        f"import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in {modules!r}))",
    ]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    _log(f"creating Data-Juicer's venv in {venv} (a few minutes)")
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    constraints = ["-c", str(repo_root / "constraints.txt")]
    for cmd in (
        ["python3", "-m", "venv", str(venv)],
        [*pip, DJ_TORCH],
        [*pip, *constraints, *DJ_PACKAGES],
    ):
        subprocess.run(cmd, check=True)
    subprocess.run(probe, check=True)
    return python


def write_dj_jsonl(path: Path, pairs: Sequence[Any], coco_root: Path) -> None:
    """One JSON line per pair: uid, the text with DJ's image token in front, and the photo's file."""
    where: dict[str, str] = {}
    for split in ("val2017", "train2017"):
        folder = coco_root / split
        if folder.is_dir():
            for f in folder.iterdir():
                where.setdefault(f.name, str(f))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for pair in pairs:
            row = {
                "uid": pair.uid,
                "text": DJ_IMAGE_TOKEN + pair.caption,
                "images": [where[pair.photo.file_name]],
            }
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def dj_process(model: Path, min_chars: int, min_side: int, clip_min: float) -> list[dict[str, Any]]:
    """The chain as Data-Juicer's `process` list.

    DJ's text_length_filter counts the whole text field, image token included, so its bound is
    ours plus the token's length (the same captions pass).
    """
    return [
        {"text_length_filter": {"min_len": min_chars + len(DJ_IMAGE_TOKEN)}},
        {"image_shape_filter": {"min_width": min_side, "min_height": min_side}},
        {"image_text_similarity_filter": {"hf_clip": str(model), "min_score": clip_min, "max_score": 1.0}},
        {"image_deduplicator": {"method": "phash"}},
    ]


def run_measured(cmd: list[str], env: dict[str, str], result: Path) -> dict[str, Any]:
    """Run `cmd`, sampling its process tree's RSS every 0.2 s; the child writes its JSON to `result`.

    A file, not stdout: Data-Juicer redirects stdout into its logger. `DJC_T0` (the wall clock just
    before the start) lets the child report its own start-up time; `DJC_RESULT` names the file.
    """
    result.unlink(missing_ok=True)
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, env={**env, "DJC_T0": repr(t0), "DJC_RESULT": str(result)}
    )
    with TreePeakRss(proc.pid) as rss:
        proc.wait()
        wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} {cmd[1]} failed with exit code {proc.returncode}")
    res: dict[str, Any] = json.loads(result.read_text())
    res["wall_s"] = wall
    res["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
    res["loadavg_1m_before"] = load_before
    res["peak_rss_mib"] = rss.peak_mib
    return res


def agreement(
    dj: dict[str, Any], ours: dict[str, Any], photo_of: dict[str, str], clip_min: float
) -> dict[str, Any]:
    """How far the two runs agree: scores of the pairs both scored, kept sets before and after dedup.

    Before dedup the kept sets are comparable uid by uid (the threshold decisions). After it, each
    tool keeps one pair per duplicate group but picks it differently (DJ the first seen, ours by
    uid), so the comparable result is the set of photos kept.
    """
    ds: dict[str, float | None] = dj["scores"]
    os_: dict[str, float | None] = ours["scores"]
    both = [u for u, s in ds.items() if s is not None and os_.get(u) is not None]
    diff = np.array([abs(float(ds[u]) - float(os_[u])) for u in both])  # type: ignore[arg-type]
    # the threshold decision of each pair both tools scored (both scored exactly the pairs that
    # passed the caption and size filters, so this is the kept set before dedup, pair by pair)
    dj_pass = {u for u in both if float(ds[u]) >= clip_min}  # type: ignore[arg-type]
    ours_pass = {u for u in both if float(os_[u]) >= clip_min}  # type: ignore[arg-type]
    dj_photos = {photo_of[u] for u in dj["kept"]}
    ours_photos = {photo_of[u] for u in ours["kept"]}
    near = [u for u in both if abs(float(os_[u]) - clip_min) < 2 * SCORE_TOLERANCE]  # type: ignore[arg-type]
    return {
        "pairs_scored_by_both": len(both),
        "pairs_scored_dj": sum(s is not None for s in ds.values()),
        "pairs_scored_ours": sum(s is not None for s in os_.values()),
        "score_max_abs_diff": round(float(diff.max()), 5) if len(diff) else None,
        "score_mean_abs_diff": round(float(diff.mean()), 6) if len(diff) else None,
        "score_within_1e-3": round(float((diff <= SCORE_TOLERANCE).mean()), 4) if len(diff) else None,
        "score_corr": round(float(np.corrcoef([ds[u] for u in both], [os_[u] for u in both])[0, 1]), 5)
        if len(both) > 1
        else None,
        "pairs_near_threshold": len(near),
        "pass_threshold_dj": len(dj_pass),
        "pass_threshold_ours": len(ours_pass),
        "pass_threshold_only_dj": len(dj_pass - ours_pass),
        "pass_threshold_only_ours": len(ours_pass - dj_pass),
        "kept_dj": len(dj["kept"]),
        "kept_ours": len(ours["kept"]),
        "kept_photos_dj": len(dj_photos),
        "kept_photos_ours": len(ours_photos),
        "same_kept_photos": dj_photos == ours_photos,
        "kept_photos_only_dj": sorted(dj_photos - ours_photos)[:10],
        "kept_photos_only_ours": sorted(ours_photos - dj_photos)[:10],
    }


def preprocessing_check(
    model: Path, pairs: Sequence[Any], dj_scores: dict[str, Any], n: int = 48
) -> dict[str, Any]:
    """Where score differences come from: the same model fed our decode vs transformers' processor.

    For the first `n` pairs that Data-Juicer scored, our scorer scores each pair twice: once from
    our decoder's pixels (what `vlcurate run` does) and once from `CLIPImageProcessor`'s pixel
    values for the PIL-decoded image (what Data-Juicer does). If the second matches Data-Juicer to
    float rounding, the model, weights, tokenizer and pooling are the same and every remaining
    difference is image resizing.
    """
    import io

    import torch
    from PIL import Image

    from vlcurate.base.images import decode_image
    from vlcurate.models.loader import load_scorer
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()  # before transformers, which imports torchvision
    from transformers import CLIPImageProcessor

    scorer = load_scorer(f"hf-clip:{model}", device="cpu", precision="fp32")
    processor = CLIPImageProcessor.from_pretrained(str(model))
    chosen = [p for p in pairs if dj_scores.get(str(p.uid)) is not None][:n]
    decoded = [decode_image(p.photo.data, scorer.preprocessing.image_size).array for p in chosen]
    ours_px = np.stack([a for a in decoded if a is not None])
    pil = [Image.open(io.BytesIO(p.photo.data)).convert("RGB") for p in chosen]
    hf_px = processor(images=pil, return_tensors="pt")["pixel_values"]
    captions = [p.caption for p in chosen]
    with torch.inference_mode():
        text = scorer.encode_texts(captions)
        s_ours = scorer.cosine(scorer.encode_images(ours_px), text)
        s_hf = scorer.cosine(scorer.encode_pixels(hf_px), text)
        px_ours = scorer.images_to_tensor(ours_px).float()
    dj = np.array([float(dj_scores[str(p.uid)]) for p in chosen])
    std = torch.tensor(scorer.preprocessing.std).view(1, 3, 1, 1)
    pixel_diff = ((px_ours - hf_px) * std * 255).abs()  # back to 0..255 units
    return {
        "pairs": len(chosen),
        "processor": type(processor).__name__ + " (" + type(processor).__mro__[1].__name__ + ")",
        "max_abs_diff_dj_vs_ours_hf_pixels": round(float(np.abs(dj - s_hf).max()), 7),
        "max_abs_diff_dj_vs_ours_own_decode": round(float(np.abs(dj - s_ours).max()), 5),
        "mean_abs_pixel_diff_0_255": round(float(pixel_diff.mean()), 3),
        "max_abs_pixel_diff_0_255": round(float(pixel_diff.max()), 1),
    }

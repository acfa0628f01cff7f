"""Throughput of the per-sample statistics in `vlcurate.stats`: captions/s and images/s, one core.

Why: the text and image operators call these functions on every pair of a pool, so their rates
say which statistic is worth running before or after the expensive CLIP scorer, and how many
cores a recipe needs to keep up with it. Every rate is single-process (one core); multiply by
worker processes for a machine.

* Text: 100,000 COCO-style captions (the 795 human captions of COCO-mini repeated; every tenth
  one dressed as web alt-text with an HTML tag, a URL, a file name or stock-photo boilerplate so
  that the cleaner has work to do), through each batch function.
* Concept matching: the bundled ImageNet-1k vocabulary, and a ~21k-entry vocabulary (ImageNet-21k
  lemmas from timm's bundled `imagenet_synset_to_lemma.txt` when timm is installed, else random
  words) to show that the cost does not grow with the vocabulary.
* Image: the COCO-mini photos (train + val) as JPEG bytes, each statistic repeated over the set
  until `--min-seconds`.

Run: `.venv/bin/python benchmarks/stats_throughput.py --json-out .bench/stats.json`
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, log, machine_info, shared_dir
from vlcurate.base.images import decode_image
from vlcurate.stats import image as img_stats
from vlcurate.stats import text as txt

WEB_STYLES = [
    "Image may contain: {c}",
    "<p>{c}</p>",
    "{c} - stock photo",
    "{c} https://example.com/photos/IMG_{i}.jpg",
    "DSC{i:05d}.JPG {c} &amp; more",
]


def coco_captions() -> list[str]:
    """Every COCO-mini caption (train and val)."""
    caps: list[str] = []
    for split in ("train2017", "val2017"):
        path = shared_dir() / "data" / "coco-mini" / "annotations" / f"captions_{split}.json"
        caps += [a["caption"] for a in json.loads(path.read_text())["annotations"]]
    return caps


def coco_photos() -> list[bytes]:
    """Every COCO-mini photo as encoded JPEG bytes."""
    root = shared_dir() / "data" / "coco-mini"
    paths = [p for split in ("train2017", "val2017") for p in sorted((root / split).glob("*.jpg"))]
    return [p.read_bytes() for p in paths]


def make_captions(n: int, seed: int = 0) -> list[str]:
    """n COCO-style captions; every tenth wrapped in web alt-text noise."""
    base = coco_captions()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = base[i % len(base)].strip()
        if i % 10 == 9:
            c = rng.choice(WEB_STYLES).format(c=c, i=i)
        out.append(c)
    return out


def vocab_21k() -> tuple[list[str], str]:
    """ImageNet-21k lemmas from timm's bundled file (synonyms as ' / '), else 21k random words."""
    spec = importlib.util.find_spec("timm")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "_info" / "imagenet_synset_to_lemma.txt"
        if path.is_file():
            lines = [ln.split("\t", 1)[1] for ln in path.read_text().splitlines() if "\t" in ln]
            return [ln.replace(", ", " / ") for ln in lines], "timm imagenet_synset_to_lemma.txt"
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(21_000)]
    return words, "random words"


def rate(fn: Callable[[], Any], items: int, min_seconds: float) -> dict[str, float]:
    """Items/s of fn() (which processes `items` items), repeated until min_seconds have passed."""
    fn()  # warm-up: lazy model loads, imports, caches
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return {"per_s": round(items * runs / elapsed, 1), "seconds": round(elapsed, 3), "runs": runs}


def bench_text(n: int, min_seconds: float) -> dict[str, Any]:
    caps = make_captions(n)
    out: dict[str, Any] = {"captions": n}
    jobs: dict[str, Callable[[], Any]] = {
        "word_count": lambda: txt.word_counts(caps),
        "char_count": lambda: txt.char_counts(caps),
        "language": lambda: txt.detect_languages(caps),
        "char_repetition_n10": lambda: txt.char_repetition_ratios(caps, 10),
        "word_repetition_n10": lambda: txt.word_repetition_ratios(caps, 10),
        "word_repetition_n3": lambda: txt.word_repetition_ratios(caps, 3),
        "clean": lambda: txt.clean_captions(caps),
    }
    for name, fn in jobs.items():
        log(f"text: {name}")
        out[name] = rate(fn, n, min_seconds)
    langs, _ = txt.detect_languages(caps)
    out["language"]["share_en"] = round(sum(lang == "en" for lang in langs) / n, 4)

    for vname, (entries, source) in {
        "imagenet1k": (txt.load_vocabulary("imagenet1k"), "bundled"),
        "imagenet21k": vocab_21k(),
    }.items():
        log(f"text: concepts {vname}")
        t0 = time.perf_counter()
        matcher = txt.ConceptMatcher(entries)
        build_s = time.perf_counter() - t0
        r = rate(functools.partial(matcher.match_batch, caps), n, min_seconds)
        hits = matcher.contains_batch(caps)
        out[f"concepts_{vname}"] = {
            **r,
            "entries": len(entries),
            "keys_with_plurals": matcher.num_keys,
            "build_seconds": round(build_s, 3),
            "share_with_a_concept": round(float(hits.mean()), 4),
            "vocabulary_source": source,
        }
    return out


def bench_images(min_seconds: float) -> dict[str, Any]:
    photos = coco_photos()
    n = len(photos)
    arrays = [decode_image(d, img_stats.ANALYSIS_SIZE, fast=True).array for d in photos]
    decoded = [a for a in arrays if a is not None]
    grays = [img_stats.to_gray(a) for a in decoded]
    out: dict[str, Any] = {"photos": n, "total_mb": round(sum(map(len, photos)) / 1e6, 2)}
    jobs: dict[str, tuple[Callable[[], Any], int]] = {
        "header (size, aspect, bytes/pixel)": (lambda: [img_stats.read_header(d) for d in photos], n),
        "decodability": (lambda: [img_stats.decodability(d) for d in photos], n),
        "image_stats (all, one decode)": (lambda: [img_stats.image_stats(d) for d in photos], n),
        "blur (pre-decoded 256px)": (lambda: [img_stats.blur_score(g) for g in grays], len(grays)),
        "exposure (pre-decoded 256px)": (lambda: [img_stats.exposure(g) for g in grays], len(grays)),
        "phash (pre-decoded 256px)": (lambda: [img_stats.phash(a) for a in decoded], len(decoded)),
    }
    for name, (fn, items) in jobs.items():
        log(f"image: {name}")
        out[name] = rate(fn, items, min_seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "stats_throughput", "machine": machine_info(), "processes": 1}
    result["text_per_core"] = bench_text(args.captions, args.min_seconds)
    if not args.skip_images:
        result["image_per_core"] = bench_images(args.min_seconds)
    t = result["text_per_core"]
    summary = (
        f"stats: lang {t['language']['per_s']:.0f} captions/s, clean {t['clean']['per_s']:.0f}/s, "
        f"concepts(21k) {t['concepts_imagenet21k']['per_s']:.0f}/s"
    )
    if "image_per_core" in result:
        all_stats = result["image_per_core"]["image_stats (all, one decode)"]
        summary += f"; image_stats {all_stats['per_s']:.0f} img/s"
    emit(result, summary + " (one core)", args.json_out)


if __name__ == "__main__":
    main()

"""Throughput and memory of `vlcurate score`, as ratios against baselines measured in the same run.

Why ratios: absolute pairs/s depend on the machine (cores, AMX, load), but "end to end reaches X of
what the model alone can do" and "Y times what the usual per-batch PIL loop does" hold across
machines, so they are what the targets are stated in. Figures, all on the same photos:

* model-only: pre-decoded, pre-normalised tensors and pre-tokenised text through the model at the
  job's batch size and precision; the ceiling for a model-bound job.
* decode-only: JPEG bytes -> model-ready uint8 arrays with the job's own `decode_chunk` in a process
  pool with one worker per core; the ceiling for a decode-bound job.
* e2e: `score_dataset` over WebDataset shards (tar in, Parquet score tables out), in a child
  process whose whole process tree (decode workers included) is sampled for peak RSS.
* naive fp32: what DataComp / clip-retrieval users run on a CPU: one process, fp32, a batch decoded
  with open_clip's own `preprocess` (PIL), then the model, repeat. Per-sample: Data-Juicer's filter
  style, one pair at a time through preprocess + model.

The photos of `shared/data/coco-mini` are repeated (each with its captions) to the requested number
of pairs; each repeat gets its own uid, and the shards are cached under `.bench/`.

Run: `.venv/bin/python benchmarks/score_throughput.py --json-out .bench/score.json`
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_dir, emit, log, machine_info, shared_dir

SHARD_SIZE = 500  # pairs per tar: small enough that sets of different sizes share most shards
CACHE_FORMAT = 1  # bump when the shard layout changes so that old caches are not reused
MEMORY_RATIO_MAX = 1.10  # "the same" peak memory at 4x the pairs, allowing for sampling noise
TARGETS = {
    "vitb32.e2e_over_model_only": 0.85,
    "vitb32.e2e_over_naive_fp32": 2.0,
    "tiny.e2e_over_decode_only": 0.8,
}
BF16_MAX_DIFF = 1e-3


# ----- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    """One COCO photo with all of its captions."""

    file_name: str
    data: bytes
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Pair:
    """The i-th benchmark pair: a photo, one of its captions, and a uid distinct per repeat."""

    index: int
    photo: Photo
    caption: str

    @property
    def uid(self) -> str:
        from vlcurate.base.records import derive_uid

        return derive_uid(self.photo.data, self.caption + f"#{self.index}")


def coco_dir() -> Path:
    return shared_dir() / "data" / "coco-mini"


def load_photos(root: Path) -> list[Photo]:
    """Every photo of coco-mini that has captions, in a fixed order (split, then image id)."""
    photos: list[Photo] = []
    for split in ("val2017", "train2017"):
        ann_path = root / "annotations" / f"captions_{split}.json"
        if not ann_path.exists():
            continue
        ann = json.loads(ann_path.read_text())
        caps: dict[int, list[tuple[int, str]]] = {}
        for a in ann.get("annotations", []):
            caps.setdefault(int(a["image_id"]), []).append((int(a["id"]), str(a["caption"]).strip()))
        for img in sorted(ann.get("images", []), key=lambda im: int(im["id"])):
            path = root / split / img["file_name"]
            found = caps.get(int(img["id"]))
            if found and path.exists():
                photos.append(Photo(img["file_name"], path.read_bytes(), tuple(c for _, c in sorted(found))))
    if not photos:
        raise SystemExit(
            f"no captioned photos found under {root} (expected annotations/captions_*.json and the "
            "val2017/ or train2017/ folders); set VLCURATE_SHARED to the folder that holds data/coco-mini"
        )
    return photos


def make_pairs(photos: Sequence[Photo], n: int) -> list[Pair]:
    """Pair i uses photo i mod P and that photo's next caption, so repeats differ in caption too."""
    out: list[Pair] = []
    for i in range(n):
        photo = photos[i % len(photos)]
        out.append(Pair(i, photo, photo.captions[(i // len(photos)) % len(photo.captions)]))
    return out


def _source_fingerprint(photos: Sequence[Photo]) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v{CACHE_FORMAT}/{SHARD_SIZE}".encode())
    for p in photos:
        h.update(p.file_name.encode())
        h.update(len(p.data).to_bytes(8, "little"))
        h.update("\x00".join(p.captions).encode())
    return h.hexdigest()


def ensure_shards(photos: Sequence[Photo], n: int) -> list[Path]:
    """The WebDataset shards holding pairs [0, n), built once and cached under `.bench/`.

    Shard k holds pairs [k*SHARD_SIZE, ...) and is named by its range, so a 20,000-pair set
    reuses the 5,000-pair set's shards; a shard is written to a temporary name and renamed, so an
    interrupted build never leaves a short shard that looks complete.
    """
    import webdataset as wds

    cache = bench_dir() / "coco-mini-wds" / _source_fingerprint(photos)
    cache.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    built = 0
    pairs = make_pairs(photos, n)
    for start in range(0, n, SHARD_SIZE):
        end = min(n, start + SHARD_SIZE)
        path = cache / f"{start:08d}-{end:08d}.tar"
        paths.append(path)
        if path.exists():
            continue
        tmp = path.with_suffix(".tar.tmp")
        with wds.TarWriter(str(tmp)) as sink:
            for pair in pairs[start:end]:
                sink.write(
                    {
                        "__key__": f"{pair.index:08d}",
                        "jpg": pair.photo.data,
                        "txt": pair.caption,
                        "json": {"uid": pair.uid, "caption": pair.caption, "source": pair.photo.file_name},
                    }
                )
        os.replace(tmp, path)
        built += end - start
    if built:
        log(f"built {built} pairs of shards in {cache}")
    return paths


# ----- timing helpers ----------------------------------------------------------------------------
def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def timed_passes(run_pass: Callable[[], int], min_seconds: float) -> tuple[float, int, float]:
    """Repeat `run_pass` (which returns items done) until `min_seconds` pass; returns (rate, items, s).

    A fast model finishes one pass over a subset in well under a second, where timer and scheduler
    noise dominate; repeating the pass keeps the rate stable without building more data.
    """
    items = 0
    t0 = time.perf_counter()
    while True:
        items += run_pass()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return items / elapsed, items, elapsed


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _ratio(a: float | None, b: float | None) -> float | None:
    return _r(a / b, 3) if a and b else None


# ----- decode-only -------------------------------------------------------------------------------
def decode_only(images: Sequence[bytes], size: int, workers: int, chunk_size: int) -> dict[str, Any]:
    """JPEG -> model-ready uint8 arrays with the job's `decode_chunk`, one process per core.

    The pool is started and warmed before the clock starts (the job starts its pool while it loads
    the model, so start-up is hidden there too); at most 4 chunks per worker are in flight, like
    the job's bounded queue, so the parent does not pickle every image up front.
    """
    from vlcurate.base.images import decode_chunk

    chunks: list[list[bytes | None]] = [list(images[s]) for s in _batches(len(images), chunk_size)]
    ctx = multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")
    ok = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for f in [pool.submit(decode_chunk, chunks[0][:1], size) for _ in range(workers * 2)]:
            f.result()
        inflight: deque[Future[Any]] = deque()
        t0 = time.perf_counter()
        for chunk in chunks:
            if len(inflight) >= 4 * workers:
                ok += len(inflight.popleft().result()[0])
            inflight.append(pool.submit(decode_chunk, chunk, size))
        while inflight:
            ok += len(inflight.popleft().result()[0])
        elapsed = time.perf_counter() - t0
    if ok != len(images):
        log(f"warning: decode-only decoded {ok} of {len(images)} images")
    return {
        "decode_only_pairs_s": _r(len(images) / elapsed),
        "decode_only_pairs": len(images),
        "decode_workers": workers,
    }


# ----- model-only --------------------------------------------------------------------------------
def model_only(
    scorer: Any, arrays: Any, texts: Sequence[str], batch_size: int, min_seconds: float
) -> tuple[float, Any]:
    """Pairs/s of the model alone on ready tensors; also returns the scores of one pass."""
    import numpy as np

    pixels = scorer.images_to_tensor(arrays)
    tokens = scorer.tokenize(texts)
    n = len(texts)
    # Warm-up on a full batch: the first call at each input shape allocates and picks kernels
    # (oneDNN primitives for bf16), which the job pays once over thousands of pairs.
    first = _batches(n, batch_size)[0]
    scorer.cosine(scorer.encode_pixels(pixels[first]), scorer.encode_tokens(tokens[first]))
    scores: list[Any] = []

    def one_pass() -> int:
        out = [
            scorer.cosine(scorer.encode_pixels(pixels[s]), scorer.encode_tokens(tokens[s]))
            for s in _batches(n, batch_size)
        ]
        if not scores:
            scores.extend(out)
        return n

    rate, _, _ = timed_passes(one_pass, min_seconds)
    return rate, np.concatenate(scores)


# ----- naive baselines ---------------------------------------------------------------------------
def naive_fp32(
    scorer32: Any, pairs: Sequence[Pair], batch_size: int, min_seconds: float, per_sample_pairs: int
) -> dict[str, Any]:
    """The usual CPU loop: PIL decode + open_clip `preprocess` per image, stack, fp32 model, repeat.

    `scorer32` must be fp32; only its model and tokenizer are used, with open_clip's eval transform
    built from the model's own preprocessing settings, as `create_model_and_transforms` returns it.
    """
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    pp = scorer32.preprocessing
    preprocess = open_clip.image_transform(
        pp.image_size,
        is_train=False,
        mean=pp.mean,
        std=pp.std,
        resize_mode=pp.resize_mode,
        interpolation=pp.interpolation,
    )
    model, tokenizer = scorer32.model, scorer32.tokenizer

    def score(batch: Sequence[Pair]) -> Any:
        images = torch.stack([preprocess(Image.open(io.BytesIO(p.photo.data))) for p in batch])
        texts = tokenizer([p.caption for p in batch])
        with torch.no_grad():
            img = model.encode_image(images.to(scorer32.device))
            txt = model.encode_text(texts.to(scorer32.device))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return (img * txt).sum(dim=-1).float().cpu().numpy()

    score(pairs[:2])  # warm-up
    scores: list[Any] = []

    def batch_pass() -> int:
        out = [score(pairs[s]) for s in _batches(len(pairs), batch_size)]
        if not scores:
            scores.extend(out)
        return len(pairs)

    rate, _, _ = timed_passes(batch_pass, min_seconds)
    single = pairs[:per_sample_pairs]

    def sample_pass() -> int:
        for p in single:
            score([p])
        return len(single)

    rate1, _, _ = timed_passes(sample_pass, min_seconds / 2)
    return {
        "naive_fp32_pairs_s": _r(rate),
        "naive_fp32_pairs": len(pairs),
        "per_sample_fp32_pairs_s": _r(rate1),
        "per_sample_fp32_pairs": len(single),
        "_scores": np.concatenate(scores),
    }


# ----- end to end in a child process -------------------------------------------------------------
def _hwm_bytes(pid: int) -> int | None:
    """A process's own peak RSS (VmHWM in /proc), which no sampling interval can miss; Linux only."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class TreeSampler:
    """Watches a process and all its descendants (forkserver, decode workers) for peak memory.

    Two measures: `peak_bytes`, the largest sum of current RSS seen at one sampling instant (what a
    container limit sees, but a short spike between samples can be missed), and `hwm_sum_bytes`,
    the sum over every process ever seen of its own peak RSS (VmHWM): never misses a spike and is
    an upper bound of the simultaneous peak. Both count pages shared between processes (libraries,
    copy-on-write) once per process, so they overstate the footprint the same way at every size.
    """

    pid: int
    interval_s: float = 0.05
    peak_bytes: int = 0
    peak_procs: int = 0
    _hwm: dict[tuple[int, float], int] = field(default_factory=dict)
    _roles: dict[tuple[int, float], str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def hwm_sum_bytes(self) -> int:
        return sum(self._hwm.values())

    @property
    def processes_seen(self) -> int:
        return len(self._hwm)

    def by_role(self) -> dict[str, float]:
        """Peak MB per role (main, forkserver, resource_tracker, decode_worker_N): where it goes."""
        out: dict[str, float] = {}
        for key, peak in sorted(self._hwm.items(), key=lambda kv: kv[0][1]):
            role = self._roles.get(key, "other")
            if role == "decode_worker":
                role = f"decode_worker_{sum(1 for r in out if r.startswith('decode_worker'))}"
            out[role] = round(peak / 2**20, 1)
        return out

    def _role(self, proc: Any, root: Any) -> str:
        if proc.pid == root.pid:
            return "main"
        try:
            cmd = " ".join(proc.cmdline())
            parent = proc.ppid()
        except Exception:
            return "other"
        if parent != root.pid:
            return "decode_worker"  # forked by the forkserver
        for name in ("resource_tracker", "forkserver"):
            if name in cmd:
                return name
        return "decode_worker"  # fork/spawn contexts start workers from the main process

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total, procs = 0, 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    rss = proc.memory_info().rss
                    key = (proc.pid, proc.create_time())  # a reused pid is another process
                    hwm = _hwm_bytes(proc.pid)
                    self._hwm[key] = max(self._hwm.get(key, 0), hwm if hwm is not None else rss)
                    if key not in self._roles:
                        self._roles[key] = self._role(proc, root)
                    total += rss
                    procs += 1
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_procs = total, procs
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def run_e2e_child(shards: Sequence[Path], model: str, args: argparse.Namespace, pairs: int) -> dict[str, Any]:
    """`score_dataset` in a fresh child process; returns its throughput, peak RSS and score tables.

    A child per run gives each size a clean process, so peak RSS is the job's own and not what
    this script has loaded (models, photos, earlier runs).
    """
    import pyarrow.parquet as pq

    runs = bench_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out_dir = runs / f"{_slug(model)}-{pairs}-{os.getpid()}-{time.time_ns()}"
    result_path = out_dir.with_suffix(".result.json")
    params = {
        "input": [str(p) for p in shards],
        "out": str(out_dir),
        "result": str(result_path),
        "config": {
            "model": model,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "device": args.device,
            "progress": False,
        },
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-e2e", json.dumps(params)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid) as sampler:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            raise RuntimeError(
                f"e2e child for {model} at {pairs} pairs failed (rc={proc.returncode}):\n"
                f"{stderr[-4000:]}{stdout[-1000:]}"
            )
        child = json.loads(result_path.read_text())
        this_run = child["summary"]["this_run"]
        scores: dict[str, float] = {}
        for table_path in sorted((out_dir / "scores").glob("*.parquet")):
            t = pq.read_table(table_path, columns=["uid", "score"]).to_pydict()
            scores.update(zip(t["uid"], t["score"], strict=True))
        statuses = child["summary"].get("counts_by_status")
        return {
            "e2e_pairs_s": this_run.get("pairs_per_s"),
            "e2e_pairs": this_run.get("pairs_this_run"),
            "e2e_seconds": this_run.get("seconds_this_run"),
            "e2e_wall_s_with_startup": _r(wall),
            "e2e_timings_s": this_run.get("timings_s"),
            "e2e_status_counts": statuses,
            "e2e_precision": child["summary"].get("model", {}).get("precision"),
            "peak_rss_mb_hwm_sum": _r(sampler.hwm_sum_bytes / 2**20, 1),
            "peak_rss_mb_sampled": _r(sampler.peak_bytes / 2**20, 1),
            "peak_rss_processes": sampler.processes_seen,
            "peak_rss_mb_main_process": _r(child["peak_rss_self_bytes"] / 2**20, 1),
            "peak_rss_mb_by_process": sampler.by_role(),
            "_scores": scores,
        }
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        result_path.unlink(missing_ok=True)


def child_e2e(params_json: str) -> None:
    """The child side: run the job, then report its summary and own max RSS to the parent."""
    import resource

    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    params = json.loads(params_json)
    summary = score_dataset(params["input"], params["out"], ScoreConfig(**params["config"]))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so
    # a child of this (large) benchmark process would report the parent's size.
    peak = _hwm_bytes(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(params["result"]).write_text(json.dumps({"summary": summary, "peak_rss_self_bytes": peak}))


# ----- orchestration -----------------------------------------------------------------------------
def _slug(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")


def model_key(model: str) -> str:
    """Short, stable JSON keys for the models the targets talk about."""
    return {"random:vit-b-32": "vitb32", "tiny-synth": "tiny"}.get(model.lower(), _slug(model))


def _max_abs_diff(a: Any, b: Any) -> float | None:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return _r(float(np.abs(a[ok] - b[ok]).max()), 6) if ok.any() else None


def bench_model(
    model: str,
    photos: Sequence[Photo],
    args: argparse.Namespace,
    e2e_cache: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """Every figure for one model; a model whose weights are missing is skipped with the reason."""
    import torch

    from vlcurate.base.images import decode_chunk
    from vlcurate.models.loader import load_scorer
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError
    from vlcurate.score.config import ScoreConfig

    out: dict[str, Any] = {"model": model}
    try:
        scorer = load_scorer(model, precision=args.precision, device=args.device)
    except (WeightsNotFoundError, UnknownModelError) as exc:
        log(f"SKIPPING {model}: {exc}")
        return out | {"skipped": f"{type(exc).__name__}: {exc}"}
    size = scorer.preprocessing.image_size
    out |= {"precision": scorer.precision, "image_size": size, "batch_size": args.batch_size}
    pairs = make_pairs(photos, args.pairs)
    rate_pairs = pairs[: args.rate_pairs]
    workers = os.cpu_count() or 1

    log(f"{model}: decode-only on {len(pairs)} pairs at {size}px, {workers} workers")
    out |= decode_only([p.photo.data for p in pairs], size, workers, ScoreConfig().chunk_size)

    log(f"{model}: model-only ({scorer.precision}) on {len(rate_pairs)} pairs")
    arrays, meta = decode_chunk([p.photo.data for p in rate_pairs], size)
    if len(arrays) != len(rate_pairs):
        raise RuntimeError(f"{len(rate_pairs) - len(arrays)} benchmark photos failed to decode: {meta}")
    texts = [p.caption for p in rate_pairs]
    rate, scores = model_only(scorer, arrays, texts, args.batch_size, args.min_seconds)
    out |= {"model_only_pairs_s": _r(rate), "model_only_pairs": len(rate_pairs)}

    scorer32 = scorer
    if scorer.precision != "fp32":
        scorer32 = load_scorer(model, precision="fp32", device=args.device)
        log(f"{model}: model-only fp32 on {len(rate_pairs)} pairs (reference for {scorer.precision})")
        rate32, scores32 = model_only(scorer32, arrays, texts, args.batch_size, args.min_seconds)
        out |= {
            "model_only_fp32_pairs_s": _r(rate32),
            f"max_abs_score_diff_{scorer.precision}_vs_fp32": _max_abs_diff(scores, scores32),
        }
    del scorer
    naive_scores = None
    if not args.skip_naive:
        n1 = max(1, min(len(rate_pairs), args.per_sample_pairs))
        log(f"{model}: naive fp32 on {len(rate_pairs)} pairs (batch {args.batch_size}), per-sample on {n1}")
        naive = naive_fp32(scorer32, rate_pairs, args.batch_size, args.min_seconds, n1)
        naive_scores = naive.pop("_scores")
        out |= naive
    del scorer32, arrays
    gc.collect()
    torch.set_num_threads(os.cpu_count() or 1)

    log(f"{model}: end to end on {len(pairs)} pairs (child process)")
    e2e = run_e2e_child(ensure_shards(photos, len(pairs)), model, args, len(pairs))
    e2e_scores = e2e.pop("_scores")
    e2e_cache[(model, len(pairs))] = e2e
    out |= {k: v for k, v in e2e.items() if not k.startswith("peak_")}
    out |= {"e2e_peak_rss_mb": e2e["peak_rss_mb_hwm_sum"]}
    if naive_scores is not None:
        mine = [e2e_scores.get(p.uid, float("nan")) for p in rate_pairs]
        out["max_abs_score_diff_e2e_vs_naive_fp32"] = _max_abs_diff(mine, naive_scores)
    # Decode and model share the same cores on a CPU: even a perfect overlap cannot beat the sum
    # of their CPU times per pair, so this is the ceiling e2e should be judged against.
    mo, do = out.get("model_only_pairs_s"), out.get("decode_only_pairs_s")
    out["shared_core_ceiling_pairs_s"] = _r(1.0 / (1.0 / mo + 1.0 / do)) if mo and do else None
    out["e2e_over_shared_core_ceiling"] = _ratio(out.get("e2e_pairs_s"), out["shared_core_ceiling_pairs_s"])
    out["e2e_over_model_only"] = _ratio(out.get("e2e_pairs_s"), out.get("model_only_pairs_s"))
    out["e2e_over_decode_only"] = _ratio(out.get("e2e_pairs_s"), out.get("decode_only_pairs_s"))
    out["e2e_over_naive_fp32"] = _ratio(out.get("e2e_pairs_s"), out.get("naive_fp32_pairs_s"))
    out["e2e_over_per_sample_fp32"] = _ratio(out.get("e2e_pairs_s"), out.get("per_sample_fp32_pairs_s"))
    return out


def bench_memory(
    model: str,
    photos: Sequence[Photo],
    sizes: Sequence[int],
    args: argparse.Namespace,
    e2e_cache: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """Peak RSS of the e2e job's process tree at each size; flat memory means the ratio stays ~1."""
    out: dict[str, Any] = {"model": model}
    for n in sizes:
        run = e2e_cache.get((model, n))
        if run is None:
            log(f"memory: {model} end to end on {n} pairs (child process)")
            run = run_e2e_child(ensure_shards(photos, n), model, args, n)
            run.pop("_scores")
            e2e_cache[(model, n)] = run
        out[f"peak_rss_mb_{n}"] = run["peak_rss_mb_hwm_sum"]
        out[f"peak_rss_mb_sampled_{n}"] = run["peak_rss_mb_sampled"]
        out[f"peak_rss_mb_main_process_{n}"] = run["peak_rss_mb_main_process"]
        out[f"by_process_mb_{n}"] = run["peak_rss_mb_by_process"]
        out[f"e2e_pairs_s_{n}"] = run["e2e_pairs_s"]
    lo, hi = min(sizes), max(sizes)
    out["ratio"] = _ratio(out.get(f"peak_rss_mb_{hi}"), out.get(f"peak_rss_mb_{lo}"))
    out["ratio_sampled"] = _ratio(out.get(f"peak_rss_mb_sampled_{hi}"), out.get(f"peak_rss_mb_sampled_{lo}"))
    out["ratio_main_process"] = _ratio(
        out.get(f"peak_rss_mb_main_process_{hi}"), out.get(f"peak_rss_mb_main_process_{lo}")
    )
    return out


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each stated target with its measured value and whether it was met (None: not measured)."""
    checks: dict[str, Any] = {}
    for name, floor in TARGETS.items():
        key, fig = name.split(".", 1)
        value = result.get(key, {}).get(fig)
        checks[f"{name} >= {floor}"] = None if value is None else value >= floor
    ratio = result.get("memory", {}).get("ratio")
    checks[f"memory.ratio <= {MEMORY_RATIO_MAX}"] = None if ratio is None else ratio <= MEMORY_RATIO_MAX
    diff = result.get("vitb32", {}).get("max_abs_score_diff_bf16_vs_fp32")
    checks[f"vitb32.max_abs_score_diff_bf16_vs_fp32 <= {BF16_MAX_DIFF}"] = (
        None if diff is None else diff <= BF16_MAX_DIFF
    )
    return checks


def summary_line(result: dict[str, Any]) -> str:
    parts: list[str] = []
    for key, fig in result.items():
        if not isinstance(fig, dict) or "model" not in fig or key == "memory":
            continue
        if "skipped" in fig:
            parts.append(f"{key}: SKIPPED ({fig['model']} weights missing)")
            continue
        s = (
            f"{key} e2e {fig.get('e2e_pairs_s')}/s = {fig.get('e2e_over_model_only')}x model-only "
            f"({fig.get('model_only_pairs_s')}/s), {fig.get('e2e_over_decode_only')}x decode-only"
        )
        if fig.get("naive_fp32_pairs_s"):
            s += f", {fig.get('e2e_over_naive_fp32')}x naive fp32"
        parts.append(s)
    mem = result.get("memory", {})
    if mem.get("ratio") is not None:
        sizes = [k.removeprefix("peak_rss_mb_") for k in mem if re.fullmatch(r"peak_rss_mb_\d+", k)]
        parts.append(
            "peak RSS "
            + ", ".join(f"{mem[f'peak_rss_mb_{n}']} MB@{n}" for n in sizes)
            + f" ({mem['ratio']}x)"
        )
    checks = result.get("targets", {})
    met = sum(1 for v in checks.values() if v is True)
    known = sum(1 for v in checks.values() if v is not None)
    return "score_throughput: " + "; ".join(parts) + f"; targets met {met}/{known}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", type=int, default=None, help="pairs for decode-only and e2e (default 5000)")
    p.add_argument("--memory-sizes", default=None, help="comma-separated pair counts (default 5000,20000)")
    p.add_argument("--memory-model", default=None, help="model for the memory runs (default: first loaded)")
    p.add_argument("--models", default="random:ViT-B-32,tiny-synth", help="comma-separated scorer names")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per model call (default: the job's)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="precision of model-only and e2e (the naive baseline is always fp32)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N], for the model and the job")
    p.add_argument(
        "--rate-pairs",
        type=int,
        default=None,
        help="subset for model-only / naive rates (default 512; 64 with --quick)",
    )
    p.add_argument("--per-sample-pairs", type=int, default=None, help="subset for the per-sample loop")
    p.add_argument("--min-seconds", type=float, default=None, help="repeat rate loops at least this long")
    p.add_argument("--skip-naive", action="store_true", help="skip the naive and per-sample baselines")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory runs")
    p.add_argument("--quick", action="store_true", help="smoke test: 500 pairs, rates on 64 pairs")
    p.add_argument("--json-out", default=None, help="also write the JSON to this path")
    p.add_argument("--child-e2e", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.pairs = args.pairs or (500 if q else 5000)
    args.rate_pairs = min(args.pairs, args.rate_pairs or (64 if q else 512))
    args.per_sample_pairs = args.per_sample_pairs or (16 if q else 64)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (1.0 if q else 5.0)
    if args.batch_size is None:
        from vlcurate.score.config import ScoreConfig

        args.batch_size = ScoreConfig().batch_size
    sizes = args.memory_sizes or ("500,1000" if q else "5000,20000")
    args.memory_sizes = sorted({int(s) for s in sizes.split(",") if s.strip()})
    if min([args.pairs, args.batch_size, args.rate_pairs, *args.memory_sizes]) < 1:
        p.error("sizes must be positive")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_e2e:
        child_e2e(args.child_e2e)
        return 0
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()  # before anything imports open_clip (webdataset may import torch)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "score_throughput", "machine": machine_info()}
    photos = load_photos(coco_dir())
    result["data"] = {
        "source": str(coco_dir()),
        "photos": len(photos),
        "captions": sum(len(p.captions) for p in photos),
        "pairs": args.pairs,
        "shard_size": SHARD_SIZE,
    }
    log(f"{len(photos)} photos, {result['data']['captions']} captions from {coco_dir()}")
    ensure_shards(photos, max([args.pairs, *args.memory_sizes]))
    e2e_cache: dict[tuple[str, int], dict[str, Any]] = {}
    loaded: list[str] = []
    for model in args.models:
        fig = bench_model(model, photos, args, e2e_cache)
        result[model_key(model)] = fig
        if "skipped" not in fig:
            loaded.append(model)
    mem_model = args.memory_model or (loaded[0] if loaded else None)
    if args.skip_memory or mem_model is None:
        result["memory"] = {"skipped": "--skip-memory" if args.skip_memory else "no model could be loaded"}
    else:
        result["memory"] = bench_memory(mem_model, photos, args.memory_sizes, args, e2e_cache)
    result["targets"] = check_targets(result)
    result["config"] = {k: v for k, v in vars(args).items() if k != "child_e2e"}
    result["total_seconds"] = _r(time.perf_counter() - t0, 1)
    emit(result, summary_line(result), args.json_out)
    return 0 if loaded else 1


if __name__ == "__main__":
    sys.exit(main())

"""`vlcurate score`: read shards, decode in worker processes, run the model in batches, write tables.

Three stages overlap: a reader thread walks the shards (fetching URL images in bounded
concurrency) and hands chunks of images to a pool of decode processes (for a local tar, only the
images' byte ranges: the workers read the bytes themselves, see `tar_ranges`); the main thread
takes decoded chunks in order, runs the model in batches, and writes each shard's table and
completion marker as soon as its last sample is scored. A bounded queue between the stages keeps
memory flat however large the input. Shards with a marker are skipped, so a re-run after any kill
finishes the job with no missing and no duplicated uid.

A shard that broke part way (a truncated tar) gets a marker flagged `partial` with the size and
mtime of its file: a re-run skips it while the file is unchanged (still reporting it partial) and
reads it again once the file changed. With `retry_failed`, the rows of finished shards that failed
for a transient reason (`fetch_error`: HTTP errors, timeouts, network errors) are read from the
source again, re-fetched and re-scored, and the shard's table is rewritten with those rows replaced.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.base.atomic import write_json_atomic, write_parquet_atomic
from vlcurate.base.byte_range import TarRange
from vlcurate.base.images import decode_chunk
from vlcurate.base.progress import ScoreProgress
from vlcurate.base.records import SCORE_SCHEMA, Sample, Status, embedding_field, is_transient_failure
from vlcurate.base.workers import decode_pool
from vlcurate.io.shards import ShardReadError, ShardRef
from vlcurate.io.sources import Source, open_source
from vlcurate.io.tar_ranges import iter_samples_with_ranges
from vlcurate.models.tiny_synth_check import SynthWorldCheck
from vlcurate.score.config import ScoreConfig
from vlcurate.score.run_dir import RunDir
from vlcurate.score.stats import merge_markers, run_problems, score_histogram, write_score_report


class RunMismatchError(RuntimeError):
    """The output directory holds a run made with another model; resuming would mix scores."""


@dataclass
class _Chunk:
    shard: str
    samples: list[Sample]  # samples sent to decode (status OK, have bytes)
    result: Any  # a Future, or the ready (stack, meta) tuple when decoding in-process


@dataclass
class _Rows:
    """A finished row that never reaches the model (read/fetch failure, missing caption)."""

    shard: str
    samples: list[Sample]


@dataclass
class _Prefetch:
    """The running reader thread, the queue it fills, and the image size it decodes to."""

    thread: threading.Thread
    queue: queue.Queue[Any]
    size: int


@dataclass
class _ShardEnd:
    shard: str
    error: str | None
    duplicates: int
    seen: int
    fatal: bool = False  # nothing could be read: no marker, so a re-run tries again
    stamp: dict[str, Any] | None = None  # the file's size and mtime when reading began
    retry: bool = False  # only the failed rows of a finished shard were read again


@dataclass
class _ShardAcc:
    """Rows of one shard gathered until its end arrives."""

    uids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)
    emb_uids: list[str] = field(default_factory=list)
    img_embs: list[np.ndarray] = field(default_factory=list)
    txt_embs: list[np.ndarray] = field(default_factory=list)

    def add(
        self, s: Sample, score: float, status: str, error: str | None, w: int | None, h: int | None
    ) -> None:
        self.uids.append(s.uid)
        self.scores.append(score)
        self.statuses.append(status)
        self.errors.append(error)
        self.texts.append(s.text)
        ow, oh = s.meta.get("original_width"), s.meta.get("original_height")
        self.widths.append(int(ow) if isinstance(ow, (int, float)) and ow else w)
        self.heights.append(int(oh) if isinstance(oh, (int, float)) and oh else h)
        self.keys.append(s.key)
        self.sources.append(s.source)


@dataclass
class _Pending:
    """Decoded images waiting for a full model batch."""

    shards: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    sizes: list[tuple[int | None, int | None]] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)  # stacks from decode chunks
    count: int = 0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("vlcurate", "torch", "open_clip_torch", "pillow", "simplejpeg", "numpy", "pyarrow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


class ScoreJob:
    """One scoring run over a source into a run directory."""

    def __init__(self, input_spec: str | list[str], out_dir: str | Path, config: ScoreConfig) -> None:
        self.config = config
        self.input_spec = input_spec
        self.run = RunDir(out_dir)
        self.source: Source = open_source(input_spec, **config.source_options)
        self.workers = config.workers if config.workers is not None else (os.cpu_count() or 1)
        self._stop = threading.Event()
        self._reader_error: BaseException | None = None
        self.timings: defaultdict[str, float] = defaultdict(float)
        self.warnings: list[str] = []
        self._retry: dict[str, set[str]] = {}  # shard -> uids to fetch and score again
        self._retried = {"shards": 0, "rows": 0, "now_ok": 0}

    # ----- public -------------------------------------------------------------------------
    def run_job(self) -> dict[str, Any]:
        from vlcurate.models.clip import peek_image_size
        from vlcurate.models.loader import load_scorer

        started = time.perf_counter()
        shards = self.source.shards()
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            raise ValueError("two input shards map to the same output name; give inputs distinct names")
        self.run.create()
        pending = [s for s in shards if self._needs_read(s)]
        if self.config.retry_failed:
            names_pending = {s.name for s in pending}
            for s in shards:
                uids = set() if s.name in names_pending else self._retryable_uids(s.name)
                if uids:
                    self._retry[s.name] = uids
                    pending.append(s)
        pool = self._start_pool() if pending else None
        prefetch: _Prefetch | None = None
        try:
            # Reading and decoding start while the model loads, when its input size is known.
            early_size = peek_image_size(self.config.model) if pending else None
            if early_size is not None:
                prefetch = self._start_reader(pending, early_size, pool)
            scorer = load_scorer(
                self.config.model,
                device=self.config.device,
                precision=self.config.precision,
                allow_download=self.config.allow_download,
            )
            size = scorer.preprocessing.image_size
            if pending and (prefetch is None or prefetch.size != size):
                if prefetch is not None:
                    self._stop_reader(prefetch)
                prefetch = self._start_reader(pending, size, pool)
            self._set_threads(scorer, pool is not None)
            self._check_or_write_run_json(scorer)
            stats: dict[str, Any] = (
                self._score(scorer, prefetch, len(pending), len(shards))
                if prefetch
                else {"pairs_this_run": 0}
            )
        except BaseException:
            if prefetch is not None:
                self._stop_reader(prefetch)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.config.retry_failed:
            stats["retried"] = dict(self._retried)
        wall = time.perf_counter() - started
        return self._write_summary(scorer, shards, stats, wall)

    # ----- what to read -------------------------------------------------------------------
    def _needs_read(self, shard: ShardRef) -> bool:
        """Not done, or partial and its file changed since (a truncated tar replaced by a whole one)."""
        if not self.run.is_done(shard.name):
            return True
        marker = self.run.read_marker(shard.name)
        if marker is None or not (marker.get("partial") or marker.get("error")):
            return False
        now = file_stamp(shard.url)
        if now is None:
            return False  # cannot tell whether it changed: keep the partial result
        return bool(marker.get("input_file") != now)

    def _retryable_uids(self, shard: str) -> set[str]:
        """Uids of the rows of a finished shard that failed for a reason that may pass."""
        marker = self.run.read_marker(shard)
        if marker is None or not int((marker.get("counts") or {}).get(Status.FETCH_ERROR.value, 0)):
            return set()
        table = pq.read_table(self.run.score_path(shard), columns=["uid", "status", "error"])
        return {
            u
            for u, st, err in zip(
                table.column("uid").to_pylist(),
                table.column("status").to_pylist(),
                table.column("error").to_pylist(),
                strict=True,
            )
            if is_transient_failure(st, err)
        }

    # ----- setup --------------------------------------------------------------------------
    def _start_pool(self) -> Any:
        if self.workers <= 0:
            return None
        return decode_pool(self.workers)  # its workers die with this process, even on kill -9

    def _set_threads(self, scorer: Any, decoding_in_workers: bool) -> None:
        """All cores for the model, except a small model beside decode workers gets one thread:
        there decoding is the bottleneck, and idle intra-op threads spinning between the model's
        many small ops steal the cores the decoders need (measured: +20% pairs/s on 2 cores)."""
        import torch

        if scorer.device.type != "cpu":
            return
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        elif decoding_in_workers and scorer.is_small:
            torch.set_num_threads(1)

    def _check_or_write_run_json(self, scorer: Any) -> None:
        info = {
            "input": self.input_spec,
            "model": scorer.describe(),
            "preprocessing": self._preprocessing(scorer),
            "save_embeddings": self.config.save_embeddings,
        }
        old = self.run.read_json("run.json")
        if old is not None:
            old_fp = old.get("model", {}).get("fingerprint")
            if old_fp != scorer.fingerprint:
                raise RunMismatchError(
                    f"{self.run.root} holds scores from model {old.get('model', {}).get('name')!r} "
                    f"(fingerprint {str(old_fp)[:12]}); this run uses {scorer.name!r} "
                    f"({scorer.fingerprint[:12]}). Use another --out."
                )
            return
        write_json_atomic(self.run.root / "run.json", info)

    def _preprocessing(self, scorer: Any) -> dict[str, Any]:
        decoder = "simplejpeg (JPEG) / Pillow, then bicubic resize of the shorter side and centre crop"
        scaling = "to the model size (fast)" if self.config.fast_decode else "to at least 2x the model size"
        return dict(scorer.preprocessing.as_dict()) | {"decoder": decoder, "jpeg_dct_scaling": scaling}

    def _start_reader(self, shards: list[ShardRef], size: int, pool: Any) -> _Prefetch:
        # Room for about two model batches of decoded chunks, so the model never waits at a batch edge.
        depth = max(4, 2 * -(-self.config.batch_size // self.config.chunk_size) + 2 * max(1, self.workers))
        q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop.clear()
        thread = threading.Thread(target=self._reader, args=(shards, size, pool, q), daemon=True)
        thread.start()
        return _Prefetch(thread, q, size)

    def _stop_reader(self, prefetch: _Prefetch) -> None:
        """Stop the reader thread, draining its queue so that a blocked `put` returns."""
        self._stop.set()
        while prefetch.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    prefetch.queue.get_nowait()
            prefetch.thread.join(timeout=0.05)
        self._reader_error = None

    # ----- reader thread ------------------------------------------------------------------
    def _reader(self, shards: list[ShardRef], size: int, pool: Any, out: queue.Queue[Any]) -> None:
        try:
            for shard in shards:
                if self._stop.is_set():
                    return
                self._read_shard(shard, size, pool, out)
        except BaseException as exc:  # surfaced in the main thread
            self._reader_error = exc
        finally:
            out.put(None)

    def _read_shard(self, shard: ShardRef, size: int, pool: Any, out: queue.Queue[Any]) -> None:
        only = self._retry.get(shard.name)  # retrying: just these rows
        stamp = file_stamp(shard.url)
        seen_uids: set[str] = set()
        duplicates = 0
        seen = 0
        error: str | None = None
        chunk: list[Sample] = []
        ranges: dict[str, TarRange] = {}  # uid -> where its image lies, read by the decode worker
        needs_fetch = False
        # Images given by URL are fetched a group at a time so that `fetch_concurrency` downloads
        # are in flight together; then they go to the decoders in chunks like any other.
        fetch_group = max(self.config.chunk_size, 4 * self.config.fetch_concurrency)

        def flush() -> None:
            nonlocal chunk, needs_fetch
            if chunk:
                if needs_fetch:
                    chunk = self._fetch(chunk)
                for i in range(0, len(chunk), self.config.chunk_size):
                    part = chunk[i : i + self.config.chunk_size]
                    self._submit(shard.name, part, ranges, size, pool, out)
                chunk = []
                ranges.clear()
                needs_fetch = False

        try:
            for s, rng in self._iter_shard(shard):
                if self._stop.is_set():
                    return
                seen += 1
                if only is not None and s.uid not in only:
                    continue
                if s.uid in seen_uids:
                    duplicates += 1
                    continue
                seen_uids.add(s.uid)
                chunk.append(s)
                if rng is not None:
                    ranges[s.uid] = rng
                needs_fetch = needs_fetch or (s.image is None and bool(s.image_ref) and s.status == Status.OK)
                if len(chunk) >= (fetch_group if needs_fetch else self.config.chunk_size):
                    flush()
        except ShardReadError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        flush()
        fatal = error is not None and seen == 0
        out.put(_ShardEnd(shard.name, error, duplicates, seen, fatal, stamp, only is not None))

    def _iter_shard(self, shard: ShardRef) -> Iterator[tuple[Sample, TarRange | None]]:
        """Samples of one shard; a local tar's images come as byte ranges for the workers to read."""
        if shard.kind == "wds":
            make = getattr(self.source, "wds_reader", None)
            return iter_samples_with_ranges(shard.url, make(shard) if make is not None else None)
        return ((s, None) for s in self.source.iter_samples(shard))

    def _fetch(self, samples: list[Sample]) -> list[Sample]:
        """Resolve path/URL-referenced images into bytes (bounded concurrency, retries, statuses)."""
        from vlcurate.io.fetch import resolve_images

        t = time.perf_counter()
        resolved = resolve_images(
            samples,
            concurrency=self.config.fetch_concurrency,
            timeout=self.config.fetch_timeout,
            retries=self.config.fetch_retries,
        )
        self.timings["fetch_s"] += time.perf_counter() - t
        return resolved

    def _submit(
        self,
        shard: str,
        samples: list[Sample],
        ranges: dict[str, TarRange],
        size: int,
        pool: Any,
        out: queue.Queue[Any],
    ) -> None:
        def has_image(s: Sample) -> bool:
            return s.image is not None or s.uid in ranges

        bad = [s for s in samples if s.status != Status.OK or not has_image(s) or not s.text]
        good = [s for s in samples if s.status == Status.OK and has_image(s) and s.text]
        for s in bad:
            if s.status == Status.OK:
                s.status = Status.MISSING_IMAGE if not has_image(s) else Status.MISSING_TEXT
                s.error = s.error or ("no image" if not has_image(s) else "empty caption")
        if bad:
            out.put(_Rows(shard, bad))
        if good:
            images = [s.image if s.image is not None else ranges[s.uid] for s in good]
            if pool is None:
                result: Any = decode_chunk(images, size, self.config.max_pixels, self.config.fast_decode)
            else:
                result = pool.submit(
                    decode_chunk, images, size, self.config.max_pixels, self.config.fast_decode
                )
            for s in good:
                s.image = None  # the bytes now live in the worker; keep the queue light
            out.put(_Chunk(shard, good, result))

    # ----- main loop ----------------------------------------------------------------------
    def _score(self, scorer: Any, prefetch: _Prefetch, n_pending: int, total_shards: int) -> dict[str, Any]:
        q, reader = prefetch.queue, prefetch.thread
        accs: dict[str, _ShardAcc] = {}
        pend = _Pending()
        pairs = 0
        failed: list[dict[str, str]] = []
        t0 = time.perf_counter()
        progress = ScoreProgress(
            enabled=self.config.progress, total_shards=n_pending, done_before=total_shards - n_pending
        )
        synth_check = SynthWorldCheck.for_scorer(scorer)

        def check_world(w: int | None, h: int | None) -> None:
            message = synth_check.add(w, h)
            if message:
                self.warnings.append(message)
                progress.warn(message)

        try:
            with progress:
                while True:
                    t = time.perf_counter()
                    item = q.get()
                    if item is None:
                        break
                    if isinstance(item, _Chunk):
                        stack, meta = item.result if isinstance(item.result, tuple) else item.result.result()
                        self.timings["wait_decode_s"] += time.perf_counter() - t
                        acc = accs.setdefault(item.shard, _ShardAcc())
                        for s, (row, status, err, w, h) in zip(item.samples, meta, strict=True):
                            if row < 0:
                                acc.add(s, float("nan"), status, err, w, h)
                                pairs += 1
                            else:
                                pend.shards.append(item.shard)
                                pend.samples.append(s)
                                pend.sizes.append((w, h))
                                check_world(w, h)
                        if len(stack):
                            pend.arrays.append(stack)
                            pend.count += len(stack)
                        while pend.count >= self.config.batch_size:
                            pairs += self._run_batch(scorer, pend, accs, self.config.batch_size)
                    elif isinstance(item, _Rows):
                        self.timings["wait_decode_s"] += time.perf_counter() - t
                        acc = accs.setdefault(item.shard, _ShardAcc())
                        for s in item.samples:
                            acc.add(s, float("nan"), s.status.value, s.error, None, None)
                            pairs += 1
                    elif isinstance(item, _ShardEnd):
                        while pend.count:
                            pairs += self._run_batch(scorer, pend, accs, self.config.batch_size)
                        acc = accs.pop(item.shard, _ShardAcc())
                        if item.retry:
                            self._merge_retry(scorer, item, acc)
                        elif item.fatal:
                            failed.append({"shard": item.shard, "error": item.error or "unreadable"})
                            progress.shard_failed(item.shard, item.error or "")
                        else:
                            self._write_shard(scorer, item, acc)
                        progress.shard_done(len(acc.uids))
                    progress.update_pairs(pairs, time.perf_counter() - t0)
                message = synth_check.finish()
                if message:
                    self.warnings.append(message)
                    progress.warn(message)
        except BaseException:
            self._stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()
            raise
        reader.join(timeout=5)
        if self._reader_error is not None:
            raise self._reader_error
        elapsed = time.perf_counter() - t0
        return {
            "pairs_this_run": pairs,
            "seconds_this_run": round(elapsed, 3),
            "pairs_per_s": round(pairs / elapsed, 2) if elapsed > 0 else None,
            "failed_shards": failed,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def _run_batch(self, scorer: Any, pend: _Pending, accs: dict[str, _ShardAcc], n: int) -> int:
        """Score the first `n` pending decoded pairs (fewer at a shard end)."""
        n = min(n, pend.count)
        stacked = np.concatenate(pend.arrays) if len(pend.arrays) > 1 else pend.arrays[0]
        images, rest = stacked[:n], stacked[n:]
        samples, shards, sizes = pend.samples[:n], pend.shards[:n], pend.sizes[:n]
        del pend.samples[:n], pend.shards[:n], pend.sizes[:n]
        pend.arrays = [rest] if len(rest) else []
        pend.count -= n
        t = time.perf_counter()
        img_emb = scorer.encode_images(images)
        txt_emb = scorer.encode_texts([s.text or "" for s in samples])
        scores = scorer.cosine(img_emb, txt_emb)
        self.timings["model_s"] += time.perf_counter() - t
        img_np = img_emb.cpu().numpy().astype(np.float16) if self.config.save_embeddings else None
        txt_np = txt_emb.cpu().numpy().astype(np.float16) if self.config.save_embeddings else None
        for i, (s, shard, (w, h)) in enumerate(zip(samples, shards, sizes, strict=True)):
            acc = accs.setdefault(shard, _ShardAcc())
            acc.add(s, float(scores[i]), Status.OK.value, None, w, h)
            if img_np is not None and txt_np is not None:
                acc.emb_uids.append(s.uid)
                acc.img_embs.append(img_np[i])
                acc.txt_embs.append(txt_np[i])
        return n

    def _write_shard(self, scorer: Any, end: _ShardEnd, acc: _ShardAcc) -> None:
        t = time.perf_counter()
        scores = np.asarray(acc.scores, dtype=np.float32)
        table = _score_table(acc, scores)
        if self.config.save_embeddings:
            write_parquet_atomic(self.run.embedding_path(end.shard), self._emb_table(scorer, acc))
        write_parquet_atomic(self.run.score_path(end.shard), table)
        marker = {
            "shard": end.shard,
            "rows": len(acc.uids),
            "samples_read": end.seen,
            "duplicates": end.duplicates,
            "counts": dict(Counter(acc.statuses)),
            "histogram": score_histogram(scores),
            "error": end.error,
            "partial": end.error is not None,
            "input_file": end.stamp,
            "model_fingerprint": scorer.fingerprint,
            "finished_at": time.time(),
        }
        write_json_atomic(self.run.marker_path(end.shard), marker)
        self.timings["write_s"] += time.perf_counter() - t

    def _emb_table(self, scorer: Any, acc: _ShardAcc) -> pa.Table:
        dim = int(acc.img_embs[0].shape[0]) if acc.img_embs else scorer.embed_dim
        return pa.table(
            {
                "uid": pa.array(acc.emb_uids, pa.string()),
                "image_embedding": _fixed_list(acc.img_embs, dim),
                "text_embedding": _fixed_list(acc.txt_embs, dim),
            },
            schema=pa.schema(
                [
                    pa.field("uid", pa.string()),
                    embedding_field("image_embedding", dim),
                    embedding_field("text_embedding", dim),
                ]
            ),
        )

    def _merge_retry(self, scorer: Any, end: _ShardEnd, acc: _ShardAcc) -> None:
        """Replace a finished shard's retried rows with their new outcome (table, embeddings, marker)."""
        t = time.perf_counter()
        marker = self.run.read_marker(end.shard) or {"shard": end.shard}
        if end.fatal:  # the source is gone: the shard keeps its rows as they were
            self.warnings.append(f"could not retry {end.shard}: {end.error}")
        if not acc.uids:
            return
        old = pq.read_table(self.run.score_path(end.shard))
        new = _score_table(acc, np.asarray(acc.scores, dtype=np.float32))
        new_at = {u: i for i, u in enumerate(acc.uids)}
        n_old = old.num_rows
        take = [n_old + new_at[u] if u in new_at else i for i, u in enumerate(old.column("uid").to_pylist())]
        merged = pa.concat_tables([old, new.cast(old.schema)]).take(pa.array(take, pa.int64()))
        if self.config.save_embeddings and acc.emb_uids:
            emb_path = self.run.embedding_path(end.shard)
            emb_new = self._emb_table(scorer, acc)
            if emb_path.exists():
                emb_old = pq.read_table(emb_path)
                keep = [u not in new_at for u in emb_old.column("uid").to_pylist()]
                emb_new = pa.concat_tables([emb_old.filter(pa.array(keep)), emb_new.cast(emb_old.schema)])
            write_parquet_atomic(emb_path, emb_new)
        write_parquet_atomic(self.run.score_path(end.shard), merged)
        statuses = merged.column("status").to_pylist()
        scores = merged.column("score").to_numpy(zero_copy_only=False).astype(np.float32)
        now_ok = sum(st == Status.OK.value for st in acc.statuses)
        previous = marker.get("retried") or {}
        marker |= {
            "rows": merged.num_rows,
            "counts": dict(Counter(statuses)),
            "histogram": score_histogram(scores),
            "retried": {
                "rows": int(previous.get("rows", 0)) + len(acc.uids),
                "now_ok": int(previous.get("now_ok", 0)) + now_ok,
                "last_at": time.time(),
            },
            "finished_at": time.time(),
        }
        write_json_atomic(self.run.marker_path(end.shard), marker)
        self._retried["shards"] += 1
        self._retried["rows"] += len(acc.uids)
        self._retried["now_ok"] += now_ok
        self.timings["write_s"] += time.perf_counter() - t

    # ----- summary ------------------------------------------------------------------------
    def _write_summary(
        self, scorer: Any, shards: list[ShardRef], stats: dict[str, Any], wall: float
    ) -> dict[str, Any]:
        markers = self.run.markers()
        names = {s.name for s in shards}
        ours = [m for m in markers if m.get("shard") in names]
        merged = merge_markers(ours)
        done = {m["shard"] for m in markers}
        partial = {m["shard"] for m in markers if m.get("partial") or m.get("error")}
        summary: dict[str, Any] = {
            "input": self.input_spec,
            "out": str(self.run.root),
            "shards_total": len(shards),
            "shards_done": len(names & (done - partial)),  # partial shards are not done
            "shards_partial": len(names & partial),
            "shards_missing": sorted(names - done),
            **merged,
            "this_run": stats | {"wall_s": round(wall, 3)},
            "model": scorer.describe(),
            "preprocessing": self._preprocessing(scorer),
            "config": self.config.model_dump(exclude={"progress"}),
            "decode_workers": self.workers,
            "torch_threads": _torch_threads(),
            "versions": _versions(),
            "warnings": list(self.warnings),
        }
        summary["pairs_failed"] = sum(v for k, v in summary["counts_by_status"].items() if k != "ok")
        summary["problems"] = run_problems(summary)
        summary["complete"] = not summary["problems"]
        write_score_report(self.run.root, summary, ours)
        write_json_atomic(self.run.root / "summary.json", summary)
        return summary


def file_stamp(url: str) -> dict[str, Any] | None:
    """Size and modification time of a shard's file (None when they cannot be had)."""
    path = url.removeprefix("file://")
    if "://" not in path:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        from fsspec.core import url_to_fs

        fs, p = url_to_fs(url)
        info = fs.info(p)
    except Exception:  # any remote failure: unknown, not fatal
        return None
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("ETag")
    return {"size": info.get("size"), "mtime": str(mtime) if mtime is not None else None}


def _score_table(acc: _ShardAcc, scores: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "uid": pa.array(acc.uids, pa.string()),
            "score": pa.array(scores, pa.float32(), mask=~np.isfinite(scores)),
            "status": pa.array(acc.statuses, pa.string()),
            "error": pa.array(acc.errors, pa.string()),
            "text": pa.array(acc.texts, pa.string()),
            "width": pa.array(acc.widths, pa.int32()),
            "height": pa.array(acc.heights, pa.int32()),
            "key": pa.array(acc.keys, pa.string()),
            "source": pa.array(acc.sources, pa.string()),
        },
        schema=SCORE_SCHEMA,
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _fixed_list(rows: list[np.ndarray], dim: int) -> pa.Array:
    flat = np.concatenate(rows).astype(np.float16) if rows else np.zeros(0, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim)


def score_dataset(
    input_spec: str | list[str], out_dir: str | Path, config: ScoreConfig | None = None
) -> dict[str, Any]:
    """Score every pair of `input_spec` into `out_dir`; returns the run summary (also in summary.json)."""
    return ScoreJob(input_spec, out_dir, config or ScoreConfig()).run_job()

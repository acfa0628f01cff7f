"""Dataset versions at scale: lineage lookups, diffs, commits, store size and memory vs versions.

Builds a chain of versions of `--samples` synthetic instruction samples (default 1M): the first
version ingests everything (one lineage event per sample); each later one recaptions 1%, drops 0.5%
(with a filter's reason) and adds 0.5% from a plan, so a version shares 98% of its content with its
parent. Then it measures (issue 19's goals in brackets):

- lineage: the full history of random samples along the newest version's ancestry, p50/p99 ms,
  warm (one store object) and cold (a new store object per lookup, OS page cache warm) [< 100 ms];
- diff: first vs last version, seconds [< 60 s at 1M];
- memory: peak RSS of a fresh process that opens the store and runs lineage lookups and a diff
  along chains of 2, 5 and 10 versions [flat in the number of versions];
- commit seconds per version, bytes written per version and the whole store (dedup across versions).

    python benchmarks/versions.py                      # 1M samples, 10 versions (minutes)
    python benchmarks/versions.py --samples 20000 --versions 4 --lookups 100   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_dir, cpu_model, emit, log
from vlcurate.versions.model import LineageEvent
from vlcurate.versions.store import VersionStore

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross")


def make_sample(i: int, answer_variant: int = 0) -> dict[str, Any]:
    c, s = COLOURS[i % len(COLOURS)], SHAPES[(i // 7) % len(SHAPES)]
    answer = f"The {s} is {c}." if answer_variant == 0 else f"It is a {c} {s} (rev {answer_variant})."
    return {
        "id": f"s{i:08d}",
        "images": [f"/data/images/{i // 1000:05d}/{i:08d}.png"],
        "messages": [
            {"role": "user", "content": f"<image>\nWhat colour is the {s}?"},
            {"role": "assistant", "content": answer},
        ],
        "kind": "colour",
        "short_answer": c,
        "scores": {"clip": round(0.2 + (i % 100) / 500, 4)},
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_chain(
    root: Path, n: int, versions: int, seed: int
) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """Commit the chain: version ids, per-version commit figures, and how many samples existed by each.
    Samples are made on the fly from (index, revision), so the benchmark itself stays small in memory."""
    rng = random.Random(seed)
    store = VersionStore(root)
    current: dict[int, int] = {i: 0 for i in range(n)}  # sample index -> revision of its answer
    ids: list[str] = []
    figures: list[dict[str, Any]] = []
    next_new = n
    seen: list[int] = []  # after each version: how many sample indices have existed so far
    parent: str | None = None
    for v in range(versions):
        events: Any
        if v == 0:
            events = (
                LineageEvent(sample_id=f"s{i:08d}", op="ingest", params={"source": "bench"}) for i in range(n)
            )
        else:
            events = []
            n_recap, n_drop, n_add = max(1, n // 100), max(1, n // 200), max(1, n // 200)
            touched = rng.sample(list(current), n_recap + n_drop)
            for k in touched[:n_recap]:
                current[k] = v
                events.append(
                    LineageEvent(
                        sample_id=f"s{k:08d}", op="recaption", reason="low clip score", scores={"clip": 0.12}
                    )
                )
            for k in touched[n_recap:]:
                events.append(
                    LineageEvent(
                        sample_id=f"s{k:08d}", op="answer_agreement", reason="answer_mismatch", dropped=True
                    )
                )
                del current[k]
            for _ in range(n_add):
                current[next_new] = 0
                events.append(
                    LineageEvent(sample_id=f"s{next_new:08d}", op="build", reason=f"plan p{v}: colour=red")
                )
                next_new += 1
        before = dir_bytes(root) if root.exists() else 0
        t0 = time.perf_counter()
        info = store.commit(
            (make_sample(k, r) for k, r in current.items()),
            parent=parent,
            message=f"v{v}",
            plan_id=f"p{v}" if v else None,
            events=events,
        )
        seconds = time.perf_counter() - t0
        figures.append(
            {
                "version": v,
                "samples": info.n_samples,
                "events": info.n_events,
                "new_content": info.new_samples,
                "commit_s": round(seconds, 2),
                "bytes_written": dir_bytes(root) - before,
            }
        )
        log(f"v{v}: {info.n_samples:,} samples, {info.new_samples:,} new, commit {seconds:.1f}s")
        ids.append(info.id)
        seen.append(next_new)
        parent = info.id
    return ids, figures, seen


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def lineage_times(root: Path, version: str, sample_ids: list[str], cold: bool) -> list[float]:
    store = VersionStore(root)
    out: list[float] = []
    for sid in sample_ids:
        if cold:
            store = VersionStore(root)
        t0 = time.perf_counter()
        h = store.lineage(sid, version)
        out.append((time.perf_counter() - t0) * 1000)
        assert h.history, sid
    return out


def memory_probe(root: Path, version: str, first: str, sample_ids: list[str]) -> dict[str, Any]:
    """Run lineage lookups and a diff in a fresh process; its peak RSS (VmHWM: ru_maxrss would carry
    this process's peak across fork and exec)."""
    code = (
        "import json, sys\n"
        "from vlcurate.versions.store import VersionStore\n"
        "root, v, first, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])\n"
        "s = VersionStore(root)\n"
        "for i in ids: s.lineage(i, v)\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM'): return int(line.split()[1]) / 1024\n"
        "after_lineage = hwm()\n"
        "s.diff(first, v)\n"
        "print(json.dumps({'after_lineage_mb': after_lineage, 'after_diff_mb': hwm()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root), version, first, json.dumps(sample_ids)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: round(v, 1) for k, v in json.loads(out.stdout).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="Keep the store in .bench/versions afterwards.")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.versions < 2:
        ap.error("--versions must be at least 2")
    root = bench_dir() / "versions" / f"store-{args.samples}"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    ids, commits, seen = build_chain(root, args.samples, args.versions, args.seed)
    build_s = time.perf_counter() - t0
    rng = random.Random(args.seed + 1)
    lineage: dict[str, Any] = {}
    k5 = min(5, len(ids))
    for label, k in ((f"at_{k5}_versions", k5), (f"at_{len(ids)}_versions", len(ids))):
        version = ids[k - 1]
        # samples that ever existed along this chain (some were dropped or recaptioned on the way)
        picks = [f"s{i:08d}" for i in rng.sample(range(seen[k - 1]), min(args.lookups, seen[k - 1]))]
        lineage_times(root, version, picks[:5], cold=False)  # warm the OS page cache
        warm = lineage_times(root, version, picks, cold=False)
        cold = lineage_times(root, version, picks[: max(10, len(picks) // 3)], cold=True)
        lineage[label] = {
            "warm_p50_ms": round(percentile(warm, 0.5), 2),
            "warm_p99_ms": round(percentile(warm, 0.99), 2),
            "cold_p50_ms": round(percentile(cold, 0.5), 2),
            "cold_p99_ms": round(percentile(cold, 0.99), 2),
            "lookups": len(warm),
        }
        got = lineage[label]
        log(f"lineage {label}: warm p50 {got['warm_p50_ms']} ms, p99 {got['warm_p99_ms']} ms")
    store = VersionStore(root)
    t1 = time.perf_counter()
    d = store.diff(ids[0], ids[-1])
    diff_s = time.perf_counter() - t1
    t1 = time.perf_counter()
    d1 = store.diff(ids[-2], ids[-1])
    diff_step_s = time.perf_counter() - t1
    log(f"diff first->last {diff_s:.1f}s ({d.added:,} added, {d.removed:,} removed, {d.changed:,} changed)")
    memory: dict[str, Any] = {}
    for k in (2, 5, 10):
        if k <= len(ids):
            probe = [f"s{i:08d}" for i in rng.sample(range(args.samples), 50)]
            memory[f"{k}_versions"] = memory_probe(root, ids[k - 1], ids[0], probe)
    result = {
        "benchmark": "versions",
        "samples": args.samples,
        "versions": len(ids),
        "lineage_ms": lineage,
        "diff": {
            "first_to_last_s": round(diff_s, 2),
            "last_step_s": round(diff_step_s, 2),
            "added": d.added,
            "removed": d.removed,
            "changed": d.changed,
            "step_changed": d1.changed,
        },
        "peak_rss_mb_fresh_process": memory,
        "commits": commits,
        "store_bytes": dir_bytes(root),
        "first_version_bytes": commits[0]["bytes_written"],
        "build_s": round(build_s, 1),
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        },
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    at = lineage[f"at_{len(ids)}_versions"]
    emit(
        result,
        f"versions: {args.samples:,} samples x {len(ids)} versions; lineage p50 {at['warm_p50_ms']} ms "
        f"p99 {at['warm_p99_ms']} ms; diff {diff_s:.1f}s; store {result['store_bytes'] / 1e6:.0f} MB",
        args.json_out,
    )


if __name__ == "__main__":
    main()

"""Write the samples of a DataComp subset into new WebDataset shards (DataComp's `resharder.py`).

Every input sample's uid is looked up in the sorted subset with `np.searchsorted`; matches are
written in input order into `{:08d}.tar` shards of `samples_per_shard` samples. WebDataset input
is copied member by member (same keys, suffixes and bytes); other inputs are written as
`KEY.<image ext>` + `KEY.txt` + `KEY.json`. Resumable: each finished shard records where in the
input it ended, a re-run with the same inputs and settings continues after the last finished
shard, and a shard appears (by rename) only when complete.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from vlcurate.base.atomic import write_text_atomic
from vlcurate.base.images import sniff_image_ext
from vlcurate.base.records import Sample
from vlcurate.io.fetch import resolve_images
from vlcurate.io.fields import META_KEYS
from vlcurate.io.paths import safe_name
from vlcurate.io.shard_writer import ShardWriter
from vlcurate.io.shards import ShardReadError, ShardRef
from vlcurate.io.sources import Source, open_source
from vlcurate.io.subset import read_subset, subset_contains, uids_to_array_unsorted
from vlcurate.io.wds_reader import WdsShardReader, iter_tar_groups

PLAN_FILE = "_reshard_plan.json"
SUMMARY_FILE = "_reshard_stats.json"
_OURS = re.compile(r"^\d{8}(\.tar|\.parquet|_stats\.json)(\.tmp)?$")

Members = list[tuple[str, bytes]]


@dataclass
class _Counters:
    """Running totals; a snapshot is stored with each written sample as the shard's resume cursor."""

    shard_index: int = -1
    sample_index: int = -1
    seen: int = 0
    written: int = 0
    duplicates: int = 0
    not_written: dict[str, int] = field(default_factory=dict)
    shard_errors: list[dict[str, str]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "shard_index": self.shard_index,
            "sample_index": self.sample_index,
            "seen": self.seen,
            "written": self.written,
            "duplicates": self.duplicates,
            "not_written": dict(self.not_written),
            "shard_errors": list(self.shard_errors),
        }


def _subset_fingerprint(path: Path, subset: np.ndarray) -> dict[str, Any]:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(subset[:4096]).tobytes())
    h.update(np.ascontiguousarray(subset[-4096:]).tobytes())
    return {"path": str(path.resolve()), "rows": len(subset), "digest": h.hexdigest()}


def _prepare_out(out: Path, plan: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Check or start the output folder; return the saved summary when this job already finished."""
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / PLAN_FILE
    ours = [p for p in out.iterdir() if _OURS.match(p.name)]
    if overwrite:
        for p in [*ours, plan_path, out / SUMMARY_FILE]:
            p.unlink(missing_ok=True)
    elif plan_path.exists():
        if json.loads(plan_path.read_text()) != plan:
            raise ValueError(
                f"{out} holds a reshard of other inputs or settings; use another folder, "
                "or overwrite=True (--overwrite) to replace it"
            )
        if (out / SUMMARY_FILE).exists():
            done: dict[str, Any] = json.loads((out / SUMMARY_FILE).read_text())
            return done
    elif any(p.suffix == ".tar" for p in ours):
        raise ValueError(
            f"{out} already holds .tar shards not written by a reshard; use another folder, "
            "or overwrite=True (--overwrite) to replace them"
        )
    for p in out.glob("*.tmp"):
        p.unlink()
    write_text_atomic(plan_path, json.dumps(plan, indent=2))
    return None


def _finished_shards(out: Path) -> list[dict[str, Any]]:
    """Stats of the complete shards 00000000, 00000001, ... (contiguous from 0)."""
    stats: list[dict[str, Any]] = []
    while (out / f"{len(stats):08d}.tar").exists():
        stats.append(json.loads((out / f"{len(stats):08d}_stats.json").read_text()))
    return stats


def _items(source: Source, shard: ShardRef) -> Iterator[tuple[Sample, Members | None]]:
    """(sample, exact tar members or None) for each sample of a shard; after a tar's samples, the
    rows its img2dataset parquet lists as failed (they have no members to copy)."""
    if shard.kind == "wds":
        make = getattr(source, "wds_reader", None)
        reader = make(shard) if make is not None else WdsShardReader(shard.url)
        for group in iter_tar_groups(shard.url):
            yield reader.sample(group), [(m.suffix, m.data) for m in group.members]
        for sample in reader.leftovers():
            yield sample, None
    else:
        for sample in source.iter_samples(shard):
            yield sample, None


def _members_for(sample: Sample) -> Members:
    """`KEY.<ext>` (image bytes as they are) + `KEY.txt` + `KEY.json` for non-WebDataset input."""
    assert sample.image is not None
    ext = sniff_image_ext(sample.image) or sample.image_ext or "jpg"
    doc: dict[str, Any] = {"uid": sample.uid, "key": sample.key, "caption": sample.text}
    doc.update({k: sample.meta[k] for k in META_KEYS if k in sample.meta})
    if sample.image_ref and "url" not in doc:
        doc["url"] = sample.image_ref
    return [
        (ext, sample.image),
        ("txt", (sample.text or "").encode("utf-8")),
        ("json", json.dumps(doc, ensure_ascii=False).encode("utf-8")),
    ]


def reshard(
    input_spec: str | Sequence[str],
    subset_path: str | Path,
    out_dir: str | Path,
    *,
    samples_per_shard: int = 10_000,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    source_options: dict[str, Any] | None = None,
    fetch_options: dict[str, Any] | None = None,
    batch_size: int = 1024,
    progress: Callable[[ShardRef, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write the input samples whose uid is in the subset into new shards in `out_dir`.

    Returns a summary: seen, written, shards_written, subset_not_found (subset uids never seen),
    duplicates (subset uids seen again; both copies are written), not_written (non-WebDataset
    samples without image bytes, by status), shard_errors (a missing or broken input shard is
    recorded and skipped; what it yielded before breaking is kept). Raises ValueError /
    FileNotFoundError for a bad subset file, a missing input, or an output folder of another job.
    """
    t0 = time.time()
    subset_path = Path(subset_path)
    subset = read_subset(subset_path)
    source = open_source(input_spec, **(source_options or {}))
    shards = source.shards()
    out = Path(out_dir)
    plan = json.loads(
        json.dumps(
            {
                "inputs": [s.url for s in shards],
                "subset": _subset_fingerprint(subset_path, subset),
                "samples_per_shard": samples_per_shard,
                "max_shard_bytes": max_shard_bytes,
                "source_options": source_options or {},
            },
            default=str,
        )
    )
    done = _prepare_out(out, plan, overwrite)
    if done is not None:
        return {**done, "already_done": True}

    finished = _finished_shards(out)
    found = np.zeros(len(subset), dtype=bool)
    for st in finished:
        uids = pq.read_table(out / f"{st['name']}.parquet", columns=["uid"]).column(0).to_pylist()
        found[np.searchsorted(subset, uids_to_array_unsorted(uids))] = True
    c = _Counters(**finished[-1]["cursor"]) if finished else _Counters()
    resume_shard, resume_sample = c.shard_index, c.sample_index

    writer = ShardWriter(
        out, samples_per_shard=samples_per_shard, max_shard_bytes=max_shard_bytes, start_index=len(finished)
    )
    try:
        for i, shard in enumerate(shards):
            if i < resume_shard:
                continue
            skip_upto = resume_sample if i == resume_shard else -1
            try:
                _reshard_shard(
                    source, shard, i, skip_upto, subset, found, writer, c, batch_size, fetch_options
                )
            except ShardReadError as exc:
                c.shard_errors.append({"shard": shard.url, "error": str(exc)})
            if progress is not None:
                progress(shard, c.snapshot())
        writer.close()
    except BaseException:
        writer.abort()
        raise
    summary = {
        "input": input_spec if isinstance(input_spec, str) else list(input_spec),
        "out_dir": str(out),
        "subset": str(subset_path),
        "subset_size": len(subset),
        "input_shards": len(shards),
        "seen": c.seen,
        "written": c.written,
        "duplicates": c.duplicates,
        "subset_not_found": int(len(subset) - found.sum()),
        "shards_written": len(finished) + len(writer.written),
        "shards_written_this_run": len(writer.written),
        "resumed_after_shards": len(finished),
        "not_written": c.not_written,
        "shard_errors": c.shard_errors,
        "elapsed_s": round(time.time() - t0, 3),
        "already_done": False,
    }
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
    return summary


def _reshard_shard(
    source: Source,
    shard: ShardRef,
    shard_index: int,
    skip_upto: int,
    subset: np.ndarray,
    found: np.ndarray,
    writer: ShardWriter,
    c: _Counters,
    batch_size: int,
    fetch_options: dict[str, Any] | None,
) -> None:
    """Look up one input shard's uids a batch at a time and write the matches in input order."""
    batch: list[tuple[int, Sample, Members | None]] = []

    def flush() -> None:
        mask = subset_contains(subset, [s.uid for _, s, _ in batch])
        pos = np.searchsorted(subset, uids_to_array_unsorted([s.uid for _, s, _ in batch]))
        need = [
            s for (_, s, m), hit in zip(batch, mask, strict=True) if hit and m is None and s.image is None
        ]
        resolved = resolve_images(need, **(fetch_options or {})) if need else []
        fetched = {id(s): r for s, r in zip(need, resolved, strict=True)}
        for (j, sample, members), hit, p in zip(batch, mask, pos, strict=True):
            c.shard_index, c.sample_index = shard_index, j
            c.seen += 1
            if not hit:
                continue
            c.duplicates += int(found[p])
            found[p] = True
            sample = fetched.get(id(sample), sample)
            if members is None:
                if sample.image is None:
                    reason = sample.status.value
                    c.not_written[reason] = c.not_written.get(reason, 0) + 1
                    continue
                members = _members_for(sample)
                key = safe_name(sample.key)
            else:
                key = sample.key
            c.written += 1
            writer.write(key, members, uid=sample.uid, text=sample.text, cursor=c.snapshot())
        batch.clear()

    try:
        for j, (sample, members) in enumerate(_items(source, shard)):
            if j <= skip_upto:
                continue
            batch.append((j, sample, members))
            if len(batch) >= batch_size:
                flush()
    finally:  # also keep what a broken shard yielded before it broke
        if batch:
            flush()

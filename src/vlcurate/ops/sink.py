"""The run sink: everything a recipe run writes from its final rows, in one place, for both engines.

Per input shard, the rows of the last stage go to `decisions/SHARD.parquet` (every pair, kept or
not, with its reason; image bytes left out). Over the whole run: the kept uids to `subset.npy`
(spooled to disk, so memory does not grow with rows), the drop reasons counted, the kept pairs
resharded into WebDataset tars under `shards/` when `sink.write_shards` is set, and instruction
samples written in a trainer format when `sink.instruct_format` is set (`dropped.jsonl` beside them).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.base.atomic import commit_file, write_parquet_atomic
from vlcurate.base.images import sniff_image_ext
from vlcurate.io.shard_writer import ShardWriter
from vlcurate.io.subset import PairSpool, uid_pairs
from vlcurate.ops.base import KEEP, REASON, keep_mask
from vlcurate.ops.recipe import SinkSpec

BULKY = ("image", "extra_images")  # left out of decisions


class InstructSink:
    """Kept instruction samples (and their chain-of-thought twins) in a trainer format; drops in
    `dropped.jsonl` with uid and reason."""

    def __init__(self, out: Path, fmt: str) -> None:
        from vlcurate.io.instruct.writer import InstructWriter

        self.writer = InstructWriter(out, fmt)
        self._dropped_path = out / "dropped.jsonl"
        self._dropped_tmp = out / "dropped.jsonl.tmp"
        self._dropped = self._dropped_tmp.open("w", encoding="utf-8")
        self.kept = self.cot = self.dropped = 0

    def add_table(self, table: pa.Table) -> None:
        from vlcurate.io.instruct.columns import MESSAGES_COT
        from vlcurate.io.instruct.writer import COT_SUFFIX, sample_from_row

        has_cot = MESSAGES_COT in table.column_names
        wanted = ("uid", "key", "image", "extra_images", "image_paths", "messages", "meta", KEEP, REASON)
        names = [c for c in table.column_names if c in (*wanted, MESSAGES_COT)]
        for row in table.select(names).to_pylist():
            if not row.get(KEEP, True):
                line = {"uid": row["uid"], "id": row["key"], "reason": row.get(REASON)}
                self._dropped.write(json.dumps(line, ensure_ascii=False) + "\n")
                self.dropped += 1
                continue
            sample, images = sample_from_row(row)
            self.writer.add(sample, images)
            self.kept += 1
            if has_cot and row.get(MESSAGES_COT):
                twin, _ = sample_from_row(row, MESSAGES_COT)
                self.writer.add(twin.model_copy(update={"id": sample.id + COT_SUFFIX}), images)
                self.cot += 1

    def close(self) -> dict[str, Any]:
        path = self.writer.close()
        self._dropped.close()
        commit_file(self._dropped_tmp, self._dropped_path)
        return {"path": str(path), "kept": self.kept, "cot": self.cot, "dropped": self.dropped}


class ShardSink:
    """The kept pairs as new WebDataset shards (`shards/00000000.tar`, ...), each sample its image
    (`.jpg`, `.png`, ... by its bytes), caption (`.txt`) and `.json` with uid and key. Written fresh
    on every run, so a changed recipe never leaves shards of an earlier selection."""

    def __init__(self, out: Path, samples_per_shard: int) -> None:
        self.dir = out / "shards"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.writer = ShardWriter(self.dir, samples_per_shard=samples_per_shard)
        self.written = self.without_image = 0

    def add_table(self, table: pa.Table) -> None:
        if "image" not in table.column_names:
            return
        kept = table.filter(pa.array(keep_mask(table)))
        cols = {
            c: kept.column(c).to_pylist() for c in ("uid", "key", "text", "image") if c in kept.column_names
        }
        n = kept.num_rows
        keys = cols.get("key") or [None] * n
        texts = cols.get("text") or [None] * n
        for uid, key, text, image in zip(cols["uid"], keys, texts, cols["image"], strict=True):
            if image is None:
                self.without_image += 1
                continue
            name = key or uid
            members = [
                (sniff_image_ext(image) or "jpg", image),
                ("txt", (text or "").encode("utf-8")),
                ("json", json.dumps({"uid": uid, "key": name}).encode("utf-8")),
            ]
            self.writer.write(name, members, uid=uid, text=text)
            self.written += 1

    def close(self) -> dict[str, Any]:
        shards = self.writer.close()
        return {
            "path": str(self.dir),
            "shards": len(shards),
            "samples": self.written,
            "kept_without_image": self.without_image,
        }


class RunSink:
    """Takes the final rows of each shard, in shard order; `close` finishes the subset and the
    writers and says what was written."""

    def __init__(self, out: Path, spec: SinkSpec, shard_names: list[str]) -> None:
        self.out = out
        self.decisions = out / "decisions"
        self.decisions.mkdir(parents=True, exist_ok=True)
        wanted = {f"{n}.parquet" for n in shard_names}
        for f in self.decisions.glob("*.parquet"):  # shards of an earlier input, or that failed now
            if f.name not in wanted:
                f.unlink()
        self.subset = out / "subset.npy"
        self._spool = PairSpool(out / "subset.pairs.tmp")
        self.rows = self.kept = 0
        self.reasons: Counter[str] = Counter()
        self.instruct = InstructSink(out, spec.instruct_format) if spec.instruct_format else None
        self.shards = ShardSink(out, spec.samples_per_shard) if spec.write_shards else None

    def add(self, shard: str, table: pa.Table) -> np.ndarray:
        """One shard's final rows; returns its keep mask."""
        if KEEP not in table.column_names:
            table = table.append_column(KEEP, pa.array(np.ones(table.num_rows, dtype=bool)))
            table = table.append_column(REASON, pa.nulls(table.num_rows, pa.string()))
        keep = keep_mask(table)
        self.rows += table.num_rows
        kept_u = table.column("uid").filter(pa.array(keep))
        self.kept += len(kept_u)
        self._spool.append(uid_pairs(kept_u.combine_chunks()))
        for v in pc.value_counts(table.column(REASON).drop_null().combine_chunks()).to_pylist():
            self.reasons[v["values"]] += v["counts"]
        if self.instruct is not None:
            self.instruct.add_table(table)
        if self.shards is not None:
            self.shards.add_table(table)
        bulky = [c for c in BULKY if c in table.column_names]
        write_parquet_atomic(self.decisions / f"{shard}.parquet", table.drop_columns(bulky))
        return keep

    def abort(self) -> None:
        self._spool.abort()
        if self.shards is not None:
            self.shards.writer.abort()

    def close(self) -> dict[str, Any]:
        """Write `subset.npy`, finish the writers; what the instruct and shard writers wrote."""
        self._spool.finish(self.subset)
        written: dict[str, Any] = {}
        if self.instruct is not None:
            written["instruct"] = self.instruct.close()
        if self.shards is not None:
            written["shards"] = self.shards.close()
        return written

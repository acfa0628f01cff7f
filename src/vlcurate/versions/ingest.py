"""What `vlcurate version create` reads: instruction data files and `vlcurate run` output folders,
as samples (dicts with an `id`) and the lineage events that explain them.

- Instruction files (LLaVA / ShareGPT / OpenAI JSON or JSONL, HF Parquet): each record becomes a
  sample `{id, images: [absolute paths], messages: [{role, content}], ...other fields}` and an `ingest`
  event naming the file and row. A record that does not parse, or whose image is missing, is not
  stored: it becomes a `dropped` event with the reason, so nothing disappears unexplained. Embedded
  image bytes (HF Parquet) are written once into the store's `objects/images/` and referred to there.
- A run folder (`decisions/*.parquet` + `report.json`): kept rows become samples; every row gets one
  event per recipe step it went through (with the step's scores on it) and the step that dropped it
  records `dropped` with its `reason`, as `ops.sink` wrote them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vlcurate.base.atomic import write_bytes_atomic
from vlcurate.base.images import sniff_image_ext
from vlcurate.io.instruct.formats import SampleError, parse_record
from vlcurate.io.instruct.hf import iter_hf_rows
from vlcurate.io.instruct.model import InstructSample
from vlcurate.io.jsonscan import JsonScanError, array_elements
from vlcurate.io.paths import has_protocol
from vlcurate.io.rows import file_buffer
from vlcurate.versions.content import file_sha256
from vlcurate.versions.errors import VersionError
from vlcurate.versions.model import LineageEvent

# Columns of run decisions that are not scores (ops.sink, io.instruct.reader, base.records).
RUN_BASE_COLUMNS = {
    "uid",
    "key",
    "text",
    "shard",
    "source",
    "messages",
    "meta",
    "image_paths",
    "keep",
    "reason",
    "dropped_by",
    "reasons",
    "url",
    "status",
    "error",
    "messages_cot",
}
COT_SUFFIX = "-cot"


@dataclass
class Ingested:
    """Samples and events read from an input, with counts for the report."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[LineageEvent] = field(default_factory=list)
    dropped: int = 0
    sources: list[str] = field(default_factory=list)


def _scalar(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _abs_image(ref: str | None, base_dir: Path) -> str | None:
    if not ref:
        return ref
    if has_protocol(ref) or ref.startswith("/"):
        return ref
    return str((base_dir / ref).resolve())


def store_image(root: Path, data: bytes) -> str:
    """Embedded image bytes as a content-addressed file in the store; its absolute path."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    ext = sniff_image_ext(data) or "img"
    path = root / "objects" / "images" / digest[:2] / f"{digest}.{ext}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    return str(path.resolve())


def sample_dict(item: InstructSample, base_dir: Path, store_root: Path) -> tuple[dict[str, Any], str | None]:
    """The stored form of an instruction sample, and why it cannot be stored (a missing image)."""
    images: list[str] = []
    problem: str | None = None
    for i, img in enumerate(item.images):
        if img.data is not None:
            images.append(store_image(store_root, img.data))
            continue
        ref = _abs_image(img.path, base_dir) or ""
        if ref.startswith("/") and not os.path.exists(ref):
            problem = problem or f"image:missing image {i} ({img.path})"
        images.append(ref)
    placeholder = item.placeholder_error()
    if placeholder:
        problem = problem or f"invalid:{placeholder}"
    body: dict[str, Any] = {k: v for k, v in item.meta.items() if k not in ("id", "images", "messages")}
    body.update(id=item.id, images=images, messages=[m.model_dump() for m in item.messages])
    return body, problem


def _records(path: Path) -> Iterator[tuple[int, InstructSample | SampleError]]:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        meta = pq.ParquetFile(path).metadata
        yield from iter_hf_rows(str(path), list(range(meta.num_row_groups)), 0)
        return
    if name.endswith((".jsonl", ".ndjson")):
        raws: Iterator[bytes] = (line for line in path.read_bytes().splitlines() if line.strip())
    elif name.endswith(".json"):
        buf = file_buffer(str(path), "instruction file")
        try:
            spans = list(array_elements(buf))
        except JsonScanError as exc:
            raise VersionError(f"{path}: not a valid JSON array: {exc}") from None
        raws = (bytes(buf[s:e]) for s, e in spans)
    else:
        raise VersionError(f"{path}: instruction data is .json, .jsonl or .parquet")
    for i, raw in enumerate(raws):
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            yield i, SampleError(f"{path} sample {i}: invalid JSON: {exc}")
            continue
        try:
            yield i, parse_record(rec, source=str(path), index=i)
        except SampleError as exc:
            yield i, exc


def read_instruct(files: list[Path], store_root: Path, image_root: Path | None = None) -> Ingested:
    """Samples and events from instruction data files; relative image paths are under `image_root`
    (LLaVA's `--image-folder`), by default the folder of the file that names them."""
    out = Ingested()
    seen: set[str] = set()
    for path in files:
        if not path.is_file():
            raise VersionError(f"{path}: no such file")
        src = str(path.resolve())
        out.sources.append(src)
        for index, item in _records(path):
            where = f"{src}#row={index}"
            if isinstance(item, SampleError):
                out.events.append(
                    LineageEvent(
                        sample_id=where,
                        op="ingest",
                        reason=f"invalid:{item}",
                        dropped=True,
                        params={"source": where},
                    )
                )
                out.dropped += 1
                continue
            base_dir = image_root.resolve() if image_root is not None else path.resolve().parent
            body, problem = sample_dict(item, base_dir, store_root)
            if item.id in seen:
                problem = problem or f"duplicate:id {item.id!r} already read"
            if problem is not None:
                out.events.append(
                    LineageEvent(
                        sample_id=item.id, op="ingest", reason=problem, dropped=True, params={"source": where}
                    )
                )
                out.dropped += 1
                continue
            seen.add(item.id)
            out.samples.append(body)
            out.events.append(LineageEvent(sample_id=item.id, op="ingest", params={"source": where}))
    return out


def _recipe_steps(run_dir: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each step as {op, params}: names from report.json, parameters from the recipe if it is still there."""
    names = [str(s.get("op")) for s in report.get("steps", []) if isinstance(s, dict)]
    params: list[dict[str, Any]] = [{} for _ in names]
    recipe = report.get("recipe")
    if isinstance(recipe, str):
        for candidate in (Path(recipe), run_dir / recipe):
            if candidate.is_file():
                import yaml

                try:
                    doc = yaml.safe_load(candidate.read_text())
                except (yaml.YAMLError, OSError):
                    break
                steps = doc.get("steps", []) if isinstance(doc, dict) else []
                if [s.get("op") for s in steps if isinstance(s, dict)] == names:
                    params = [{k: v for k, v in s.items() if k != "op"} for s in steps]
                break
    return [{"op": n, "params": p} for n, p in zip(names, params, strict=True)]


def read_run(run_dir: Path, provides: dict[str, list[str]] | None = None) -> Ingested:
    """Samples and events from a `vlcurate run` output folder (instruction data runs).

    `provides` maps each operator to the columns it writes, so each step's event carries its own
    scores; without it, every score column goes on the last step's event."""
    decisions = sorted((run_dir / "decisions").glob("*.parquet"))
    report_path = run_dir / "report.json"
    if not decisions or not report_path.is_file():
        raise VersionError(
            f"{run_dir} is not a `vlcurate run` output folder (no decisions/*.parquet or report.json)"
        )
    try:
        report = json.loads(report_path.read_text())
    except ValueError as exc:
        raise VersionError(f"{report_path}: not JSON ({exc})") from None
    steps = _recipe_steps(run_dir, report)
    out = Ingested(sources=[str(run_dir.resolve())])
    seen: set[str] = set()
    for path in decisions:
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise VersionError(f"{path}: not a readable decisions table ({exc})") from None
        if "messages" not in table.column_names:
            raise VersionError(
                f"{path}: no 'messages' column; versions hold instruction data (a recipe with kind: instruct)"
            )
        score_cols = [c for c in table.column_names if c not in RUN_BASE_COLUMNS]
        owner = {c: op for op, cols in (provides or {}).items() for c in cols}
        last_op = steps[-1]["op"] if steps else "run"
        for row in table.to_pylist():
            out.events.extend(_row_events(row, steps, score_cols, owner, last_op))
            if not row.get("keep", True) or not row.get("messages"):
                out.dropped += 1
                continue
            key = str(row.get("key") or row["uid"])
            if key in seen:
                continue
            seen.add(key)
            out.samples.extend(_row_samples(row, key))
    return out


def _row_events(
    row: dict[str, Any],
    steps: list[dict[str, Any]],
    score_cols: list[str],
    owner: dict[str, str],
    last_op: str,
) -> list[LineageEvent]:
    key = str(row.get("key") or row["uid"])
    src = row.get("source")
    events: list[LineageEvent] = [
        LineageEvent(sample_id=key, op="ingest", params={"source": src} if src else {})
    ]
    kept = bool(row.get("keep", True))
    by = row.get("dropped_by")
    if not kept and (by == "source" or (by is None and not steps)):
        events.append(LineageEvent(sample_id=key, op="source", reason=row.get("reason"), dropped=True))
        return events
    for step in steps:
        op = step["op"]
        scores = {
            c: _scalar(row.get(c))
            for c in score_cols
            if (owner.get(c) == op or (c not in owner and op == last_op)) and _scalar(row.get(c)) is not None
        }
        dropped = not kept and by == op
        events.append(
            LineageEvent(
                sample_id=key,
                op=op,
                reason=row.get("reason") if dropped else None,
                dropped=dropped,
                params=step["params"],
                scores=scores,
            )
        )
        if dropped:
            break
    return events


def _row_samples(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    src = str(row.get("source") or "")
    file_part = src.split("#row=", 1)[0]
    base_dir = Path(file_part).parent if file_part and not has_protocol(file_part) else Path.cwd()
    meta = json.loads(row.get("meta") or "{}")
    meta = meta if isinstance(meta, dict) else {}
    paths = json.loads(row.get("image_paths") or "[]")
    images = [_abs_image(p, base_dir) for p in paths]
    body: dict[str, Any] = {k: v for k, v in meta.items() if k not in ("id", "images", "messages")}
    body.update(id=key, images=images, messages=json.loads(row["messages"]))
    out = [body]
    cot = row.get("messages_cot")
    if cot:
        out.append({**body, "id": key + COT_SUFFIX, "messages": json.loads(cot), "cot_of": key})
    return out


def input_fingerprint(paths: list[Path]) -> str:
    """sha256 of the input files (for the version message when none is given)."""
    return ",".join(file_sha256(p)[:12] for p in paths if p.is_file())

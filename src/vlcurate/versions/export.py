"""Export a version in a trainer format (LLaVA, ShareGPT, OpenAI, HF Parquet) or as raw JSONL.

The trainer formats go through `io.instruct.writer.InstructWriter`, images copied in (or embedded for
`hf`). The export is assembled in a staging folder beside OUT and renamed into place when complete,
so OUT never holds half an export; OUT/version.json says which version it is.

An image the version refers to that is gone is *missing data*: by default the export stops and names
the samples (`missing="error"`); `missing="skip"` leaves those samples out and lists them in
OUT/missing.jsonl; `missing="keep-ref"` writes the reference as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcurate.base.atomic import atomic_open, fsync_dir, write_json_atomic
from vlcurate.io.instruct.formats import FORMATS, SampleError, parse_record
from vlcurate.io.instruct.model import IMAGE_TOKEN, InstructSample
from vlcurate.io.instruct.writer import InstructWriter
from vlcurate.io.paths import has_protocol
from vlcurate.versions.errors import MissingDataError, VersionError

if TYPE_CHECKING:
    from vlcurate.versions.store import VersionStore

EXPORT_FORMATS: tuple[str, ...] = (*FORMATS, "jsonl")
MISSING_MODES = ("error", "skip", "keep-ref")


def to_instruct(sample: dict[str, Any], where: str) -> InstructSample:
    """A stored sample as an `InstructSample`: conversations/messages as they are, or a
    question/answer pair made into a two-turn conversation."""
    rec = dict(sample)
    if "messages" not in rec and "conversations" not in rec:
        if "question" in rec and "answer" in rec:
            images = rec.get("images", rec.get("image"))
            has_image = bool(images)
            q = str(rec.pop("question"))
            rec["conversations"] = [
                {
                    "from": "human",
                    "value": (f"{IMAGE_TOKEN}\n{q}" if has_image and IMAGE_TOKEN not in q else q),
                },
                {"from": "gpt", "value": str(rec.pop("answer"))},
            ]
        else:
            raise VersionError(
                f"{where}: no conversation (messages, conversations or question/answer) to export"
            )
    try:
        return parse_record(rec, source=where, fmt="auto")
    except SampleError as exc:
        raise VersionError(str(exc)) from None


def _resolve(path: str, image_root: Path | None) -> str:
    if has_protocol(path) or path.startswith("/"):
        return path
    return str((image_root or Path.cwd()) / path)


def _read_images(sample: InstructSample, image_root: Path | None) -> tuple[list[bytes | None], str | None]:
    out: list[bytes | None] = []
    for i, img in enumerate(sample.images):
        if img.data is not None:
            out.append(img.data)
            continue
        if not img.path:
            out.append(None)
            continue
        ref = _resolve(img.path, image_root)
        if ref.lower().startswith(("http://", "https://")):
            out.append(None)  # a URL stays a URL
            continue
        try:
            out.append(Path(ref.removeprefix("file://")).read_bytes())
        except OSError:
            return out, f"image {i} ({img.path}) is missing"
    return out, None


def export_version(
    store: VersionStore,
    vid: str,
    fmt: str,
    out: Path,
    *,
    missing: str = "error",
    image_root: Path | None = None,
) -> dict[str, Any]:
    """Write version `vid` to `out` in `fmt`; returns what was written (counts, paths)."""
    if fmt not in EXPORT_FORMATS:
        raise VersionError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if missing not in MISSING_MODES:
        raise VersionError(
            f"unknown missing-data mode {missing!r}; expected one of {', '.join(MISSING_MODES)}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VersionError(f"{out} already exists and is not empty; export into a new folder")
    info = store.get(vid)
    table = store.read_samples(vid)  # checks the manifest and packs against their hashes
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    skipped: list[dict[str, str]] = []
    written = 0
    try:
        if fmt == "jsonl":
            with atomic_open(stage / "samples.jsonl") as fh:
                for batch in table.to_batches(max_chunksize=10_000):
                    for text in batch.column("sample").to_pylist():
                        fh.write(text + "\n")
                        written += 1
            data_path = stage / "samples.jsonl"
        else:
            writer = InstructWriter(stage, fmt, name="data")
            for batch in table.to_batches(max_chunksize=2_000):
                for sid, text in zip(
                    batch.column("id").to_pylist(), batch.column("sample").to_pylist(), strict=True
                ):
                    sample = to_instruct(json.loads(text), f"version {vid[:12]} sample {sid!r}")
                    images, problem = _read_images(sample, image_root)
                    if problem is not None:
                        if missing == "error":
                            raise MissingDataError(
                                f"version {vid[:12]} references deleted data: sample {sid!r}: {problem}; "
                                "nothing was exported (use --missing skip to leave such samples out)"
                            )
                        if missing == "skip":
                            skipped.append({"id": sid, "problem": problem})
                            continue
                        images = (images + [None] * len(sample.images))[: len(sample.images)]
                    writer.add(sample, images)
                    written += 1
            data_path = writer.close()
        if skipped:
            with atomic_open(stage / "missing.jsonl") as fh:
                for row in skipped:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary = {
            "version": vid,
            "message": info.message,
            "format": fmt,
            "samples": written,
            "skipped_missing": len(skipped),
            "store": str(store.root),
        }
        write_json_atomic(stage / "version.json", summary)
        if out.exists():
            out.rmdir()
        os.rename(stage, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {**summary, "path": str(out / data_path.relative_to(stage))}

"""Fingerprints of what made a recipe's outputs: input shards (path, size, mtime), models and files.

Cheap by design: nothing is read or loaded, only listed and stat'ed, so a re-run can tell what
changed before it runs anything. A model is its registry entry plus the files its weights live in
(a local folder or checkpoint, or the Hugging Face cache's snapshot of its repo).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs


def digest(value: Any) -> str:
    """A stable hex digest of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def file_identity(ref: str | Path) -> dict[str, Any]:
    """Path, size and modification time of a local file or fsspec URL (`missing` when absent)."""
    ref = str(ref)
    try:
        fs, path = url_to_fs(ref.split("#", 1)[0])
        info = fs.info(path)
    except (OSError, ValueError):
        return {"path": ref, "missing": True}
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    return {
        "path": ref,
        "size": info.get("size"),
        "mtime": str(mtime) if mtime is not None else None,
        "etag": info.get("ETag") or info.get("etag"),
    }


def folder_identity(path: str | Path) -> list[dict[str, Any]]:
    """`file_identity` of every file directly in a local folder (an open_clip or transformers model)."""
    p = Path(path)
    if not p.is_dir():
        return [file_identity(p)]
    return [file_identity(f) for f in sorted(p.iterdir()) if f.is_file()]


def _hub_snapshot(repo: str) -> str | None:
    """The snapshot of `repo` in the Hugging Face cache (what offline loading would use), if any."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - comes with open_clip
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip()
    except OSError:
        return None


def model_identity(name: str) -> dict[str, Any]:
    """The registry entry of a scorer name and the files its weights come from."""
    from vlcurate.models.registry import UnknownModelError, resolve

    try:
        spec = resolve(name)
    except UnknownModelError:
        return {"name": name, "unknown": True}
    ident: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    oc = spec.open_clip_name
    if oc.startswith("local-dir:"):
        ident["files"] = folder_identity(oc.removeprefix("local-dir:"))
    elif oc.startswith("hf-clip:") and spec.hf_repo is None:
        ident["files"] = folder_identity(oc.removeprefix("hf-clip:"))
    if spec.pretrained and ("/" in spec.pretrained or spec.pretrained.endswith((".pt", ".bin"))):
        ident["checkpoint"] = file_identity(spec.pretrained)
    if spec.hf_repo:
        ident["snapshot"] = _hub_snapshot(spec.hf_repo)
    return ident


def shard_identity(source: Any, shard: Any) -> dict[str, Any]:
    """An input shard as a fingerprint sees it: its reference and the files it reads (stat only)."""
    is_ref = dataclasses.is_dataclass(shard) and not isinstance(shard, type)
    ref = dataclasses.asdict(shard) if is_ref else {"repr": repr(shard)}
    plan = getattr(source, "plan", None)
    files = plan.get(shard.name) if isinstance(plan, dict) else None
    if isinstance(files, list) and files and all(isinstance(f, str) for f in files):
        return {"shard": ref, "files": [file_identity(f) for f in files]}
    return {"shard": ref, "file": file_identity(shard.url)}

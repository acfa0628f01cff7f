"""Image folders with caption sidecars: `photo.jpg` + `photo.txt` or `photo.caption` (+ optional
`photo.json` with a uid, and a `caption`/`text` field used when there is no text sidecar).

A shard is one directory (the images directly inside it), cut into ranges of `rows_per_shard`
images (`DIR-rFIRST-STOP`) when it holds more, or, with `files_per_shard`, a fixed chunk of the
sorted recursive listing. The listing is sorted, so shard names are stable while the folder's
content is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fsspec.core import url_to_fs

from vlcurate.base.records import Sample, Status
from vlcurate.io.fields import IMAGE_EXTS, JSON_TEXT_KEYS, META_KEYS, decode_text, ext_of, make_sample
from vlcurate.io.paths import has_protocol, safe_name
from vlcurate.io.shards import DEFAULT_ROWS_PER_SHARD, ShardReadError, ShardRef, range_name


def is_image_file(url: str) -> bool:
    """Whether a file name has an image extension we read."""
    return ext_of(url) in IMAGE_EXTS


def _stem(url: str) -> str:
    return url.rsplit(".", 1)[0]


def plan_folder(
    root: str, files_per_shard: int | None, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
) -> tuple[list[ShardRef], dict[str, list[str]]]:
    """Shards of an image folder and the image files (fs paths) of each, by shard name."""
    fs, root_path = url_to_fs(root)
    root_path = root_path.rstrip("/")
    images = sorted(str(p) for p in fs.find(root_path) if is_image_file(str(p)))
    root_base = safe_name(root_path.rsplit("/", 1)[-1])
    plan: dict[str, list[str]] = {}
    refs: list[ShardRef] = []
    if files_per_shard:
        for n, start in enumerate(range(0, len(images), files_per_shard)):
            name = f"{root_base}-{n:05d}"
            plan[name] = images[start : start + files_per_shard]
            refs.append(ShardRef(root, name, "folder"))
        return refs, plan
    by_dir: dict[str, list[str]] = {}
    for p in images:
        by_dir.setdefault(p.rsplit("/", 1)[0], []).append(p)
    for d in sorted(by_dir):
        rel = d[len(root_path) :].strip("/")
        name = safe_name(f"{root_base}_{rel}") if rel else root_base
        url = str(fs.unstrip_protocol(d)) if has_protocol(root) else d
        files = by_dir[d]
        if len(files) <= rows_per_shard:
            plan[name] = files
            refs.append(ShardRef(url, name, "folder"))
            continue
        for first in range(0, len(files), rows_per_shard):
            stop = min(first + rows_per_shard, len(files))
            part = range_name(name, first, stop)
            plan[part] = files[first:stop]
            refs.append(ShardRef(url, part, "folder"))
    return refs, plan


def iter_folder_samples(shard: ShardRef, files: list[str] | None, root: str) -> Iterator[Sample]:
    """Samples of one folder shard: `files` from the plan, or the images directly in `shard.url`."""
    fs, dir_path = url_to_fs(shard.url)
    root_path = url_to_fs(root)[1].rstrip("/")
    if files is None:
        if not fs.isdir(dir_path):
            raise ShardReadError(f"shard not found: {shard.url}")
        paths = sorted(str(p) for p in fs.ls(dir_path, detail=False) if is_image_file(str(p)))
    else:
        paths = [str(fs._strip_protocol(f)) for f in files]
    listed_dir, present = "", set()
    for path in paths:
        folder = path.rsplit("/", 1)[0]
        if folder != listed_dir:
            present = {str(p) for p in fs.ls(folder, detail=False)} if fs.isdir(folder) else set()
            listed_dir = folder
        shown = str(fs.unstrip_protocol(path)) if has_protocol(shard.url) else path
        yield _read_one(fs, path, shown, present, root_path)


def _read_one(fs: Any, path: str, shown: str, present: set[str], root: str) -> Sample:
    """One image and its sidecars; an unreadable image gives a READ_ERROR sample, not an exception."""
    stem_path = _stem(path)
    rel = path[len(root) :].lstrip("/") if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
    key = _stem(rel)
    meta: dict[str, Any] = {"path": shown}
    text: str | None = None
    raw_uid: object = None
    try:
        side = next((stem_path + e for e in (".txt", ".caption") if stem_path + e in present), None)
        if side is not None:
            text, warning = decode_text(fs.cat_file(side))
            if warning:
                meta["text_warning"] = warning
        if stem_path + ".json" in present:
            try:
                doc = json.loads(fs.cat_file(stem_path + ".json"))
            except ValueError as exc:
                meta["json_warning"] = f"unreadable json sidecar: {exc}"
            else:
                if isinstance(doc, dict):
                    raw_uid = doc.get("uid")
                    meta["json"] = doc
                    meta.update({k: doc[k] for k in META_KEYS if doc.get(k) is not None})
                    if text is None:
                        text = next((doc[k] for k in JSON_TEXT_KEYS if isinstance(doc.get(k), str)), None)
        image = fs.cat_file(path)
    except OSError as exc:
        sample = make_sample(key=key, text=text, image_ref=shown, raw_uid=raw_uid, meta=meta, source=shown)
        sample.status, sample.error = Status.READ_ERROR, f"cannot read {shown}: {exc}"
        return sample
    return make_sample(
        key=key, text=text, image=image, image_ext=ext_of(path), raw_uid=raw_uid, meta=meta, source=shown
    )

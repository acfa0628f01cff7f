"""COCO captions JSON (`images` + `annotations`) as pairs: one per caption, or the first only.

The file is parsed once per process (cached by path, size and modification time) and its images
are the rows that `rows_per_shard` cuts. Caption `I` of an image is its I-th annotation in file
order; its uid is derived from the image's `file_name` as written, the index and the caption, so
it is stable across runs and machines. Images are looked for under `image_root`, by default the
folder named after the split beside `annotations/` (`annotations/captions_val2017.json` ->
`val2017/`); when that folder is not there, an image's `coco_url` is used.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from vlcurate.base.records import Sample
from vlcurate.io.fields import caption_choices, ext_of, make_sample
from vlcurate.io.parquet_reader import resolve_ref
from vlcurate.io.shards import ShardReadError, ShardRef


@dataclass(frozen=True)
class CocoCaptions:
    """The images of a COCO captions file and each image's (annotation id, caption) list."""

    images: list[dict[str, Any]]
    captions: dict[Any, list[tuple[Any, str]]]


def load_json_object(url: str) -> CocoCaptions:
    """Parse (or reuse) a COCO captions file; raise ShardReadError for any other JSON object."""
    fs, path = url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ShardReadError(f"shard not found: {url}") from None
    return _load(url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or ""))


@functools.lru_cache(maxsize=2)
def _load(url: str, size: object, mtime: str) -> CocoCaptions:
    fs, path = url_to_fs(url)
    try:
        doc = json.loads(fs.cat_file(path))
    except ValueError as exc:
        raise ShardReadError(f"{url}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        found = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
        raise ShardReadError(
            f"{url}: a JSON object must be COCO captions (`images` + `annotations`); found keys "
            f"{found}. Give a JSON array of records or JSONL for anything else"
        )
    captions: dict[Any, list[tuple[Any, str]]] = {}
    for ann in doc.get("annotations") or []:
        if isinstance(ann, dict) and "image_id" in ann:
            captions.setdefault(ann["image_id"], []).append((ann.get("id"), str(ann.get("caption") or "")))
    images = [im for im in doc["images"] if isinstance(im, dict)]
    return CocoCaptions(images, captions)


def default_image_root(url: str) -> str | None:
    """`…/val2017` for `…/annotations/captions_val2017.json`, when that folder exists."""
    parent, _, name = url.rpartition("/")
    folder, _, last = parent.rpartition("/")
    split = name.rsplit(".", 1)[0].split("_", 1)[-1]
    if last != "annotations" or not split:
        return None
    fs, path = url_to_fs(f"{folder}/{split}")
    return f"{folder}/{split}" if fs.isdir(path) else None


def iter_coco_samples(
    shard: ShardRef, stem: str, *, captions: str = "all", image_root: str | None = None
) -> Iterator[Sample]:
    """The pairs of one shard (a range of the file's images, or all of them)."""
    coco = load_json_object(shard.url)
    root = image_root or default_image_root(shard.url)
    base = root.rstrip("/") + "/_" if root else shard.url
    first, stop = (shard.rows.first, shard.rows.stop) if shard.rows else (0, len(coco.images))
    for n in range(first, min(stop, len(coco.images))):
        im = coco.images[n]
        file_name = str(im.get("file_name") or "")
        ref = resolve_ref(file_name, base) if file_name and (root or not im.get("coco_url")) else None
        ref = ref or im.get("coco_url") or None
        anns = coco.captions.get(im.get("id"), [])
        ann_ids = [a for a, _ in anns]
        meta: dict[str, Any] = {"shard": shard.url, "row": n, "image_id": im.get("id")}
        for k in ("width", "height", "coco_url"):
            if im.get(k) is not None:
                meta[k] = im[k]
        key = file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0] or f"{stem}_{n:08d}"
        for index, text in caption_choices([c for _, c in anns], captions):
            where = f"{shard.url}#row={n}"
            if index is not None:
                meta = {**meta, "annotation_id": ann_ids[index]}
                where = f"{shard.url}#annotation={ann_ids[index]}"
            yield make_sample(
                key=key,
                text=text,
                image_ref=ref,
                uid_ref=file_name or ref,
                image_ext=ext_of(file_name) or None,
                meta=meta,
                fallback_ref=f"{shard.url}#{n}",
                missing_image_detail="no file_name or coco_url for this image",
                source=where,
                caption_index=index,
            )

"""The one entry point for reading input: `open_source(spec)` -> a Source of shards and samples.

It detects the input kind (WebDataset tars, img2dataset output, Parquet, an image folder with
caption sidecars, a CSV/TSV/JSONL/JSON or COCO captions manifest), plans shards with stable names
(a big single file or folder is cut into row ranges of `rows_per_shard`), and streams `Sample`s
shard by shard. Readers never load a whole dataset; a broken container raises `ShardReadError`
after yielding what it could. Duplicate uids are kept as they come (both samples are yielded);
deduplication by uid is the scorer's job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vlcurate.base.records import Sample
from vlcurate.io.fields import CAPTION_MODES
from vlcurate.io.folder_reader import is_image_file, iter_folder_samples, plan_folder
from vlcurate.io.instruct.reader import INSTRUCT_OPTIONS, open_instruct
from vlcurate.io.manifest_reader import iter_manifest_samples
from vlcurate.io.parquet_reader import iter_parquet_samples
from vlcurate.io.paths import expand_spec, has_protocol, is_dir, kind_of_file, list_files, shard_names
from vlcurate.io.rows import plan_file
from vlcurate.io.shards import DEFAULT_ROWS_PER_SHARD, SHARD_KINDS, ShardReadError, ShardRef
from vlcurate.io.wds_reader import WdsOptions, WdsShardReader, iter_wds_samples, wds_options

__all__ = ["ShardReadError", "ShardRef", "Source", "open_source"]

_COLUMNS = ("image_column", "url_column", "text_column", "uid_column", "key_column")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "wds": ("label_template", "label_map"),
    "parquet": (*_COLUMNS, "batch_size", "captions", "image_root", "rows_per_shard"),
    "folder": ("files_per_shard", "rows_per_shard"),
    "manifest": (*_COLUMNS, "captions", "image_root", "rows_per_shard"),
    "instruct": (*INSTRUCT_OPTIONS, "rows_per_shard"),
    "scores": ("score_column", "rows_per_shard"),
}


class Source(Protocol):
    """Shards of one input and the samples of each; shards can be read in any order or in parallel."""

    def shards(self) -> list[ShardRef]: ...

    def iter_samples(self, shard: ShardRef) -> Iterator[Sample]: ...


@dataclass
class FileSource:
    """Shards of files of one kind (tars, parquet files or manifests, or row ranges of those)
    with reader options."""

    refs: list[ShardRef]
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    wds: WdsOptions | None = None

    def shards(self) -> list[ShardRef]:
        return list(self.refs)

    def wds_reader(self, shard: ShardRef) -> WdsShardReader:
        """How this source turns the member groups of one tar into samples (its label options and
        the img2dataset parquet beside the tar): for readers that walk the tar themselves."""
        return WdsShardReader(shard.url, self.wds)

    def iter_samples(self, shard: ShardRef) -> Iterator[Sample]:
        if shard.kind == "wds":
            return iter_wds_samples(shard.url, self.wds)
        if shard.kind == "parquet":
            return iter_parquet_samples(shard, **self.options)
        if shard.kind == "manifest":
            return iter_manifest_samples(shard, **self.options)
        raise ValueError(f"a {self.kind} source cannot read a {shard.kind!r} shard")


@dataclass
class FolderSource:
    """An image folder with `.txt` sidecars, one shard per directory or per `files_per_shard` files."""

    root: str
    refs: list[ShardRef]
    plan: dict[str, list[str]]

    def shards(self) -> list[ShardRef]:
        return list(self.refs)

    def iter_samples(self, shard: ShardRef) -> Iterator[Sample]:
        return iter_folder_samples(shard, self.plan.get(shard.name), self.root)


def _detect(urls: list[str]) -> tuple[str, list[str]]:
    """The input kind and its shard files; a single folder is looked into."""
    if len(urls) == 1 and is_dir(urls[0]):
        files = list_files(urls[0])
        by_kind: dict[str, list[str]] = {}
        for f in files:
            k = kind_of_file(f) or ("folder" if is_image_file(f) else None)
            if k:
                by_kind.setdefault(k, []).append(f)
        # A file named like `_plan.json` or `NNNN_stats.json` is bookkeeping, not a manifest.
        by_kind["manifest"] = [f for f in by_kind.get("manifest", []) if not _bookkeeping(f)]
        for k in ("wds", "parquet", "folder", "manifest"):  # img2dataset output has tars + parquets
            if by_kind.get(k):
                return k, [urls[0]] if k == "folder" else by_kind[k]
        raise ValueError(
            f"no input found in folder {urls[0]}: expected .tar shards, .parquet files, images with "
            f".txt captions, or a .csv/.tsv/.jsonl/.json manifest"
        )
    kinds = {kind_of_file(u) for u in urls}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop(), urls  # type: ignore[return-value]
    unknown = [u for u in urls if kind_of_file(u) is None]
    if unknown:
        raise ValueError(
            f"cannot tell the input kind of {unknown[0]!r} (expected .tar, .parquet, .csv, .tsv, .jsonl, "
            f".json or a folder); pass kind=..."
        )
    raise ValueError(f"input mixes kinds {sorted(k for k in kinds if k)}; give one kind at a time")


def _bookkeeping(url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    return name.startswith(("_", ".")) or name.endswith("_stats.json")


def _rows_per_shard(options: dict[str, Any]) -> int:
    value = options.pop("rows_per_shard", None)
    rows = DEFAULT_ROWS_PER_SHARD if value is None else int(value)
    if rows <= 0:
        raise ValueError(f"rows_per_shard must be positive, got {value}")
    return rows


def open_source(spec: str | Sequence[str], *, kind: str | None = None, **options: Any) -> Source:
    """Open any supported input.

    `spec`: a path or fsspec URL of a file or folder, a glob, a brace pattern
    (`shards/{00000000..00000099}.tar`), or a list of those. `kind` forces the input kind
    ('wds', 'parquet', 'folder', 'manifest', 'instruct'). Options (None means "not given"):
    - parquet and manifest: `image_column` (image bytes, or a path/URL), `url_column` (the image's
      URL, used where the image column is empty), `text_column` (a caption, or a list of captions),
      `uid_column`, `key_column`, `captions` ('all': one pair per caption of a caption list,
      'first': the first only), `image_root` (base folder of relative image paths; default the
      file's folder, for COCO the split folder beside `annotations/`), parquet `batch_size`;
    - parquet, manifest and folder: `rows_per_shard` (default 10,000): a file or folder with more
      rows or images is cut into row-range shards named `STEM-rFIRST-STOP`; folder
      `files_per_shard` cuts the recursive listing into chunks `NAME-00000`, ... instead;
    - wds: `label_template` (e.g. "a photo of a {label}."; `{cls}` is the label as written) and
      `label_map` (a JSON list/object or a text file of names, one a line) turn `.cls` labels into
      captions;
    - instruct (LLaVA / ShareGPT / OpenAI JSON or JSONL, HF Parquet: see `io.instruct_reader`):
      `format`, `image_root`, `samples_per_shard` (or `rows_per_shard`);
    - scores (score tables, a `vlcurate score` run or DataComp metadata, see `io.score_tables`):
      `score_column`, `rows_per_shard`.
    Raises ValueError for an empty spec, a pattern matching nothing, a missing path, an unknown
    kind or an option the kind does not take.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "scores":
        return _open_scores(spec, options)
    urls = expand_spec(spec)
    if kind is not None and kind not in SHARD_KINDS:
        raise ValueError(f"unknown input kind {kind!r}; expected one of {', '.join(SHARD_KINDS)}")
    if kind == "instruct":
        return _open_instruct(urls, options)
    if kind is None:
        kind, files = _detect(urls)
    elif len(urls) == 1 and kind != "folder" and is_dir(urls[0]):
        files = [f for f in list_files(urls[0]) if kind_of_file(f) == kind and not _bookkeeping(f)]
        if not files:
            raise ValueError(f"no {kind} files found in folder {urls[0]}")
    else:
        files = urls
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        allowed = ", ".join(_OPTIONS[kind]) or "none"
        raise ValueError(f"unknown option(s) for {kind} input: {', '.join(unknown)} (allowed: {allowed})")
    if options.get("captions", "all") not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {options['captions']!r}")
    rows = _rows_per_shard(options)
    if kind == "folder":
        if len(files) != 1 or not is_dir(files[0]):
            raise ValueError("an image-folder input must be a single folder")
        fps = options.get("files_per_shard")
        if fps is not None and int(fps) <= 0:
            raise ValueError(f"files_per_shard must be positive, got {fps}")
        refs, plan = plan_folder(files[0], int(fps) if fps else None, rows)
        if not refs:
            raise ValueError(f"no images found in folder {files[0]}")
        return FolderSource(files[0], refs, plan)
    if kind == "wds":
        wds = wds_options(options.pop("label_template", None), options.pop("label_map", None))
        refs = [ShardRef(u, n, kind) for u, n in zip(files, shard_names(files), strict=True)]
        return FileSource(refs, kind, {}, wds)
    if "image_root" in options and not has_protocol(str(options["image_root"])):
        options["image_root"] = os.path.abspath(str(options["image_root"]))
    refs = [
        ref
        for u, n in zip(files, shard_names(files), strict=True)
        for ref in (plan_file(u, n, kind, rows) if _plannable(u, len(files)) else [ShardRef(u, n, kind)])
    ]
    return FileSource(refs, kind, dict(options))


def _plannable(url: str, n_files: int) -> bool:
    """Whether to look into a file to cut it into row ranges: always for a local file or a single
    input file; not for each of many remote files (that would read them all before starting)."""
    return n_files == 1 or not has_protocol(url) or url.startswith(("file://", "memory://"))


def _open_scores(spec: str | Sequence[str], options: dict[str, Any]) -> Source:
    from vlcurate.io.score_tables import open_score_tables

    unknown = sorted(set(options) - set(_OPTIONS["scores"]))
    if unknown:
        allowed = ", ".join(_OPTIONS["scores"])
        raise ValueError(f"unknown option(s) for scores input: {', '.join(unknown)} (allowed: {allowed})")
    return open_score_tables(spec, **options)


_INSTRUCT_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")


def _open_instruct(urls: list[str], options: dict[str, Any]) -> Source:
    """Instruction data files (a folder: its .json, .jsonl and .parquet files)."""
    if "rows_per_shard" in options:
        options.setdefault("samples_per_shard", options.pop("rows_per_shard"))
        options.pop("rows_per_shard", None)
    unknown = sorted(set(options) - set(_OPTIONS["instruct"]))
    if unknown:
        raise ValueError(
            f"unknown option(s) for instruct input: {', '.join(unknown)} "
            f"(allowed: {', '.join(INSTRUCT_OPTIONS)})"
        )
    files: list[str] = []
    for u in urls:
        if is_dir(u):
            files += [f for f in list_files(u) if f.lower().endswith(_INSTRUCT_SUFFIXES)]
        else:
            files.append(u)
    if not files:
        raise ValueError(f"no instruction files (.json, .jsonl, .parquet) found in {', '.join(urls)}")
    return open_instruct(files, **options)

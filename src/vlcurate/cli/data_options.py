"""The options every command that reads data shares: `@data_options` adds them in one line.

A command decorated with `@data_options` declares a `source_options: dict[str, Any]` parameter
instead of these flags; it receives the flags the user gave, ready for `open_source(spec,
**source_options)` (`kind` included). Flags left out are not passed, so each input kind's own
defaults apply and a flag the input kind does not take is an error naming the allowed ones.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


class Captions(str, Enum):
    """Which captions of an image's caption list become pairs."""

    all = "all"
    first = "first"


_PANEL = "Input"

# name -> (annotation, help)
DATA_OPTIONS: dict[str, tuple[Any, str]] = {
    "kind": (
        str | None,
        "Input kind when the file names do not say: wds, parquet, folder, manifest (CSV/TSV/JSONL/"
        "JSON/COCO captions) or instruct.",
    ),
    "image_column": (
        str | None,
        "Column with the image (bytes, path or URL); default: image, image_path, url, filepath, ...",
    ),
    "text_column": (
        str | None,
        "Column with the caption or a list of captions; default: text, caption, title, captions, ...",
    ),
    "url_column": (str | None, "Column with the image URL, used where the image column is empty."),
    "captions": (
        Captions | None,
        "all: one pair per caption of an image's caption list (COCO, `captions: [...]`); "
        "first: the first caption only (default: all).",
    ),
    "rows_per_shard": (
        int | None,
        "Cut a big file or folder into shards of this many rows, so a resume re-reads at most "
        "one (default: 10000).",
    ),
    "label_template": (
        str | None,
        "WebDataset .cls labels as captions: a template such as 'a photo of a {label}.'.",
    ),
    "label_map": (
        Path | None,
        "Names of the .cls labels: a JSON list or object, or a text file with one name a line.",
    ),
    "image_root": (
        Path | None,
        "Folder of the relative image paths in a table or manifest (default: the file's folder).",
    ),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parameter(name: str) -> inspect.Parameter:
    annotation, help_text = DATA_OPTIONS[name]
    extra: dict[str, Any] = {}
    if name == "rows_per_shard":
        extra["min"] = 1
    option = typer.Option(_flag(name), help=help_text, rich_help_panel=_PANEL, **extra)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, option]
    )


def source_options_from(values: dict[str, Any]) -> dict[str, Any]:
    """The options given (None: not given), with paths as strings, for `open_source`."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Enum):
            value = value.value
        if value is not None:
            out[key] = str(value) if isinstance(value, Path) else value
    return out


def data_options(command: F) -> F:
    """Add `--kind`, `--image-column`, `--text-column`, `--url-column`, `--captions`,
    `--rows-per-shard`, `--label-template`, `--label-map` and `--image-root` to a typer command,
    which then gets them as its `source_options` argument."""
    sig = inspect.signature(command, eval_str=True)
    if "source_options" not in sig.parameters:
        raise TypeError(f"{command.__name__} needs a `source_options` parameter to use @data_options")
    clash = sorted(set(sig.parameters) & set(DATA_OPTIONS))
    if clash:
        raise TypeError(f"{command.__name__} already has parameter(s) {', '.join(clash)}")
    kept = [p for p in sig.parameters.values() if p.name != "source_options"]
    params = kept + [_parameter(name) for name in DATA_OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name, None) for name in DATA_OPTIONS}
        return command(*args, source_options=source_options_from(given), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    if sig.return_annotation is not inspect.Signature.empty:
        wrapper.__annotations__["return"] = sig.return_annotation
    return wrapper  # type: ignore[return-value]

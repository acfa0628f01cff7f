"""The output directory: a staging folder beside it, renamed into place when everything is written.

A run that fails leaves nothing behind and an existing result is replaced only with `overwrite`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from vlcurate.base.atomic import fsync_dir


class OutputDirError(ValueError):
    """The output folder cannot be used: a file in the way, or results there without `overwrite`."""


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse early: a file in the way, or a non-empty folder without `overwrite`."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputDirError(f"--out {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise OutputDirError(f"--out {out_dir} exists and is not empty; pass --overwrite to replace it")


def make_staging(out_dir: Path) -> Path:
    """A fresh hidden folder on the same filesystem as `out_dir` (so the final rename is atomic)."""
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def commit(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the staged outputs into place, replacing an old result only when allowed."""
    old: Path | None = None
    if out_dir.exists():
        if any(out_dir.iterdir()):
            if not overwrite:
                raise OutputDirError(
                    f"--out {out_dir} exists and is not empty; pass --overwrite to replace it"
                )
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            out_dir.rename(old)
        else:
            out_dir.rmdir()
    staging.rename(out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

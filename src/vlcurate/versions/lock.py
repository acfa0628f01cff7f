"""The store's writer lock: an advisory `flock` on `ROOT/lock`, so moving a ref and publishing a
version happen one writer at a time. The kernel drops the lock when its holder dies, so a killed
writer never leaves the store locked."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from vlcurate.versions.errors import StoreLockedError


@contextlib.contextmanager
def store_lock(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the lock at `path` for the block; `StoreLockedError` after `timeout_s` of waiting."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"{path.parent}: another writer held the version store's lock for {timeout_s:.0f}s; "
                        "try again when it finishes"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

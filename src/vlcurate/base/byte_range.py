"""A reference to bytes inside a local file, small enough to pickle to a decode worker.

Kept in its own module with no heavy imports, because decode workers unpickle it and should not
load pyarrow or fsspec to do so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TarRange:
    """Where one image's bytes lie in a local file: read by the decode worker, not the reader."""

    path: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The bytes; OSError when the file changed under the job (shorter than the range)."""
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), self.size, self.offset)
        if len(data) != self.size:
            raise OSError(f"{self.path}: {len(data)} of {self.size} bytes at offset {self.offset}")
        return data

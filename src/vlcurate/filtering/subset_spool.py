"""Kept uids to a DataComp subset file without holding them in memory.

The bounded mode appends each batch's kept uids as raw (high, low) uint64 pairs to a spool file,
then sorts the file in place through a memory map and writes the de-duplicated array as a `.npy`
with the same dtype ("u8,u8") and order as `io.subset.write_subset`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from vlcurate.io.subset import SUBSET_DTYPE

_LUT = np.zeros(256, dtype=np.uint64)
_LUT[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.uint64)
_LUT[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)
_CHUNK = 1 << 20


def uid_pairs(uids: pa.Array) -> np.ndarray:
    """Validated lower-case 32-hex uids -> structured (high, low) array, vectorised."""
    n = len(uids)
    out = np.empty(n, dtype=SUBSET_DTYPE)
    if n == 0:
        return out
    raw = np.array(uids.to_numpy(zero_copy_only=False), dtype="S32").view(np.uint8).reshape(n, 32)
    nib = _LUT[raw]
    out["f0"] = (nib[:, :16] << _SHIFTS).sum(axis=1, dtype=np.uint64)
    out["f1"] = (nib[:, 16:] << _SHIFTS).sum(axis=1, dtype=np.uint64)
    return out


class PairSpool:
    """Append-only spool of uid pairs on disk, finished into a sorted unique subset file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()

    def append(self, pairs: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(pairs).tobytes())
        self.count += len(pairs)

    def finish(self, out_path: Path) -> int:
        """Write the subset file (sorted, unique) and return its length."""
        self._fh.close()
        tmp = out_path.with_name(out_path.name + ".tmp.npy")
        if self.count == 0:
            np.save(tmp, np.empty(0, dtype=SUBSET_DTYPE))
            tmp.replace(out_path)
            self.path.unlink(missing_ok=True)
            return 0
        mm = np.memmap(self.path, dtype=SUBSET_DTYPE, mode="r+", shape=(self.count,))
        mm.sort(kind="quicksort")  # in place on the mapped file, lexicographic on (f0, f1)
        keep_n = 0
        prev = None
        for start in range(0, self.count, _CHUNK):
            chunk = mm[start : start + _CHUNK]
            new = _first_of_runs(chunk, prev)
            keep_n += int(new.sum())
            prev = chunk[-1].copy()
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=SUBSET_DTYPE, shape=(keep_n,))
        pos = 0
        prev = None
        for start in range(0, self.count, _CHUNK):
            chunk = mm[start : start + _CHUNK]
            new = _first_of_runs(chunk, prev)
            sel = chunk[new]
            out[pos : pos + len(sel)] = sel
            pos += len(sel)
            prev = chunk[-1].copy()
        out.flush()
        del out, mm
        tmp.replace(out_path)
        self.path.unlink(missing_ok=True)
        return keep_n

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


def _first_of_runs(chunk: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    """Mask of the rows of a sorted chunk that differ from the row before (the previous chunk's last)."""
    new = np.ones(len(chunk), dtype=bool)
    new[1:] = chunk[1:] != chunk[:-1]
    if prev is not None and len(chunk):
        new[0] = chunk[0] != prev
    return new

"""DataComp subset files: a sorted NumPy array of dtype "u8,u8" (uid high and low 64 bits).

This is the format DataComp's resharder and Apple's released DFN index files use. `PairSpool` writes
one from any number of uids in bounded memory (spooled to disk, sorted through a memory map).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.base.atomic import commit_file, temp_path, write_with
from vlcurate.base.records import is_datacomp_uid, pair_to_uid, uid_to_pair

SUBSET_DTYPE = np.dtype("u8,u8")


def uids_to_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted, de-duplicated structured array of uids in DataComp's layout."""
    uid_list = list(uids)
    bad = [u for u in uid_list if not is_datacomp_uid(u)]
    if bad:
        raise ValueError(f"{len(bad)} uids are not 32 lowercase hex digits, e.g. {bad[0]!r}")
    arr = np.empty(len(uid_list), dtype=SUBSET_DTYPE)
    if uid_list:
        arr["f0"] = np.fromiter((int(u[:16], 16) for u in uid_list), dtype=np.uint64, count=len(uid_list))
        arr["f1"] = np.fromiter((int(u[16:], 16) for u in uid_list), dtype=np.uint64, count=len(uid_list))
    arr = np.unique(arr)  # sorts lexicographically on (f0, f1) and removes duplicates
    return arr


def write_subset(path: str | Path, uids: Iterable[str]) -> np.ndarray:
    """Write a DataComp subset file and return the array written."""
    arr = uids_to_array(uids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: np.save(tmp, arr), suffix=".npy")
    return arr


def read_subset(path: str | Path) -> np.ndarray:
    """Read a subset file (ours, DataComp's or Apple's DFN index), checking its dtype and order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"subset file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for bad headers
        raise ValueError(f"{path} is not a NumPy .npy file: {exc}") from exc
    if (
        arr.dtype.names is None
        or len(arr.dtype.names) != 2
        or any(arr.dtype[n] != np.uint64 for n in arr.dtype.names)
    ):
        raise ValueError(f"{path} has dtype {arr.dtype}; a DataComp subset needs dtype 'u8,u8'")
    arr = np.asarray(arr).view(SUBSET_DTYPE)
    if len(arr) > 1 and not is_sorted(arr):
        arr = np.sort(arr)
    return arr


def is_sorted(arr: np.ndarray) -> bool:
    """Lexicographic (high, low) order; NumPy 2 has no comparison operators for structured arrays."""
    hi, lo = arr["f0"], arr["f1"]
    return bool(np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))))


def subset_contains(subset: np.ndarray, uids: list[str]) -> np.ndarray:
    """Boolean mask: which of `uids` are in the sorted subset (np.searchsorted, as DataComp does)."""
    if not uids:
        return np.zeros(0, dtype=bool)
    q = uids_to_array_unsorted(uids)
    idx = np.searchsorted(subset, q)
    idx_clipped = np.minimum(idx, max(len(subset) - 1, 0))
    if len(subset) == 0:
        return np.zeros(len(uids), dtype=bool)
    return np.asarray(subset[idx_clipped] == q) & (idx < len(subset))


def uids_to_array_unsorted(uids: list[str]) -> np.ndarray:
    """Structured uid array in input order (for look-ups); non-uid strings map to (0, 0)."""
    arr = np.zeros(len(uids), dtype=SUBSET_DTYPE)
    for i, u in enumerate(uids):
        if is_datacomp_uid(u):
            arr[i] = uid_to_pair(u)
    return arr


def array_to_uids(arr: np.ndarray) -> list[str]:
    """The uids of a subset array as 32-hex strings."""
    return [pair_to_uid(int(a), int(b)) for a, b in zip(arr["f0"], arr["f1"], strict=True)]


_LUT = np.zeros(256, dtype=np.uint64)
_LUT[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.uint64)
_LUT[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)
_CHUNK = 1 << 20
_SLICE = 8192


def uid_pairs(uids: pa.Array) -> np.ndarray:
    """32-hex uids (an Arrow string array) -> structured (high, low) array in input order, vectorised.
    Raises ValueError naming the first value that is not 32 hex digits (case is ignored)."""
    n = len(uids)
    out = np.empty(n, dtype=SUBSET_DTYPE)
    if n == 0:
        return out
    low = pc.utf8_lower(uids.cast(pa.string()))
    ok = pc.fill_null(pc.match_substring_regex(low, "^[0-9a-f]{32}$"), False)
    if not pc.all(ok).as_py():
        bad = uids[int(np.flatnonzero(~np.asarray(ok.to_numpy(zero_copy_only=False)))[0])].as_py()
        raise ValueError(f"uid {bad!r} is not 32 hex digits; a DataComp subset needs 128-bit hex uids")
    # Every value is 32 bytes, so the string data is one contiguous n x 32 block: read it in place
    # (no Python strings) and convert it a slice at a time, so memory does not grow with n.
    arr = low.combine_chunks() if isinstance(low, pa.ChunkedArray) else low
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=arr.offset + n + 1, offset=0)
    start = int(offsets[arr.offset])
    raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8, count=32 * n, offset=start).reshape(n, 32)
    for a in range(0, n, _SLICE):
        nib = _LUT[raw[a : a + _SLICE]]
        out["f0"][a : a + _SLICE] = (nib[:, :16] << _SHIFTS).sum(axis=1, dtype=np.uint64)
        out["f1"][a : a + _SLICE] = (nib[:, 16:] << _SHIFTS).sum(axis=1, dtype=np.uint64)
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
        if self.count == 0:
            write_with(out_path, lambda t: np.save(t, np.empty(0, dtype=SUBSET_DTYPE)), suffix=".npy")
            self.path.unlink(missing_ok=True)
            return 0
        tmp = temp_path(out_path, ".npy")
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
        commit_file(tmp, out_path)
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

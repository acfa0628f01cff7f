"""DataComp subset files: a sorted NumPy array of dtype "u8,u8" (uid high and low 64 bits).

This is the format DataComp's resharder and Apple's released DFN index files use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vlcurate.records import is_datacomp_uid, pair_to_uid, uid_to_pair

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
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
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

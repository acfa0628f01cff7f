"""Exact dedup: planted copies are all found, distinct rows all kept, and the kept row is the one
that priority (then uid) names, whatever the input order."""

from __future__ import annotations

import numpy as np
import pytest

from vlcurate.dedup import content_hashes, exact_dedup, exact_dedup_bytes


def _planted(n: int = 2000, n_copies: int = 400, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """n distinct random blobs plus copies of some of them; returns contents and each row's source."""
    rng = np.random.default_rng(seed)
    blobs = [rng.bytes(int(rng.integers(1, 300))) for _ in range(n)]
    source = np.concatenate([np.arange(n), rng.choice(n, n_copies)])  # a blob may be copied twice
    return [blobs[s] for s in source], source


def test_planted_copies_are_found_and_distinct_rows_kept() -> None:
    contents, source = _planted()
    uids = [f"u{i:05d}" for i in range(len(contents))]
    result = exact_dedup_bytes(contents, uids)
    # One row kept per distinct blob: the smallest uid, i.e. the original (it comes first).
    assert result.n_kept == len(np.unique(source))
    assert result.keep[:2000].all()
    assert not result.keep[2000:].any()  # recall of planted copies = 1.0
    assert (result.representative[2000:] == source[2000:]).all()
    assert result.reasons[2000] == f"exact duplicate of u{source[2000]:05d}"
    assert result.reasons[0] == ""
    assert np.isnan(result.score[result.keep]).all()
    assert (result.score[~result.keep] == 0).all()


def test_priority_picks_the_representative_then_uid_breaks_ties() -> None:
    keys = np.array([7, 7, 7, 9, 9], dtype=np.int64)
    uids = ["c", "a", "b", "e", "d"]
    by_uid = exact_dedup(keys, uids)
    assert by_uid.representative_uids.tolist() == ["a", "a", "a", "d", "d"]
    by_quality = exact_dedup(keys, uids, priority=[0.9, 0.1, 0.9, 0.2, 0.1])
    assert by_quality.representative_uids.tolist() == ["b", "b", "b", "e", "e"]  # tie 0.9: "b" < "c"
    assert by_quality.keep.tolist() == [False, False, True, True, False]


def test_independent_of_input_order() -> None:
    contents, _ = _planted(500, 200, seed=1)
    uids = np.array([f"{i:04d}" for i in range(len(contents))])
    priority = np.random.default_rng(2).integers(0, 3, len(contents)).astype(float)  # many ties
    first = exact_dedup_bytes(contents, uids, priority)
    again = exact_dedup_bytes(contents, uids, priority)
    assert (first.keep == again.keep).all() and (first.representative == again.representative).all()
    perm = np.random.default_rng(3).permutation(len(contents))
    shuffled = exact_dedup_bytes([contents[i] for i in perm], uids[perm], priority[perm])
    assert (shuffled.keep == first.keep[perm]).all()
    assert (shuffled.representative_uids == first.representative_uids[perm]).all()
    assert shuffled.reasons == [first.reasons[i] for i in perm]


@pytest.mark.parametrize(
    "keys",
    [
        np.array([3, 1, 3, 2], dtype=np.uint64),
        ["ab12", "ff00", "ab12", "0000"],
        [b"\x01\x00", b"\x02", b"\x01\x00", b"\x01"],
        np.array([[1, 2], [0, 2], [1, 2], [2, 1]], dtype=np.uint8),
    ],
)
def test_precomputed_hash_keys(keys: object) -> None:
    result = exact_dedup(keys)  # type: ignore[arg-type]
    assert result.keep.tolist() == [True, True, False, True]
    assert result.reason(2) == "exact duplicate of 0"


def test_content_hashes_are_blake2b_rows() -> None:
    import hashlib

    digests = content_hashes([b"abc", memoryview(b"xyz"), bytearray(b"abc")], digest_size=8)
    assert digests.shape == (3, 8) and digests.dtype == np.uint8
    assert digests[0].tobytes() == hashlib.blake2b(b"abc", digest_size=8).digest()
    assert (digests[0] == digests[2]).all() and not (digests[0] == digests[1]).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: exact_dedup(np.array([], dtype=np.int64)), "empty input"),
        (lambda: exact_dedup_bytes([]), "empty input"),
        (lambda: exact_dedup(np.array([0.5, 0.5])), "integers, strings or bytes"),
        (lambda: exact_dedup(np.zeros((2, 2, 2), dtype=np.uint8)), "1-D"),
        (lambda: exact_dedup(np.zeros((2, 4), dtype=np.int32)), "uint8 digests"),
        (lambda: exact_dedup(np.array(["a", 1], dtype=object)), "all be str"),
        (lambda: exact_dedup([1, 2], uids=["a", "a"]), "unique"),
        (lambda: exact_dedup([1, 2], uids=["a"]), "one per row"),
        (lambda: exact_dedup([1, 2], uids=[0.5, 1.5]), "strings or integers"),  # type: ignore[arg-type]
        (lambda: exact_dedup([1, 2], priority=[1.0, float("nan")]), "finite; row 1"),
        (lambda: exact_dedup([1, 2], priority=[1.0]), "one per row"),
        (lambda: exact_dedup([1, 2], priority=["x", "y"]), "numeric"),
        (lambda: exact_dedup_bytes([b"a", "text"]), r"contents\[1\] must be bytes"),  # type: ignore[list-item]
        (lambda: content_hashes([b"a"], digest_size=0), "digest_size"),
    ],
)
def test_bad_input_gives_clear_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]

"""Near dedup of 64-bit perceptual hashes: planted copies within d bits are all found (the faiss
multi-hash search is exact), distinct hashes kept, and real re-encoded photos group with their original."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from vlcurate.base.images import hamming, phash
from vlcurate.dedup import near_dedup, near_pairs, phashes


def _random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)


def _flip(rng: np.random.Generator, value: int, n_bits: int) -> int:
    for bit in rng.choice(64, size=n_bits, replace=False).tolist():
        value ^= 1 << bit
    return value


def _planted(n: int, n_copies: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random hashes (pairwise far apart, checked), then copies with 0..d bits flipped."""
    rng = np.random.default_rng(seed)
    base = _random_hashes(rng, n)
    source = rng.choice(n, n_copies, replace=False)
    copies = np.array(
        [_flip(rng, int(base[s]), int(rng.integers(0, d + 1))) for s in source], dtype=np.uint64
    )
    return np.concatenate([base, copies]), source


def _brute_pairs(h: np.ndarray, d: int) -> set[tuple[int, int]]:
    dist = hamming(h[:, None], h[None, :])
    i, j = np.nonzero(np.triu(dist <= d, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_planted_near_copies_found_and_distinct_kept() -> None:
    n, d = 20000, 4
    hashes, source = _planted(n, 3000, d, seed=0)
    assert len(_brute_pairs(hashes[:2000], 2 * d)) == 0  # random 64-bit hashes are far apart
    result = near_dedup(hashes, max_distance=d)
    assert result.keep[:n].all()  # no false drops
    assert not result.keep[n:].any()  # recall 1.0
    assert (result.representative[n:] == source).all()
    dist = hamming(hashes[n:], hashes[source])
    assert (result.score[n:] == dist).all()
    row = n + int(np.argmax(dist))
    assert result.reasons[row] == f"near duplicate of {source[row - n]} (hamming {dist.max()})"


@pytest.mark.parametrize(("d", "plan"), [(4, None), (4, (3, 1)), (4, (5, 0)), (6, (3, 2)), (2, (2, 1))])
def test_candidate_search_equals_brute_force(d: int, plan: tuple[int, int] | None) -> None:
    hashes, _ = _planted(1500, 1500, d, seed=d)
    hashes = np.unique(hashes)
    i, j, dist = near_pairs(hashes, d, plan=plan)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == _brute_pairs(hashes, d)
    assert (dist == hamming(hashes[i], hashes[j])).all()


def test_greedy_does_not_chain_and_kept_hashes_are_far_apart() -> None:
    a, b, c = 0, 0b1111, 0b1111_1111  # a~b (4 bits), b~c (4 bits), a and c 8 bits apart
    result = near_dedup(np.array([a, b, c], dtype=np.uint64), max_distance=4)
    assert result.keep.tolist() == [True, False, True]
    assert result.reasons[1] == "near duplicate of 0 (hamming 4)"
    # On a dense pool: no two kept hashes within d, and every drop is within d of its representative.
    rng = np.random.default_rng(5)
    dense = np.array([_flip(rng, 0, int(rng.integers(0, 7))) for _ in range(600)], dtype=np.uint64)
    res = near_dedup(dense, max_distance=3)
    assert len(_brute_pairs(dense[res.keep], 3)) == 0
    assert (hamming(dense, dense[res.representative]) <= 3).all()


def test_identical_hashes_and_priority() -> None:
    hashes = np.array([10, 10, 11, 10, 2**63 + 5], dtype=np.uint64)
    uids = ["d", "c", "b", "a", "e"]
    plain = near_dedup(hashes, uids, max_distance=1)
    assert plain.representative_uids.tolist() == ["a", "a", "a", "a", "e"]
    assert plain.reasons[2] == "near duplicate of a (hamming 1)"
    assert plain.reasons[0] == "near duplicate of a (hamming 0)"
    ranked = near_dedup(hashes, uids, priority=[0.0, 0.0, 5.0, 1.0, 0.0], max_distance=1)
    assert ranked.representative_uids.tolist() == ["b", "b", "b", "b", "e"]
    exact_only = near_dedup(hashes, uids, max_distance=0)
    assert exact_only.keep.tolist() == [False, False, True, True, True]
    signed = near_dedup(hashes.view(np.int64), uids, max_distance=1)  # int64 columns hold the same bits
    assert (signed.keep == plain.keep).all()


def test_deterministic_and_independent_of_input_order() -> None:
    hashes, _ = _planted(3000, 2000, 4, seed=7)
    rng = np.random.default_rng(8)
    hashes[:200] = [_flip(rng, 0, int(k)) for k in rng.integers(0, 9, 200)]  # dense corner: choices matter
    uids = np.array([f"id-{i}" for i in range(hashes.size)])
    priority = rng.integers(0, 4, hashes.size).astype(np.float64)
    first = near_dedup(hashes, uids, priority)
    again = near_dedup(hashes, uids, priority)
    assert (first.keep == again.keep).all() and (first.representative == again.representative).all()
    perm = rng.permutation(hashes.size)
    shuffled = near_dedup(hashes[perm], uids[perm], priority[perm])
    assert (shuffled.keep == first.keep[perm]).all()
    assert (shuffled.representative_uids == first.representative_uids[perm]).all()


def test_real_photos_re_encoded_and_resized_group_with_their_original(coco_dir: Path) -> None:
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted((coco_dir / "val2017").glob("*.jpg"))[:8]]
    assert len(photos) == 8
    variants = []
    for im in photos:
        jpeg = io.BytesIO()
        im.save(jpeg, "JPEG", quality=40)
        png = io.BytesIO()
        im.resize((256, round(256 * im.height / im.width))).save(png, "PNG")
        variants += [
            Image.open(io.BytesIO(jpeg.getvalue())),
            im.resize((im.width // 2, im.height // 2)),
            Image.open(io.BytesIO(png.getvalue())),
        ]
    hashes = phashes(photos + variants)
    assert hashes.dtype == np.uint64 and phash(photos[0]) == int(hashes[0])
    priority = np.r_[np.ones(8), np.zeros(len(variants))]  # originals win
    result = near_dedup(hashes, priority=priority, max_distance=4)
    assert result.keep[:8].all()  # different photos do not group
    assert not result.keep[8:].any()  # every copy does
    assert (result.representative[8:] == np.repeat(np.arange(8), 3)).all()


@pytest.mark.parametrize(
    ("hashes", "kwargs", "message"),
    [
        (np.array([], dtype=np.uint64), {}, "empty input"),
        (np.array([1.0, 2.0]), {}, "uint64"),
        (np.array([1, 2], dtype=np.uint32), {}, "uint64"),
        (np.zeros((2, 8), dtype=np.uint8), {}, "1-D"),
        (np.array([1, 2], dtype=np.uint64), {"max_distance": -1}, "between 0 and 16"),
        (np.array([1, 2], dtype=np.uint64), {"max_distance": 17}, "between 0 and 16"),
        (np.array([1, 2], dtype=np.uint64), {"max_distance": 2.5}, "integer"),
        (np.array([1, 2], dtype=np.uint64), {"uids": ["x", "x"]}, "unique"),
        (np.array([1, 2], dtype=np.uint64), {"priority": [np.nan, 0]}, "finite; row 0"),
    ],
)
def test_bad_input_gives_clear_errors(hashes: np.ndarray, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        near_dedup(hashes, **kwargs)  # type: ignore[arg-type]

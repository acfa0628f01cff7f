"""SemDeDup: planted near-copies of embeddings are dropped (recall 1.0), distinct items kept, the kept
one chosen by priority or distance to the centroid, and the result does not depend on row order."""

from __future__ import annotations

import numpy as np
import pytest

from vlcurate.dedup import semantic_dedup


def _planted(
    seed: int = 0, n_topics: int = 20, per_topic: int = 100, dim: int = 64, n_copies: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Topic clusters (same-topic cosine ~0.8, never above 0.95) plus noisy copies (cosine ~0.995)."""
    rng = np.random.default_rng(seed)
    topics = 2.0 * rng.standard_normal((n_topics, dim))
    base = np.repeat(topics, per_topic, axis=0) + rng.standard_normal((n_topics * per_topic, dim))
    source = rng.choice(base.shape[0], n_copies, replace=False)
    copies = base[source] + 0.2 * rng.standard_normal((n_copies, dim))
    return np.vstack([base, copies]).astype(np.float32), source


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    return np.sum(x * y, axis=-1)


@pytest.mark.parametrize("n_clusters", [1, 20])
def test_planted_copies_dropped_and_distinct_kept(n_clusters: int) -> None:
    emb, source = _planted()
    n = emb.shape[0] - source.size
    uids = np.array([f"u{i:05d}" for i in range(emb.shape[0])])
    priority = np.r_[np.ones(n), np.zeros(source.size)]  # originals are the better copies
    result = semantic_dedup(emb, uids, priority, eps=0.05, n_clusters=n_clusters)
    assert result.keep[:n].all()  # no false drops
    assert not result.keep[n:].any()  # recall 1.0
    assert (result.representative[n:] == source).all()
    assert result.cluster is not None and (result.cluster[n:] == result.cluster[source]).all()
    cos = _cos(emb[n:], emb[source])
    assert np.allclose(result.score[n:], cos, atol=1e-4) and (cos > 0.95).all()
    row = n + 5
    assert result.reasons[row] == (
        f"semantic duplicate of {uids[source[5]]} (cosine {result.score[row]:.3f}, "
        f"cluster {result.cluster[row]})"
    )


def test_default_k_misses_only_pairs_that_k_means_split() -> None:
    """With k ~ sqrt(n) > 20 topics, k-means cuts some topics in two; a pair cut apart is not compared
    (SemDeDup's trade), every pair that shares a cluster is found, and distinct items are all kept."""
    emb, source = _planted()
    n = emb.shape[0] - source.size
    result = semantic_dedup(emb, priority=np.r_[np.ones(n), np.zeros(source.size)])
    assert result.cluster is not None and len(np.unique(result.cluster)) == round(np.sqrt(emb.shape[0]))
    together = result.cluster[n:] == result.cluster[source]
    assert together.mean() > 0.98
    assert result.keep[:n].all()
    assert not result.keep[n:][together].any()
    assert result.keep[n:][~together].all()


def test_float16_input_and_default_order_keeps_the_member_farthest_from_its_centroid() -> None:
    emb, source = _planted(seed=1)
    n = emb.shape[0] - source.size
    result = semantic_dedup(emb.astype(np.float16), n_clusters=20)
    assert result.n_dropped == source.size
    pair_kept = result.keep[source] ^ result.keep[n:]
    assert pair_kept.all()  # exactly one of each pair
    # The paper's rule: of the pair, keep the one least similar to the (shared) centroid.
    result_f32 = semantic_dedup(emb, n_clusters=20, seed=0)
    centroid_sim = np.zeros(emb.shape[0])
    for c in np.unique(result_f32.cluster):  # type: ignore[arg-type]
        members = result_f32.cluster == c
        centroid = emb[members] / np.linalg.norm(emb[members], axis=1, keepdims=True)
        centroid_sim[members] = _cos(emb[members], centroid.mean(axis=0))
    # Within a pair the kept one is farther from the centroid (centroid as k-means left it, approximated).
    farther_kept = np.where(result_f32.keep[source], source, np.arange(n, emb.shape[0]))
    other = np.where(result_f32.keep[source], np.arange(n, emb.shape[0]), source)
    assert np.mean(centroid_sim[farther_kept] <= centroid_sim[other] + 1e-3) > 0.95
    near = semantic_dedup(emb, n_clusters=20, centroid_order="near")
    assert (near.keep[source] != result_f32.keep[source]).mean() > 0.9


def test_kept_set_has_no_close_pair_within_a_cluster() -> None:
    rng = np.random.default_rng(3)
    centre = rng.standard_normal(32)
    emb = (centre + 0.25 * rng.standard_normal((400, 32))).astype(np.float32)  # dense: chains abound
    result = semantic_dedup(emb, eps=0.03, n_clusters=3)
    assert 0 < result.n_dropped < 400
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for c in range(3):
        kept = unit[result.keep & (result.cluster == c)]
        sim = kept @ kept.T
        assert (np.triu(sim, k=1) <= 0.97 + 1e-6).all()
    dropped = ~result.keep
    assert (_cos(emb[dropped], emb[result.representative[dropped]]) > 0.97 - 1e-6).all()
    assert (result.cluster[dropped] == result.cluster[result.representative[dropped]]).all()  # type: ignore[index]


def test_blocked_similarity_matches_one_block() -> None:
    emb, _ = _planted(seed=4, n_copies=200)
    whole = semantic_dedup(emb, n_clusters=5)
    blocked = semantic_dedup(emb, n_clusters=5, sim_block_elems=1000, block_size=333)
    assert (whole.keep == blocked.keep).all() and (whole.representative == blocked.representative).all()


def test_deterministic_and_independent_of_input_order() -> None:
    emb, _ = _planted(seed=2)
    uids = np.array([f"img-{i}" for i in range(emb.shape[0])])
    first = semantic_dedup(emb, uids)
    again = semantic_dedup(emb, uids)
    assert (first.keep == again.keep).all() and (first.representative == again.representative).all()
    assert np.array_equal(first.cluster, again.cluster)  # type: ignore[arg-type]
    perm = np.random.default_rng(9).permutation(emb.shape[0])
    shuffled = semantic_dedup(emb[perm], uids[perm])
    assert (shuffled.keep == first.keep[perm]).all()
    assert (shuffled.representative_uids == first.representative_uids[perm]).all()
    assert (shuffled.cluster == first.cluster[perm]).all()  # type: ignore[index]


def test_single_row() -> None:
    result = semantic_dedup(np.ones((1, 8), dtype=np.float32))
    assert result.keep.tolist() == [True] and result.cluster.tolist() == [0]  # type: ignore[union-attr]


def _with(row: int, value: float) -> np.ndarray:
    emb = np.ones((4, 8), dtype=np.float32)
    emb[row, 3] = value
    return emb


@pytest.mark.parametrize(
    ("emb", "kwargs", "message"),
    [
        (_with(2, np.nan), {}, "finite; row 2 contains NaN"),
        (_with(1, np.inf), {}, "finite; row 1"),
        (np.vstack([np.ones((2, 3)), np.zeros((1, 3))]).astype(np.float32), {}, "row 2 is all zeros"),
        (np.ones(8, dtype=np.float32), {}, "2-D"),
        (np.ones((4, 8), dtype=np.int64), {}, "float16, float32 or float64"),
        (np.zeros((0, 8), dtype=np.float32), {}, "at least one row"),
        (np.ones((4, 8), dtype=np.float32), {"n_clusters": 5}, "between 1 and the number of rows"),
        (np.ones((4, 8), dtype=np.float32), {"eps": 1.5}, "eps"),
        (np.ones((4, 8), dtype=np.float32), {"uids": ["a", "b", "a", "c"]}, "unique"),
        (np.ones((4, 8), dtype=np.float32), {"priority": [1, 2, 3]}, "one per row"),
        (np.ones((4, 8), dtype=np.float32), {"centroid_order": "middle"}, "far"),
    ],
)
def test_bad_input_gives_clear_errors(emb: np.ndarray, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        semantic_dedup(emb, **kwargs)  # type: ignore[arg-type]

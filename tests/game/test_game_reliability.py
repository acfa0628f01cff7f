"""The reliability estimator on simulated counts: the crowd's prior (empirical Bayes) and the EM
estimate of false alarms recover known rates better than flat priors."""

from __future__ import annotations

import numpy as np

from vlcurate.server.game import reliability as rel

TYPES = [(0.9, 0.03, 8), (0.6, 0.25, 4), (1.0, 1.0, 2), (0.0, 0.0, 2), (0.9, 0.5, 4), (0.8, 0.05, 2)]
Q = 0.15


def _crowd(rng: np.random.Generator) -> tuple[list[rel.Counts], list[tuple[float, float]]]:
    """Five sessions each (25 tainted, 25 untainted images); every flag on an untainted image settled."""
    counts, truth = [], []
    for a, b, n in TYPES:
        for _ in range(n):
            wrong = rng.random(25) < Q
            flagged = np.where(wrong, rng.random(25) < a, rng.random(25) < b)
            counts.append(
                rel.Counts(
                    n_tainted=25,
                    n_tainted_flagged=int(rng.binomial(25, a)),
                    n_untainted=25,
                    n_untainted_flagged=int(flagged.sum()),
                    n_confirmed=int((flagged & wrong).sum()),
                    n_overturned=int((flagged & ~wrong).sum()),
                )
            )
            truth.append((a, b))
    return counts, truth


def test_the_crowd_prior_brings_estimates_closer_to_the_truth() -> None:
    rng = np.random.default_rng(7)
    flat_err, crowd_err = [], []
    for _ in range(20):
        counts, truth = _crowd(rng)
        prior = rel.fit_prior(counts, Q)
        assert prior is not None and abs(prior.a.sum() - 1) < 1e-9 and prior.players == 22
        for c, (a, b) in zip(counts, truth, strict=True):
            f, g = rel.estimate(c, Q), rel.estimate(c, Q, prior)
            flat_err.append((abs(f.a - a), abs(f.b - b)))
            crowd_err.append((abs(g.a - a), abs(g.b - b)))
            assert 0 < g.a_sd < 0.2 and 0 < g.b_sd < 0.2
    flat, crowd = np.mean(flat_err, axis=0), np.mean(crowd_err, axis=0)
    assert (crowd < flat).all(), (flat, crowd)
    assert (crowd < 0.05).all(), crowd


def test_few_players_keep_flat_priors_and_pending_flags_count_by_their_odds() -> None:
    counts = [rel.Counts(n_tainted=5, n_tainted_flagged=4)] * (rel.MIN_CROWD - 1)
    assert rel.fit_prior(counts, Q) is None
    # the same flags: settled as false alarms, or still pending (then only probably false)
    settled = rel.estimate(rel.Counts(25, 22, 25, 6, 0, 6), Q)
    pending = rel.estimate(rel.Counts(25, 22, 25, 6, 0, 0), Q)
    assert settled.b > pending.b > rel.estimate(rel.Counts(25, 22, 25, 0, 0, 0), Q).b


def test_the_joint_prior_tells_two_types_apart_better_than_independent_shrinkage() -> None:
    """Two kinds of player whose detection rates overlap after 25 checks but whose false alarms do
    not: under the joint prior a player's untainted flags say which kind it is, and that pulls its a
    towards its own kind; a prior that treats a and b as independent (the product of the same fit's
    marginals) cannot."""
    rng = np.random.default_rng(11)
    joint_err, indep_err = [], []
    for _ in range(20):
        counts, truth = [], []
        for a, b in [(0.85, 0.05)] * 10 + [(0.65, 0.45)] * 10:
            wrong = rng.random(25) < Q
            flagged = np.where(wrong, rng.random(25) < a, rng.random(25) < b)
            counts.append(
                rel.Counts(
                    25, int(rng.binomial(25, a)), 25, int(flagged.sum()), 0, int((flagged & ~wrong).sum())
                )
            )
            truth.append((a, b))
        prior = rel.fit_prior(counts, Q)
        assert prior is not None and prior.w.shape == (rel.GRID.size, rel.GRID.size)
        indep = rel.Prior(np.outer(prior.a, prior.b), prior.players)
        for c, (a, b) in zip(counts, truth, strict=True):
            j, i = rel.estimate(c, Q, prior), rel.estimate(c, Q, indep)
            joint_err.append((abs(j.a - a), abs(j.b - b)))
            indep_err.append((abs(i.a - a), abs(i.b - b)))
    joint, indep = np.mean(joint_err, axis=0), np.mean(indep_err, axis=0)
    assert joint[0] < 0.85 * indep[0] and joint[1] <= indep[1], (joint, indep)

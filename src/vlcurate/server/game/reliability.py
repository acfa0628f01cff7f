"""Player reliability from tainted images, and how much to believe a flag on an untainted image.

The model (BACKGROUND.md, after the paper's player interaction model): a player flags a wrong answer
with detection rate a = P(flag | model wrong) and a right one with false-alarm rate
b = P(flag | model right). Tainted images, where the model was told to be wrong, measure a directly:
flagged of seen. False alarms come from the untainted images (by EM, flat priors): settled flags are known
(overturned: a false alarm; confirmed: a model error), a pending flag is a false alarm and an
unflagged image a right answer with the probabilities that a, b and q (the model's error rate on
untainted images) give; that yields expected false alarms k among expected right answers n.

Estimates are posteriors. With a crowd (`MIN_CROWD` players or more), the prior is the crowd's own
joint distribution of (a, b), fitted by nonparametric maximum likelihood on a 21 x 21 grid and mixed
with a tenth of Jeffreys' prior (empirical Bayes, `fit_prior`): 25 check images pin a rate down to
about ±0.06 alone, and the crowd's shape narrows that for everyone. Jointly, because a player's
flags on untainted images also tell which kind of player it resembles, and so sharpen its a (and
its checks its b). Each rate's own evidence is as above: a's flagged of checks, b's expected false
alarms (EM, with a from the joint posterior); only the prior couples them.
Before there is a crowd, flat Beta(1, 1) priors:
a ~ Beta(1 + flagged, 1 + missed), b ~ Beta(1 + k, 1 + n - k). A flag on an untainted image is then
a true model error with probability a q / (a q + b (1 - q)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    n_tainted: int = 0
    n_tainted_flagged: int = 0
    n_untainted: int = 0
    n_untainted_flagged: int = 0
    n_confirmed: int = 0
    n_overturned: int = 0


@dataclass(frozen=True)
class Reliability:
    a: float
    a_sd: float
    b: float
    b_sd: float

    @property
    def skill(self) -> float:
        """a - b (Youden's J): 1 for a perfect player, 0 for one who flags at random."""
        return self.a - self.b


def beta_mean_sd(alpha: float, beta: float) -> tuple[float, float]:
    n = alpha + beta
    return alpha / n, math.sqrt(alpha * beta / (n * n * (n + 1.0)))


GRID = np.linspace(0.0, 1.0, 21)  # both axes of the joint prior over (a, b)
MIN_CROWD = 10  # players with check images before the crowd's prior replaces the flat one


@dataclass(frozen=True)
class Prior:
    """The crowd's joint distribution of detection (a) and false-alarm (b) rates: weights `w` on the
    grid `GRID` x `GRID` (rows a, columns b), fitted to every player's counts (`fit_prior`); a
    player's estimate is its posterior under it."""

    w: np.ndarray
    players: int

    @property
    def a(self) -> np.ndarray:
        """The prior's marginal over a, on `GRID`."""
        return np.asarray(self.w.sum(axis=1))

    @property
    def b(self) -> np.ndarray:
        """The prior's marginal over b, on `GRID`."""
        return np.asarray(self.w.sum(axis=0))


def _loglik(ka: np.ndarray, na: np.ndarray, kb: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """log P(ka of na checks flagged | a) + log P(kb false alarms of nb right answers | b) on the
    joint grid, players x (a x b) cells (counts may be fractional: expected counts)."""
    g = np.clip(GRID, 1e-6, 1.0 - 1e-6)
    lg, l1g = np.log(g)[None, :], np.log1p(-g)[None, :]
    la = ka[:, None] * lg + (na - ka)[:, None] * l1g
    lb = kb[:, None] * lg + (nb - kb)[:, None] * l1g
    return np.asarray((la[:, :, None] + lb[:, None, :]).reshape(ka.size, -1))


def _likelihood(ka: np.ndarray, na: np.ndarray, kb: np.ndarray, nb: np.ndarray) -> np.ndarray:
    ll = _loglik(ka, na, kb, nb)
    return np.asarray(np.exp(ll - ll.max(axis=1, keepdims=True)))


def npmle(like: np.ndarray, iters: int = 500) -> np.ndarray:
    """The nonparametric maximum-likelihood prior over the grid's cells (EM over their weights),
    given each player's likelihood per cell: the empirical-Bayes prior that lets each player's few
    observations borrow strength from the players that look like it."""
    w = np.full(like.shape[1], 1.0 / like.shape[1])
    for _ in range(iters):
        post = like * w
        post /= post.sum(axis=1, keepdims=True)
        nw = post.mean(axis=0)
        if np.abs(nw - w).max() < 1e-7:
            return np.asarray(nw)
        w = nw
    return np.asarray(w)


def _posteriors(
    ka: np.ndarray, na: np.ndarray, kb: np.ndarray, nb: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each player's posterior marginals over a and over b (players x `GRID`) under joint prior `w`."""
    post = _likelihood(ka, na, kb, nb) * w.ravel()
    post = (post / post.sum(axis=1, keepdims=True)).reshape(ka.size, GRID.size, GRID.size)
    return post.sum(axis=2), post.sum(axis=1)


def _a_counts(cs: list[Counts]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([c.n_tainted_flagged for c in cs], dtype=float),
        np.array([c.n_tainted for c in cs], dtype=float),
    )


def _b_counts(c: Counts, a: float, q: float) -> tuple[float, float]:
    """Expected false alarms and expected right answers among a player's untainted images (EM).

    Settled flags are known: confirmed ones were model errors, overturned ones false alarms. A
    pending flag is a false alarm, and an unflagged image was a right answer, with the probability
    the current (a, b, q) give; b is re-estimated from those expectations until it settles."""
    k, right = _b_counts_many([c], np.array([a]), q)
    return float(k[0]), float(right[0])


def _b_counts_many(cs: list[Counts], a: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """`_b_counts` for many players at once (numpy, so that fitting the crowd's prior is quick)."""
    n = np.array([c.n_untainted for c in cs], dtype=float)
    f = np.array([c.n_untainted_flagged for c in cs], dtype=float)
    over = np.array([c.n_overturned for c in cs], dtype=float)
    pending = np.maximum(f - np.array([c.n_confirmed for c in cs], dtype=float) - over, 0.0)
    unflagged = np.maximum(n - f, 0.0)
    q = min(max(q, 0.001), 0.999)
    a = np.clip(a, 0.001, 0.999)
    b = np.clip((f / np.maximum(n, 1.0) - a * q) / (1.0 - q), 0.01, 0.99)
    k = right = np.zeros_like(n)
    for _ in range(50):
        p_false = b * (1 - q) / (a * q + b * (1 - q))
        p_right = (1 - b) * (1 - q) / ((1 - a) * q + (1 - b) * (1 - q))
        k = over + pending * p_false
        right = k + unflagged * p_right
        nb = np.clip((k + 0.5) / (right + 1.0), 0.001, 0.999)
        if np.abs(nb - b).max() < 1e-6:
            break
        b = nb
    return k, right


def _joint(
    cs: list[Counts], q: float, w: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts and posterior marginals for players: b's expected counts need a, so a comes first
    (flat prior, or `w`'s posterior from the checks alone), then the joint posterior, then b's
    counts again with that posterior's a."""
    ka, na = _a_counts(cs)
    if w is None:
        a = (ka + 1.0) / (na + 2.0)
    else:
        pa, _ = _posteriors(ka, na, np.zeros_like(ka), np.zeros_like(ka), w)
        a = pa @ GRID
    kb, nb = _b_counts_many(cs, a, q)
    if w is not None:
        pa, _ = _posteriors(ka, na, kb, nb, w)
        kb, nb = _b_counts_many(cs, pa @ GRID, q)
    return ka, na, kb, nb


JEFFREYS_SHARE = 0.1  # the fitted prior is mixed with a little Jeffreys prior: no rate is ruled out


def _jeffreys() -> np.ndarray:
    """Jeffreys' prior on `GRID` x `GRID`: independent Beta(1/2, 1/2) on a and on b."""
    g = np.clip(GRID, 0.005, 0.995)
    w = 1.0 / np.sqrt(g * (1.0 - g))
    w2 = np.outer(w, w)
    return np.asarray(w2 / w2.sum())


def _robust(w: np.ndarray) -> np.ndarray:
    """NPMLE priors are spiky on small crowds; a player between two spikes is not forced onto one."""
    return (1.0 - JEFFREYS_SHARE) * w + JEFFREYS_SHARE * _jeffreys()


def fit_prior(counts: list[Counts], q: float) -> Prior | None:
    """The crowd's joint prior over (a, b) from every player's counts, tainted and untainted images
    together (fitted twice: the second time with b's counts from the first fit's a); None below
    `MIN_CROWD` players with checks."""
    seen = [c for c in counts if c.n_tainted > 0]
    if len(seen) < MIN_CROWD:
        return None
    w = _robust(npmle(_likelihood(*_joint(seen, q, None))).reshape(GRID.size, GRID.size))
    w = npmle(_likelihood(*_joint(seen, q, w))).reshape(GRID.size, GRID.size)
    return Prior(_robust(w), len(seen))


def estimate(c: Counts, q: float, prior: Prior | None = None) -> Reliability:
    """The posterior means and standard deviations of a and b for a player's counts, given q:
    under the crowd's joint prior when there is one, else under flat Beta(1, 1) priors."""
    if prior is not None:
        pa, pb = _posteriors(*_joint([c], q, prior.w), prior.w)
        a, b = float(pa[0] @ GRID), float(pb[0] @ GRID)
        a_sd = math.sqrt(max(float(pa[0] @ GRID**2) - a * a, 0.0))
        b_sd = math.sqrt(max(float(pb[0] @ GRID**2) - b * b, 0.0))
        return Reliability(a, a_sd, b, b_sd)
    a, a_sd = beta_mean_sd(1.0 + c.n_tainted_flagged, 1.0 + c.n_tainted - c.n_tainted_flagged)
    n = c.n_untainted
    if n == 0:
        b, b_sd = beta_mean_sd(1.0, 1.0 + c.n_overturned)
        return Reliability(a, a_sd, b, b_sd)
    k, right = _b_counts(c, a, q)
    b, b_sd = beta_mean_sd(1.0 + k, 1.0 + max(right - k, 0.0))
    return Reliability(a, a_sd, b, b_sd)


def model_error_rate(
    n_untainted: int, n_untainted_flagged: int, confirmed: int, overturned: int, a: float
) -> float:
    """q, the model's error rate on untainted images: flags per image times the share of judged
    flags that were right, over the crowd's detection rate (a flag needs a miss to be noticed)."""
    if n_untainted == 0:
        return 0.1
    r_u = n_untainted_flagged / n_untainted
    precision = (confirmed + 1.0) / (confirmed + overturned + 2.0)
    return min(max(r_u * precision / max(a, 0.05), 0.001), 0.999)


def flag_posterior(r: Reliability, q: float) -> float:
    """P(the model was really wrong | this player flagged an untainted image)."""
    num = r.a * q
    den = num + r.b * (1.0 - q)
    return num / den if den > 0 else 0.0


def earning(r: Reliability, c: Counts, *, min_skill: float, min_tainted_seen: int) -> tuple[bool, str]:
    """Whether a player earns, and why not: below the bar once enough tainted images are seen."""
    if c.n_tainted < min_tainted_seen:
        return True, (
            f"on probation: {c.n_tainted} of {min_tainted_seen} check images seen; reliability is "
            f"measured once you have played {min_tainted_seen}"
        )
    if r.skill >= min_skill:
        return True, f"reliable: detection {r.a:.2f} ± {r.a_sd:.2f}, false alarms {r.b:.2f} ± {r.b_sd:.2f}"
    return False, (
        f"not earning: your detection rate {r.a:.2f} ± {r.a_sd:.2f} minus your false-alarm rate "
        f"{r.b:.2f} ± {r.b_sd:.2f} is {r.skill:.2f}, below the bar of {min_skill:.2f}. Flag only answers "
        f"that are wrong, and flag them when they are; the estimate is updated after every session"
    )

"""Player reliability from tainted images, and how much to believe a flag on an untainted image.

The model (BACKGROUND.md, after the paper's player interaction model): a player flags a wrong answer
with detection rate a = P(flag | model wrong) and a right one with false-alarm rate
b = P(flag | model right). Tainted images, where the model was told to be wrong, measure a directly:
a ~ Beta(1 + flagged, 1 + missed). False alarms are measured two ways and the larger is kept: flags
that independent players overturned, and the moment estimate from the untainted flag rate r_U =
a q + b (1 - q), so b = (r_U - a q) / (1 - q), with q the model's error rate on untainted images.
Both give an effective count k of false alarms among n untainted images: b ~ Beta(1 + k, 1 + n - k).
A flag on an untainted image is then a true model error with probability a q / (a q + b (1 - q)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def estimate(c: Counts, q: float) -> Reliability:
    """The posterior means and standard deviations of a and b for a player's counts, given q."""
    a, a_sd = beta_mean_sd(1.0 + c.n_tainted_flagged, 1.0 + c.n_tainted - c.n_tainted_flagged)
    n = c.n_untainted
    if n == 0:
        b, b_sd = beta_mean_sd(1.0, 1.0 + c.n_overturned)
        return Reliability(a, a_sd, b, b_sd)
    q = min(max(q, 0.0), 0.999)
    r_u = c.n_untainted_flagged / n
    b_moment = min(max((r_u - a * q) / (1.0 - q), 0.0), 1.0)
    k = max(float(c.n_overturned), b_moment * n)
    k = min(k, float(n))
    b, b_sd = beta_mean_sd(1.0 + k, 1.0 + n - k)
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

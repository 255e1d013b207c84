"""Statistics on window values: means with confidence intervals and A/B verdicts.

:func:`compare_samples` calls a change *improved*, *regressed* or *same* only when the data
decide it: a two-sided Mann-Whitney U test on the per-window values plus a minimum effect size
(``threshold_pct`` of the baseline median).  Otherwise it says *unknown* and how many more
repetitions per side would most likely decide (normal approximation of the difference, scaled by
the U test's asymptotic efficiency 3/pi), capped at :data:`MAX_MORE_REPS`: beyond that it says so in plain
words (the difference is below what the plan can resolve) instead of an absurd count.  Lower values are
better (time, energy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Asymptotic relative efficiency of the U test against the t test under normality.
MWU_EFFICIENCY = 3.0 / math.pi

#: Above this many more repetitions per side an estimate is no longer useful advice: the verdict says the
#: difference is below what the plan can resolve, and ``more_reps`` is capped here.
MAX_MORE_REPS = 100


def mean_ci_along(values, axis: int = -1, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, Student-t confidence half-width and count along ``axis``, ignoring NaN (vectorised).

    Half-width = t_{(1+confidence)/2, n-1} * s / sqrt(n) with the sample standard deviation s; NaN where
    fewer than two values (no interval from one value: Table 2's 10-class row).
    """
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    n = ok.sum(axis=axis)
    total = np.where(ok, v, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(ok, v - np.expand_dims(mean, axis), 0.0)
        var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
        tq = stats.t.ppf(0.5 + confidence / 2.0, np.maximum(n - 1, 1))
        half = np.where(n >= 2, tq * np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, half, n


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t half-width of its ``confidence`` interval over the finite values (NaN half-width
    below 2 values): :func:`mean_ci_along` of one flat sample."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    mean, half, _ = mean_ci_along(v, confidence=confidence)
    return float(mean), float(half)


@dataclass(frozen=True)
class Verdict:
    """Outcome of one A/B comparison (B against baseline A)."""

    verdict: str  # improved | regressed | same | unknown
    effect_pct: float  # (median B - median A) / median A * 100; negative = B lower (better)
    p_value: float
    n_a: int
    n_b: int
    more_reps: int  # extra repetitions per side likely to decide ("unknown" only, at most MAX_MORE_REPS), else 0
    reason: str
    beyond_plan: bool = False  # "unknown" and more than MAX_MORE_REPS more repetitions would be needed

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "effect_pct": self.effect_pct, "p_value": self.p_value,
                "n_a": self.n_a, "n_b": self.n_b, "more_reps": self.more_reps, "beyond_plan": self.beyond_plan,
                "reason": self.reason}


def _reps_needed(rel_sd_pct: float, margin_pct: float, alpha: float) -> int:
    """Per-side n so that the (1-alpha) half-width of a difference of means is below ``margin_pct``."""
    if margin_pct <= 0 or not math.isfinite(rel_sd_pct):
        return 10**6
    z = float(stats.norm.ppf(1 - alpha / 2))
    return int(math.ceil(2.0 * (z * rel_sd_pct / margin_pct) ** 2 / MWU_EFFICIENCY))


def compare_samples(a, b, threshold_pct: float = 2.0, alpha: float = 0.05, min_n: int = 3,
                    samples: str = "valid windows") -> Verdict:
    """Verdict for B against baseline A (lower is better).

    ``samples`` names what the values are, for the "too few" reason (e.g. windows in usable rounds).

    - significant (p < alpha) and |effect| >= threshold: improved / regressed;
    - significant but |effect| < threshold, or the difference's CI inside +-threshold: same;
    - else unknown, with the repetitions per side likely to decide.
    """
    va = np.asarray(a, dtype=np.float64)
    vb = np.asarray(b, dtype=np.float64)
    va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
    na, nb = len(va), len(vb)
    if na < min_n or nb < min_n:
        more = max(min_n - na, min_n - nb, 1)
        return Verdict("unknown", math.nan, math.nan, na, nb, more,
                       f"too few {samples} ({na} vs {nb}; need {min_n} each)")
    med_a = float(np.median(va))
    if med_a == 0:
        return Verdict("unknown", math.nan, math.nan, na, nb, 0, "baseline median is zero")
    effect = (float(np.median(vb)) - med_a) / abs(med_a) * 100.0
    if np.all(va == va[0]) and np.all(vb == vb[0]):
        p = 1.0 if va[0] == vb[0] else 0.0
    else:
        p = float(stats.mannwhitneyu(va, vb, alternative="two-sided").pvalue)
    # relative spread (percent of baseline) and the CI of the difference of means
    pooled_sd = math.sqrt((va.var(ddof=1) + vb.var(ddof=1)) / 2.0)
    rel_sd = pooled_sd / abs(med_a) * 100.0
    z = float(stats.norm.ppf(1 - alpha / 2))
    half = z * rel_sd * math.sqrt(1.0 / na + 1.0 / nb) / math.sqrt(MWU_EFFICIENCY)
    if p < alpha and abs(effect) >= threshold_pct:
        kind = "regressed" if effect > 0 else "improved"
        return Verdict(kind, effect, p, na, nb, 0, f"U test p={p:.3g}, effect {effect:+.2f}% >= {threshold_pct}%")
    if p < alpha:
        return Verdict("same", effect, p, na, nb, 0,
                       f"significant (p={p:.3g}) but {effect:+.2f}% is below the {threshold_pct}% minimum")
    if abs(effect) + half < threshold_pct:
        return Verdict("same", effect, p, na, nb, 0,
                       f"{effect:+.2f}% +- {half:.2f}% lies within +-{threshold_pct}%")
    if abs(effect) >= threshold_pct:
        need = _reps_needed(rel_sd, abs(effect), alpha)
    else:
        need = _reps_needed(rel_sd, threshold_pct - abs(effect), alpha)
    more = max(need - min(na, nb), 1)
    head = f"p={p:.3g}, effect {effect:+.2f}% +- {half:.2f}%; "
    if more > MAX_MORE_REPS:
        return Verdict("unknown", effect, p, na, nb, MAX_MORE_REPS,
                       head + f"more than {MAX_MORE_REPS} repetitions per side would be needed; the difference is "
                              f"below what this plan can resolve", beyond_plan=True)
    return Verdict("unknown", effect, p, na, nb, more, head + f"about {more} more repetitions per side would decide")

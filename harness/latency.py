"""Pure latency statistics: trimmed mean, percentiles, 95% confidence intervals, time saved.

Every function takes plain arrays of latencies in milliseconds (the last axis holds the samples, so a
``[models, samples]`` array is summarised per model in one call) and is vectorised with numpy.

The confidence interval of the trimmed mean is the Tukey-McLaughlin interval: the standard error is
the winsorized standard deviation divided by ``(1 - 2g) * sqrt(n)`` (``g`` the fraction trimmed from
each end), with Student's t at ``n - 2*floor(g*n) - 1`` degrees of freedom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from harness.errors import MeasurementError

#: Fraction cut from EACH end before averaging (10% + 10%).
DEFAULT_TRIM = 0.1
DEFAULT_CONFIDENCE = 0.95


def _as_samples(latencies_ms: np.ndarray) -> np.ndarray:
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise MeasurementError("no latency samples to summarise")
    if not np.all(np.isfinite(a)):
        raise MeasurementError("latency samples hold NaN or inf")
    return a


def trim_count(n: int, trim: float = DEFAULT_TRIM) -> int:
    """Samples cut from each end for ``n`` samples: ``floor(trim * n)``."""
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim fraction must be in [0, 0.5), got {trim}")
    return int(np.floor(trim * n))


def trimmed_mean(latencies_ms: np.ndarray, trim: float = DEFAULT_TRIM) -> np.ndarray:
    """Mean of the samples left after cutting ``floor(trim*n)`` from each end (last axis)."""
    a = np.sort(_as_samples(latencies_ms), axis=-1)
    n = a.shape[-1]
    k = trim_count(n, trim)
    return a[..., k : n - k].mean(axis=-1)


def winsorized_std(latencies_ms: np.ndarray, trim: float = DEFAULT_TRIM) -> np.ndarray:
    """Sample standard deviation (ddof=1) after clamping each end's ``floor(trim*n)`` samples."""
    a = np.sort(_as_samples(latencies_ms), axis=-1)
    n = a.shape[-1]
    k = trim_count(n, trim)
    if n < 2:
        return np.zeros(a.shape[:-1])
    lo = a[..., k : k + 1]
    hi = a[..., n - k - 1 : n - k]
    w = np.clip(a, lo, hi)
    return w.std(axis=-1, ddof=1)


def trimmed_mean_ci(
    latencies_ms: np.ndarray, trim: float = DEFAULT_TRIM, confidence: float = DEFAULT_CONFIDENCE
) -> np.ndarray:
    """Half-width of the ``confidence`` interval of the trimmed mean (Tukey-McLaughlin), last axis."""
    a = _as_samples(latencies_ms)
    n = a.shape[-1]
    k = trim_count(n, trim)
    df = n - 2 * k - 1
    if df < 1:
        return np.full(a.shape[:-1], np.nan)
    se = winsorized_std(a, trim) / ((1.0 - 2.0 * k / n) * np.sqrt(n))
    return stats.t.ppf(0.5 + confidence / 2.0, df) * se


def percentile(latencies_ms: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-th percentile (linear interpolation) over the last axis."""
    return np.percentile(_as_samples(latencies_ms), q, axis=-1)


def time_saved_pct(base_ms: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
    """Percent of the base model's time saved: ``100 * (1 - time / base)`` (negative when slower)."""
    base = np.asarray(base_ms, dtype=np.float64)
    t = np.asarray(time_ms, dtype=np.float64)
    return 100.0 * (1.0 - t / base)


def time_saved_pct_ci(
    base_ms: np.ndarray, base_ci_ms: np.ndarray, time_ms: np.ndarray, time_ci_ms: np.ndarray
) -> np.ndarray:
    """Half-width of the CI of :func:`time_saved_pct`, by first-order propagation of both CIs.

    With ``r = t / b``: ``ci = 100 * r * sqrt((ci_t / t)^2 + (ci_b / b)^2)``; independent errors assumed.
    """
    b = np.asarray(base_ms, dtype=np.float64)
    t = np.asarray(time_ms, dtype=np.float64)
    r = t / b
    return 100.0 * r * np.hypot(np.asarray(time_ci_ms) / t, np.asarray(base_ci_ms) / b)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one model's timed inferences (all in milliseconds)."""

    n: int
    mean_ms: float
    trimmed_mean_ms: float
    trimmed_mean_ms_ci: float
    p50_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    trim: float
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    latencies_ms: np.ndarray, trim: float = DEFAULT_TRIM, confidence: float = DEFAULT_CONFIDENCE
) -> LatencyStats:
    """All statistics of a 1-D array of latencies."""
    a = _as_samples(latencies_ms)
    if a.ndim != 1:
        raise ValueError("summarize takes a 1-D array; use the array functions for batches")
    return LatencyStats(
        n=int(a.size),
        mean_ms=float(a.mean()),
        trimmed_mean_ms=float(trimmed_mean(a, trim)),
        trimmed_mean_ms_ci=float(trimmed_mean_ci(a, trim, confidence)),
        p50_ms=float(percentile(a, 50)),
        p90_ms=float(percentile(a, 90)),
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        std_ms=float(a.std(ddof=1)) if a.size > 1 else 0.0,
        trim=trim,
        confidence=confidence,
    )


# --------------------------------------------------------------------------- savings and robust estimates

#: Fraction cut from EACH end of the per-window values of one model (20% + 20%): one wild window in five is
#: ignored; with fewer than five windows nothing is cut (the plain mean).
WINDOW_TRIM = 0.2
#: Percentiles of the per-inference latencies reported per model.
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Estimate:
    """A point estimate, the half-width of its confidence interval (NaN below two values) and its count."""

    value: float
    ci: float
    n: int


def robust_estimate(values: np.ndarray, trim: float = WINDOW_TRIM,
                    confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Trimmed mean of per-window values (``scipy.stats.trim_mean``, ``trim`` cut from each end) and the
    Tukey-McLaughlin half-width of its CI; NaN values are ignored; NaN estimate when there are none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), 0)
    value = float(stats.trim_mean(v, trim))
    half = float(trimmed_mean_ci(v, trim, confidence)) if v.size >= 2 else float("nan")
    return Estimate(value, half, int(v.size))


def paired_saved_pct(base: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per-round saving of a model against the base model measured in the same round, in percent:
    ``100 * (1 - value_r / base_r)``; NaN where either is missing (invalid window) or the base is 0."""
    b = np.asarray(base, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 100.0 * (1.0 - v / b)
    return np.where(np.isfinite(out) & (b != 0), out, np.nan)


def saved_estimate(base: np.ndarray, value: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Saving (percent) with its CI from paired per-round ratios: the mean of :func:`paired_saved_pct` over
    the rounds where both windows are valid and the Student-t half-width (``scipy.stats.t``) of that mean.
    Pairing within a round cancels drift slower than a round (load, temperature, battery)."""
    s = paired_saved_pct(base, value)
    s = s[np.isfinite(s)]
    n = int(s.size)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    mean = float(s.mean())
    if n < 2:
        return Estimate(mean, float("nan"), n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * s.std(ddof=1) / np.sqrt(n))
    return Estimate(mean, half, n)


def latency_percentiles(latencies_ms: np.ndarray, qs: tuple[int, ...] = PERCENTILES) -> dict[str, float | None]:
    """``{"latency_p50_ms": ..., ...}`` of the pooled per-inference latencies (linear interpolation, numpy's
    default); None for every key when there are no finite latencies."""
    a = np.asarray(latencies_ms, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {f"latency_p{q}_ms": None for q in qs}
    vals = np.percentile(a, qs)
    return {f"latency_p{q}_ms": float(x) for q, x in zip(qs, vals, strict=True)}


@dataclass(frozen=True)
class Phases:
    """What a runner did before its timed inferences (milliseconds; None when not known).

    ``load_ms``: from the runner's start to its first inference (program and method load, input set-up);
    ``first_inference_ms``: the first execution (cold caches, delegate set-up); ``warmup_ms``: all the
    untimed warm-up executions together (the first one included)."""

    load_ms: float | None = None
    first_inference_ms: float | None = None
    warmup_ms: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def phases_of(load_ms: float | None, warmup_latencies_ms: np.ndarray, latencies_ms: np.ndarray) -> Phases:
    """The phases of one run from its load time and its warm-up and timed latencies (first = the first of all)."""
    w = np.asarray(warmup_latencies_ms, dtype=np.float64).ravel()
    t = np.asarray(latencies_ms, dtype=np.float64).ravel()
    first = float(w[0]) if w.size else (float(t[0]) if t.size else None)
    load = None if load_ms is None or not np.isfinite(load_ms) else float(load_ms)
    return Phases(load, first, float(w.sum()) if w.size else 0.0)

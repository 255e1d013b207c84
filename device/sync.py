"""Sync signature: what the phone runs to mark a window, and how analysis finds it in a 5 kHz trace.

Protocol (works on real phones and on the virtual one, see docs/seams.md): before the workload the runner
runs :func:`marker_command` ``("start")`` on the phone, after it :func:`marker_command` ``("end")``.  Each is a
shell line of ``sleep`` gaps and one-thread ``dd if=/dev/zero of=/dev/null`` busy bursts in a fixed pattern:

    start:  quiet 60 ms | busy 40 | quiet 40 | busy 80 | quiet 40 | busy 40 | quiet 60 ms
    end:    quiet 60 ms | busy 80 | quiet 40 | busy 40 | quiet 40 | busy 80 | quiet 60 ms

The virtual phone's ``dd`` spins ``bs*count/1e9`` s ("1 GB/s"); a real phone's ``dd`` is faster or slower, so
the finder also searches a range of burst-length scales (``busy_scales``); the ``sleep`` gaps are exact.

Finding: normalised cross-correlation (Pearson per lag, numerator by FFT, denominator by cumulative sums)
of the current trace with the 0/1 busy template, best over lags and scales (a parabola through the peak
gives a sub-sample lag).  The template only locates the pattern: the window boundary ("sync point") is then
measured on the trace itself, at the end of the start marker's last burst and the start of the end marker's
first burst (a two-level step fit finds the sample, the partly busy samples' level gives the fraction), so
a phone whose ``sleep``/``dd`` run longer than nominal still syncs to the sample.  Host timestamps are only the fallback and the search centre;
the difference between found and host-estimated sync points is reported as the sync error.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import numpy as np
from scipy import signal

from device.errors import MeasurementError, UsageError

GUARD_S = 0.060
#: How far from the template's nominal edge the measured edge may be (bursts and gaps are >= 40 ms).
EDGE_SEARCH_S = 0.015
PATTERNS: dict[str, tuple[tuple[float, float], ...]] = {
    # (busy_s, quiet_s after it); the last burst is followed by the guard
    "start": ((0.040, 0.040), (0.080, 0.040), (0.040, 0.0)),
    "end": ((0.080, 0.040), (0.040, 0.040), (0.080, 0.0)),
}
DD_BLOCK_BYTES = 1_000_000
VIRTUAL_DD_BYTES_PER_S = 1e9
REAL_PHONE_SCALES = tuple(float(s) for s in np.geomspace(0.05, 4.0, 41))


def _pattern(kind: str) -> tuple[tuple[float, float], ...]:
    try:
        return PATTERNS[kind]
    except KeyError:
        raise UsageError(f"marker kind must be one of {', '.join(PATTERNS)}, not {kind!r}") from None


def marker_duration_s(kind: str, busy_scale: float = 1.0) -> float:
    """Length of a marker including both guards."""
    return 2 * GUARD_S + sum(b * busy_scale + q for b, q in _pattern(kind))


def marker_command(kind: str = "start", dd_bytes_per_s: float = VIRTUAL_DD_BYTES_PER_S) -> str:
    """Shell text that draws the marker on the phone (``sleep`` and ``dd`` only, every word quoted)."""
    parts = [f"sleep {GUARD_S:g}"]
    for busy_s, quiet_s in _pattern(kind):
        count = max(1, int(round(busy_s * dd_bytes_per_s / DD_BLOCK_BYTES)))
        parts.append(
            " ".join(shlex.quote(w) for w in ("dd", "if=/dev/zero", "of=/dev/null", f"bs={DD_BLOCK_BYTES}", f"count={count}"))
        )
        if quiet_s > 0:
            parts.append(f"sleep {quiet_s:g}")
    parts.append(f"sleep {GUARD_S:g}")
    return "; ".join(parts)


def marker_busy_intervals(kind: str, t0_s: float, busy_scale: float = 1.0) -> list[tuple[float, float]]:
    """Busy intervals (start, end) of a marker whose first guard starts at ``t0_s``."""
    t = t0_s + GUARD_S
    out = []
    for busy_s, quiet_s in _pattern(kind):
        out.append((t, t + busy_s * busy_scale))
        t += busy_s * busy_scale + quiet_s
    return out


def marker_template(kind: str, rate_hz: float, busy_scale: float = 1.0) -> np.ndarray:
    """The 0/1 busy template of a marker at ``rate_hz`` (each sample = busy fraction of its interval)."""
    n = int(math.ceil(marker_duration_s(kind, busy_scale) * rate_hz))
    edges = np.arange(n + 1) / rate_hz
    tpl = np.zeros(n)
    for a, b in marker_busy_intervals(kind, 0.0, busy_scale):
        tpl += np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0, None) * rate_hz
    return tpl


@dataclass(frozen=True)
class MarkerMatch:
    """A marker found in a trace (times in seconds on the trace's time axis)."""

    kind: str
    marker_start_s: float  # start of the first guard
    first_burst_s: float
    last_burst_end_s: float
    sync_point_s: float  # window boundary: end of last burst (start marker) / first burst (end marker)
    score: float  # normalised cross-correlation, 1 = perfect
    busy_scale: float
    sync_error_s: float | None = None  # found sync point - host estimate


def normalized_xcorr(x: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``template`` with every window of ``x`` (valid lags), vectorised."""
    x = np.asarray(x, dtype=np.float64)
    m = template.size
    if x.size < m:
        return np.zeros(0)
    w = template - template.mean()
    wn = float(np.sqrt(np.sum(w**2)))
    if wn == 0:
        raise UsageError("marker template is flat")
    w = w / wn
    num = signal.correlate(x, w, mode="valid", method="fft")
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    s1 = c1[m:] - c1[:-m]
    s2 = c2[m:] - c2[:-m]
    var = np.maximum(s2 - s1 * s1 / m, 0.0)
    den = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 1e-12 * max(1.0, float(np.max(np.abs(x)))), num / den, 0.0)
    return r


def dense_grid(sample_index: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Put samples on their index grid (missing ones NaN); returns the array and the first index."""
    idx = np.asarray(sample_index, dtype=np.int64)
    if idx.size == 0:
        return np.zeros(0), 0
    out = np.full(int(idx[-1] - idx[0]) + 1, np.nan)
    out[idx - idx[0]] = values
    return out, int(idx[0])


def find_marker(
    current_a: np.ndarray,
    rate_hz: float,
    kind: str,
    t_offset_s: float = 0.0,
    expected_sync_s: float | None = None,
    search_s: float | None = 1.0,
    busy_scales: tuple[float, ...] = (1.0,),
    min_score: float = 0.6,
    sample_index: np.ndarray | None = None,
) -> MarkerMatch:
    """Find the ``kind`` marker in ``current_a`` (sample 0 at ``t_offset_s``).

    With ``expected_sync_s`` (the host's estimate of the sync point) the search is limited to
    ``+- search_s`` around it and the sync error is reported.  With ``sample_index`` (gaps = dropped
    samples) the samples are first put back on their time grid.  Raises MeasurementError when no lag
    correlates better than ``min_score``.
    """
    x = np.asarray(current_a, dtype=np.float64)
    if sample_index is not None:
        x, first = dense_grid(sample_index, x)
        t_offset_s = t_offset_s + first / rate_hz
    lo = 0
    if expected_sync_s is not None and search_s is not None:
        pad = search_s + marker_duration_s(kind, max(busy_scales))
        lo = max(int((expected_sync_s - t_offset_s - pad) * rate_hz), 0)
        hi = min(int(math.ceil((expected_sync_s - t_offset_s + pad) * rate_hz)), x.size)
        x = x[lo:hi]
    finite = np.isfinite(x)
    if not finite.all():
        x = np.where(finite, x, np.nanmedian(x) if finite.any() else 0.0)
    best: tuple[float, float, float] | None = None  # score, lag, scale
    for scale in busy_scales:
        tpl = marker_template(kind, rate_hz, scale)
        r = normalized_xcorr(x, tpl)
        if r.size == 0:
            continue
        k = int(np.argmax(r))
        lag = float(k)
        if 0 < k < r.size - 1:
            y0, y1, y2 = r[k - 1], r[k], r[k + 1]
            den = y0 - 2 * y1 + y2
            if den < 0:
                lag = k + 0.5 * (y0 - y2) / den
        if best is None or r[k] > best[0]:
            best = (float(r[k]), lag, float(scale))
    if best is None or best[0] < min_score:
        where = "" if expected_sync_s is None else f" near {expected_sync_s:.3f} s"
        got = "nothing to search" if best is None else f"best correlation {best[0]:.2f}"
        raise MeasurementError(f"{kind} sync marker not found{where} ({got} < {min_score})")
    score, lag, scale = best
    t0 = t_offset_s + (lo + lag) / rate_hz
    bursts = marker_busy_intervals(kind, t0, scale)
    # the template fixes the pattern; the boundary itself is measured where the trace crosses (a phone's
    # sleep and dd do not last exactly their nominal time)
    # +-15 ms: a loaded phone's sleep/dd overrun by several ms, while the nearest other edge is 40 ms away
    search = max(40, int(EDGE_SEARCH_S * rate_hz))
    first = refine_edge(x, (bursts[0][0] - t_offset_s) * rate_hz - lo, rising=True, search=search)
    last = refine_edge(x, (bursts[-1][1] - t_offset_s) * rate_hz - lo, rising=False, search=search)
    first_s = t_offset_s + (lo + first) / rate_hz if first is not None else bursts[0][0]
    last_s = t_offset_s + (lo + last) / rate_hz if last is not None else bursts[-1][1]
    sync = last_s if kind == "start" else first_s
    err = None if expected_sync_s is None else sync - expected_sync_s
    return MarkerMatch(kind, t0, first_s, last_s, sync, score, scale, err)


def refine_edge(x: np.ndarray, approx: float, rising: bool, search: int = 40, half: int = 2) -> float | None:
    """Sub-sample position (in samples) of the step nearest ``approx`` in ``x``.

    A two-level fit (cumulative sums, every split at once) finds the step within ``+- search`` samples; the
    levels are the medians on each side; the edge is then the integral of the busy fraction over
    ``+- half`` samples around it (each sample is the mean over its interval, so a partly busy sample
    counts its fraction).  None when the step is not clear.
    """
    a = max(int(round(approx)) - search, 0)
    b = min(int(round(approx)) + search, x.size)
    seg = x[a:b]
    if seg.size < 8:
        return None
    n = seg.size
    c1 = np.cumsum(seg)
    c2 = float(np.sum(seg * seg))
    k = np.arange(1, n)
    left = c1[:-1]
    right = c1[-1] - left
    sse = c2 - left**2 / k - right**2 / (n - k)
    s = int(k[np.argmin(sse)])  # first sample of the new level
    lo_side, hi_side = (seg[:s], seg[s:]) if rising else (seg[s:], seg[:s])
    if lo_side.size < 3 or hi_side.size < 3:
        return None
    low = float(np.median(lo_side[:-2] if rising else lo_side[2:]))
    high = float(np.median(hi_side[2:] if rising else hi_side[:-2]))
    if not high > low:
        return None
    g0 = max(a + s - half, 0)
    g1 = min(a + s + half, x.size)
    frac = np.clip((x[g0:g1] - low) / (high - low), 0.0, 1.0)
    if rising:
        return float(g1 - np.sum(frac))
    return float(g0 + np.sum(frac))

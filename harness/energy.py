"""Trace analysis: window energy with confidence intervals, idle subtraction, marginal energy, integrity gate.

Pure functions on arrays (and one streaming accumulator that sees each chunk once), vectorised with numpy.

Definitions (rate r, window ``[a, b)`` in seconds from the first sample):

* the window holds samples ``i`` with ``a <= i / r < b`` (sample i covers ``[i/r, (i+1)/r)``); expected
  ``ceil(b r) - ceil(a r)``; ``dropped`` = expected - received;
* ``mean_power_w`` = mean of ``I V`` over received, sane samples; ``energy_j`` = mean power x ``(b - a)``, so
  dropped samples do not bias the energy (they widen nothing, they are reported and gated);
* CI of the mean power, from the sample noise: the noise variance is estimated from successive differences,
  ``sigma^2 = sum((p[i+1]-p[i])^2) / (2 (n-1))``, which the workload's steps barely touch, and
  ``se = sigma / sqrt(n)``; 95% CI with 1.96.  (The batch-means error over 32 batches, which also counts the
  workload's own variation, is kept as ``mean_power_batch_se_w``; voltage drift is read from the batch means.)
* idle power: mean of the idle windows bracketing the window (last one before, first one after); its
  standard error combines both windows' errors and, for two windows, the drift between them as a uniform
  spread: ``se^2 = (se_b^2 + se_a^2)/4 + (m_b - m_a)^2/12``;
* ``net_energy_j`` = energy - idle power x duration, ``se^2 = se_E^2 + (duration se_idle)^2``, 95% CI with 1.96;
* marginal energy per inference: the least-squares slope of net energy over runs of N, 2N, 4N inferences
  (start-up, model load and tail energy go into the intercept), next to each run's ratio net / N.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.errors import UsageError

Z95 = 1.959963984540054
DEFAULT_BATCHES = 32


@dataclass(frozen=True)
class IntegrityGate:
    """Thresholds under which a window is invalid (every failing check gives a reason)."""

    min_received_frac: float = 0.99
    max_dropped_samples: int | None = None
    require_calibrated: bool = True
    max_usb_current_a: float = 0.005
    max_voltage_drift_frac: float = 0.02
    max_current_a: float = 15.625  # HVPM full scale: anything above is absurd
    max_bad_samples: int = 0
    min_samples: int = 2


@dataclass(frozen=True)
class WindowStats:
    """What one window of a trace says, with its integrity verdict."""

    start_s: float
    end_s: float
    duration_s: float
    expected_samples: int
    samples: int
    dropped: int
    bad_samples: int
    mean_power_w: float
    mean_power_se_w: float
    mean_power_batch_se_w: float
    mean_power_ci_w: tuple[float, float]
    energy_j: float
    energy_se_j: float
    energy_ci_j: tuple[float, float]
    mean_voltage_v: float
    voltage_drift_frac: float
    calibrated: bool
    usb_current_a_max: float
    valid: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)


def window_index_range(start_s: float, end_s: float, rate_hz: float, first_index: int = 0) -> tuple[int, int]:
    """Sample indices ``[i0, i1)`` of a window given in seconds from sample ``first_index``."""
    i0 = first_index + int(math.ceil(start_s * rate_hz - 1e-6))
    i1 = first_index + int(math.ceil(end_s * rate_hz - 1e-6))
    return i0, i1


def parse_window(text: str, what: str = "--window") -> tuple[float, float]:
    """Parse ``START:END`` (seconds) into floats; one clear UsageError on anything odd."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise UsageError(f"{what}: {text!r} is not START:END (seconds from the first sample)")
    try:
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not START:END with numbers") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0:
        raise UsageError(f"{what}: {text!r}: times must be finite and >= 0")
    if b <= a:
        raise UsageError(f"{what}: {text!r} is empty (END must be after START)")
    return a, b


def _prefix_at(arr: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``sum(arr[:q])`` for every ``q`` in ``pos`` (0 <= q <= len(arr)), in float64, with one reduceat pass."""
    u, inv = np.unique(pos.ravel(), return_inverse=True)
    m = arr.size
    inner = u[u < m]
    vals = np.empty(u.size, dtype=np.float64)
    if inner.size:
        head = float(np.sum(arr[: inner[0]], dtype=np.float64)) if inner[0] > 0 else 0.0
        seg = np.add.reduceat(arr, inner, dtype=np.float64)
        cs = head + np.concatenate(([0.0], np.cumsum(seg)))
        vals[: inner.size] = cs[:-1]
        vals[inner.size :] = cs[-1]
    else:
        vals[:] = float(np.sum(arr, dtype=np.float64))
    return vals[inv].reshape(pos.shape)


class WindowAccumulator:
    """Streams trace chunks once and accumulates prefix sums at every batch boundary of every window."""

    def __init__(
        self,
        windows: Sequence[tuple[float, float]],
        rate_hz: float,
        first_index: int = 0,
        batches: int = DEFAULT_BATCHES,
        gate: IntegrityGate | None = None,
    ):
        self.windows = [(float(a), float(b)) for a, b in windows]
        self.rate_hz = float(rate_hz)
        self.gate = gate or IntegrityGate()
        rng = np.array([window_index_range(a, b, rate_hz, first_index) for a, b in self.windows], dtype=np.int64)
        self.i0 = rng[:, 0] if len(rng) else np.zeros(0, np.int64)
        self.i1 = rng[:, 1] if len(rng) else np.zeros(0, np.int64)
        frac = np.linspace(0.0, 1.0, batches + 1)
        self.bounds = self.i0[:, None] + np.rint((self.i1 - self.i0)[:, None] * frac[None, :]).astype(np.int64)
        shape = self.bounds.shape
        self.s_p = np.zeros(shape)
        self.s_n = np.zeros(shape)
        self.s_v = np.zeros(shape)
        self.s_bad = np.zeros(shape)
        self.s_d2 = np.zeros(shape)
        self.s_nd = np.zeros(shape)
        self.uncal = np.zeros(len(self.windows), dtype=bool)
        self.usb_max = np.full(len(self.windows), np.nan)
        self.first_seen: int | None = None
        self.last_seen = 0
        self.total_samples = 0

    def feed(self, start_index: int, current_a: np.ndarray, voltage_v: np.ndarray, calibrated: bool = True,
             usb_current_a: float = float("nan")) -> None:
        """Add one contiguous chunk of samples (a handful of passes over it; no Python loop over samples)."""
        n = int(current_a.size)
        if n == 0:
            return
        if self.first_seen is None:
            self.first_seen = start_index
        self.last_seen = start_index + n
        self.total_samples += n
        end = start_index + n
        if not len(self.windows):
            return
        overlap = (self.i1 > start_index) & (self.i0 < end)
        if not overlap.any():
            return
        cur = np.asarray(current_a)
        vol = np.asarray(voltage_v)
        pos = np.clip(self.bounds - start_index, 0, n)
        p = np.multiply(cur, vol, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            cmin, cmax, vmin, vmax = cur.min(), cur.max(), vol.min(), vol.max()
            clean = bool(cmin >= 0 and cmax <= self.gate.max_current_a and vmin > 0 and np.isfinite(vmax))
        if clean:
            self.s_n += pos
            vsum = vol
        else:
            ok = np.isfinite(cur) & np.isfinite(vol) & (cur >= 0) & (cur <= self.gate.max_current_a) & (vol > 0)
            p[~ok] = 0.0
            n_ok = _prefix_at(ok, pos)
            self.s_n += n_ok
            self.s_bad += pos - n_ok
            vsum = np.where(ok, vol, 0.0)
        self.s_p += _prefix_at(p, pos)
        self.s_v += _prefix_at(vsum, pos)
        # successive differences: pair j = samples (j, j+1); a window [a, b) holds pairs a .. b-2
        d = np.diff(p)
        d *= d
        pos_d = np.clip(pos - 1, 0, n - 1)
        if clean:
            self.s_nd += pos_d
        else:
            okd = ok[1:] & ok[:-1]
            d[~okd] = 0.0
            self.s_nd += _prefix_at(okd, pos_d)
        self.s_d2 += _prefix_at(d, pos_d)
        if not calibrated:
            self.uncal |= overlap
        if np.isfinite(usb_current_a):
            self.usb_max = np.where(overlap, np.fmax(self.usb_max, usb_current_a), self.usb_max)

    def results(self) -> list[WindowStats]:
        """Per-window statistics and integrity verdicts."""
        out = []
        g = self.gate
        bp = np.diff(self.s_p, axis=1)
        bn = np.diff(self.s_n, axis=1)
        bv = np.diff(self.s_v, axis=1)
        for w, (a, b) in enumerate(self.windows):
            expected = int(self.i1[w] - self.i0[w])
            n_ok = int(round(self.s_n[w, -1] - self.s_n[w, 0]))
            bad = int(round(self.s_bad[w, -1] - self.s_bad[w, 0]))
            received = n_ok + bad
            dropped = expected - received
            duration = b - a
            reasons: list[str] = []
            if n_ok >= 1:
                mean_p = float((self.s_p[w, -1] - self.s_p[w, 0]) / n_ok)
                mean_v = float((self.s_v[w, -1] - self.s_v[w, 0]) / n_ok)
            else:
                mean_p = mean_v = float("nan")
            has = bn[w] > 0
            bm = bp[w][has] / bn[w][has]
            k = int(has.sum())
            if k >= 2 and n_ok >= 2:
                wts = bn[w][has] / bn[w][has].sum()
                se_b = float(math.sqrt(np.sum(wts**2 * (bm - mean_p) ** 2) * k / (k - 1)))
                vm = bv[w][has] / bn[w][has]
                drift = float((vm.max() - vm.min()) / mean_v) if mean_v > 0 else float("nan")
            else:
                se_b, drift = float("nan"), float("nan")
            nd = self.s_nd[w, -1] - self.s_nd[w, 0]
            if nd >= 1 and n_ok >= 2:
                se = float(math.sqrt((self.s_d2[w, -1] - self.s_d2[w, 0]) / (2.0 * nd) / n_ok))
            else:
                se = float("nan")
            ci_p = (mean_p - Z95 * se, mean_p + Z95 * se)
            energy = mean_p * duration
            if self.first_seen is None or self.i0[w] < self.first_seen or self.i1[w] > self.last_seen:
                have = "no samples" if self.first_seen is None else (
                    f"samples {self.first_seen / self.rate_hz:.4f}..{self.last_seen / self.rate_hz:.4f} s")
                reasons.append(f"window {a:g}:{b:g} s is outside the trace ({have})")
            if received < g.min_received_frac * expected:
                reasons.append(
                    f"received {received}/{expected} samples ({100 * received / max(expected, 1):.1f}% < "
                    f"{100 * g.min_received_frac:.1f}%)"
                )
            if g.max_dropped_samples is not None and dropped > g.max_dropped_samples:
                reasons.append(f"{dropped} dropped samples > {g.max_dropped_samples}")
            if bad > g.max_bad_samples:
                reasons.append(f"{bad} samples NaN, negative or above {g.max_current_a:g} A")
            if n_ok < g.min_samples:
                reasons.append(f"only {n_ok} usable samples")
            if g.require_calibrated and self.uncal[w]:
                reasons.append("monitor not calibrated during the window")
            usb = float(self.usb_max[w])
            if math.isfinite(usb) and usb > g.max_usb_current_a:
                reasons.append(f"USB channel current {usb:.4f} A > {g.max_usb_current_a:g} A (USB passthrough on?)")
            if math.isfinite(drift) and drift > g.max_voltage_drift_frac:
                reasons.append(f"voltage drift {100 * drift:.2f}% > {100 * g.max_voltage_drift_frac:.2f}%")
            out.append(
                WindowStats(
                    start_s=a, end_s=b, duration_s=duration, expected_samples=expected, samples=received,
                    dropped=dropped, bad_samples=bad, mean_power_w=mean_p, mean_power_se_w=se,
                    mean_power_batch_se_w=se_b,
                    mean_power_ci_w=ci_p, energy_j=energy, energy_se_j=se * duration,
                    energy_ci_j=(ci_p[0] * duration, ci_p[1] * duration), mean_voltage_v=mean_v,
                    voltage_drift_frac=drift, calibrated=not bool(self.uncal[w]), usb_current_a_max=usb,
                    valid=not reasons, reasons=tuple(reasons),
                )
            )
        return out


def analyse_windows(
    chunks: Iterable,
    windows: Sequence[tuple[float, float]],
    rate_hz: float,
    first_index: int = 0,
    batches: int = DEFAULT_BATCHES,
    gate: IntegrityGate | None = None,
) -> list[WindowStats]:
    """Window statistics of a chunk stream (``TraceChunk``-like: start_index, current_a, voltage_v, ...)."""
    acc = WindowAccumulator(windows, rate_hz, first_index, batches, gate)
    for c in chunks:
        acc.feed(c[0], c[1], c[2], *(tuple(c[3:5]) if len(c) > 3 else ()))
    return acc.results()


def window_stats_from_arrays(
    current_a: np.ndarray, voltage_v: np.ndarray, rate_hz: float, windows: Sequence[tuple[float, float]],
    sample_index: np.ndarray | None = None, gate: IntegrityGate | None = None, batches: int = DEFAULT_BATCHES,
) -> list[WindowStats]:
    """Convenience: statistics of windows of in-memory arrays (``sample_index`` gaps = dropped samples)."""
    cur = np.asarray(current_a)
    vol = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), cur.shape)
    if sample_index is None:
        chunks = [(0, cur, vol)]
        first = 0
    else:
        idx = np.asarray(sample_index, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        b = np.concatenate(([0], breaks, [idx.size]))
        chunks = [(int(idx[s]), cur[s:e], vol[s:e]) for s, e in zip(b[:-1], b[1:], strict=True) if e > s]
        first = int(idx[0]) if idx.size else 0
    return analyse_windows(chunks, windows, rate_hz, first, batches, gate)


@dataclass(frozen=True)
class NetEnergy:
    """Window energy minus the idle baseline, with 95% CIs."""

    idle_power_w: float
    idle_power_se_w: float
    idle_power_ci_w: tuple[float, float]
    net_energy_j: float
    net_energy_se_j: float
    net_energy_ci_j: tuple[float, float]
    idle_windows: tuple[int, ...]
    valid: bool
    reasons: tuple[str, ...] = ()


def bracketing_idle(window: WindowStats, idles: Sequence[WindowStats]) -> list[int]:
    """Indices of the idle windows bracketing ``window``: the last one ending before it starts and the first
    one starting after it ends (one side only when the other does not exist; all of them when none brackets)."""
    before = [i for i, w in enumerate(idles) if w.end_s <= window.start_s + 1e-12]
    after = [i for i, w in enumerate(idles) if w.start_s >= window.end_s - 1e-12]
    pick = []
    if before:
        pick.append(max(before, key=lambda i: idles[i].end_s))
    if after:
        pick.append(min(after, key=lambda i: idles[i].start_s))
    return pick or list(range(len(idles)))


def idle_power(idles: Sequence[WindowStats]) -> tuple[float, float]:
    """Idle power (W) and its standard error from one or two (or more) idle windows."""
    m = np.array([w.mean_power_w for w in idles], dtype=np.float64)
    se = np.array([w.mean_power_se_w for w in idles], dtype=np.float64)
    se = np.where(np.isfinite(se), se, 0.0)
    k = m.size
    mean = float(m.mean())
    var = float(np.sum(se**2)) / k**2
    if k >= 2:
        var += float((m.max() - m.min()) ** 2) / 12.0
    return mean, math.sqrt(var)


def net_energy(window: WindowStats, idles: Sequence[WindowStats]) -> NetEnergy:
    """Net energy of ``window`` over the idle baseline of its bracketing idle windows."""
    if not idles:
        raise UsageError("net energy needs at least one idle window")
    pick = bracketing_idle(window, idles)
    chosen = [idles[i] for i in pick]
    p_idle, se_idle = idle_power(chosen)
    net = window.energy_j - p_idle * window.duration_s
    se_e = window.energy_se_j if math.isfinite(window.energy_se_j) else 0.0
    se_net = math.sqrt(se_e**2 + (window.duration_s * se_idle) ** 2)
    reasons = list(window.reasons)
    for i, w in zip(pick, chosen, strict=True):
        reasons.extend(f"idle window {i + 1}: {r}" for r in w.reasons)
    return NetEnergy(
        idle_power_w=p_idle, idle_power_se_w=se_idle,
        idle_power_ci_w=(p_idle - Z95 * se_idle, p_idle + Z95 * se_idle),
        net_energy_j=net, net_energy_se_j=se_net, net_energy_ci_j=(net - Z95 * se_net, net + Z95 * se_net),
        idle_windows=tuple(pick), valid=not reasons, reasons=tuple(reasons),
    )


@dataclass(frozen=True)
class MarginalEnergy:
    """Energy per inference from runs of N, 2N, 4N...: slope of net energy over N, and each run's ratio."""

    slope_j: float
    slope_se_j: float
    slope_ci_j: tuple[float, float]
    intercept_j: float
    ratio_j: tuple[float, ...]
    ratio_ci_j: tuple[tuple[float, float], ...]
    inferences: tuple[int, ...]


def marginal_energy(inferences: Sequence[int], net_energy_j: Sequence[float],
                    net_energy_se_j: Sequence[float] | None = None) -> MarginalEnergy:
    """Least-squares slope of net energy over inference counts (needs two or more distinct counts).

    Its standard error is the larger of the propagated measurement error and, with three or more runs, the
    residual scatter; the 95% CI uses Student t with n-2 degrees of freedom when the residuals decide.
    """
    x = np.asarray(inferences, dtype=np.float64)
    y = np.asarray(net_energy_j, dtype=np.float64)
    se = np.zeros_like(y) if net_energy_se_j is None else np.asarray(net_energy_se_j, dtype=np.float64)
    if x.size != y.size or x.size != se.size:
        raise UsageError("marginal energy: inference counts and energies differ in length")
    if x.size < 2 or np.unique(x).size < 2:
        raise UsageError("marginal energy needs runs of at least two different inference counts (N, 2N, 4N)")
    if np.any(x <= 0):
        raise UsageError("marginal energy: inference counts must be positive")
    xm = x.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (y - y.mean())) / sxx)
    intercept = float(y.mean() - slope * xm)
    se_meas = math.sqrt(float(np.sum(((x - xm) / sxx) ** 2 * se**2)))
    q = Z95
    se_slope = se_meas
    if x.size > 2:
        resid = y - (intercept + slope * x)
        se_res = math.sqrt(float(np.sum(resid**2)) / (x.size - 2) / sxx)
        if se_res > se_meas:
            from scipy import stats  # only here: keeps scipy.stats out of every command's start-up

            se_slope = se_res
            q = float(stats.t.ppf(0.975, x.size - 2))
    ratio = y / x
    rse = se / x
    return MarginalEnergy(
        slope_j=slope, slope_se_j=se_slope, slope_ci_j=(slope - q * se_slope, slope + q * se_slope),
        intercept_j=intercept, ratio_j=tuple(float(r) for r in ratio),
        ratio_ci_j=tuple((float(r - Z95 * s), float(r + Z95 * s)) for r, s in zip(ratio, rse, strict=True)),
        inferences=tuple(int(v) for v in x),
    )

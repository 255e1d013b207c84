"""The one analysis path of a measured window: sync, integrity gate, energy, idle subtraction, per inference.

Every window is analysed by :func:`analyse_window` — ``harness run`` (the phone backends, on the window's
in-memory trace) and ``harness energy`` (on a trace file) alike — so a window is valid or invalid for the
same reasons wherever it is read.  Tables and reports read the stored results; the idle subtraction they
apply across stored windows is :func:`energy_per_inference_mj`, the same formula :func:`analyse_window`
applies within one trace (:func:`harness.energy.net_energy`).

Steps of :func:`analyse_window` (times in seconds from the trace's first expected sample):

1. *What the harness knows.*  ``WindowMarks.phone_state`` carries why the harness does not know the phone
   ran as planned (e.g. an earlier runner whose end was never seen); non-empty makes the window invalid.
2. *Sync.*  With ``WindowMarks.sync`` the start and end markers (``device.sync``) are searched near the host
   estimates; found, their sync points are the window's ends.  Not found, the host estimates are used only
   when their error bound (``host_error_s``) is known and at most ``max_host_sync_error_frac`` of the
   window; otherwise the window is invalid, and the bound is stated in the reason.
3. *Span.*  With ``inference_s`` (the timed inferences' total) the energy span is the last
   ``inference_s`` seconds before the end marker's guard (program load and warm-up come first and are left
   out); otherwise the whole window.
4. *Integrity gate and energy* (:class:`harness.energy.IntegrityGate`, :class:`harness.energy.WindowAccumulator`):
   dropped and bad samples, calibration, USB current, voltage drift; energy = mean power x span.
5. *Idle subtraction and per inference*, when idle windows of the same trace are given
   (:func:`harness.energy.net_energy`): net energy and, with ``n_inferences``, net energy per inference.

The numerics are pure functions over arrays; the trace is anything with ``rate_hz``, ``first_index`` and
``iter_chunks(i0, i1)`` yielding ``(start_index, current_a, voltage_v[, calibrated, usb_current_a])`` —
a trace file reader (``device.tracefile``) or :class:`ArraySource` (in-memory arrays, ``device.power.Trace``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from device.errors import MeasurementError
from harness.energy import IntegrityGate, NetEnergy, WindowStats, analyse_windows, net_energy

if TYPE_CHECKING:
    from device.sync import MarkerMatch


@dataclass(frozen=True)
class WindowLimits:
    """What a valid window must satisfy beyond the samples' integrity gate."""

    gate: IntegrityGate = field(default_factory=IntegrityGate)
    #: the host-timestamp fallback is trusted only when its error bound is at most this fraction of the span
    max_host_sync_error_frac: float = 0.01
    sync_search_s: float = 1.0
    busy_scales: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class WindowMarks:
    """What the harness knows of one window: host estimates of its ends and what ran in it.

    ``start_s``/``end_s``: the window (with ``sync``: the host's estimates of the start and end sync
    points), seconds from the trace's first expected sample.  ``host_error_s``: a bound on each host
    estimate's error (None: unknown).  ``inference_s``: total of the timed inferences (None: the energy
    span is the whole window).  ``phone_state``: why the phone may not have been idle/busy as planned
    ("" when the harness knows it was).
    """

    start_s: float
    end_s: float
    kind: str = "inference"
    sync: bool = False
    host_error_s: float | None = None
    inference_s: float | None = None
    n_inferences: int = 0
    phone_state: str = ""


@dataclass(frozen=True)
class WindowAnalysis:
    """The result of :func:`analyse_window`."""

    kind: str
    window_s: tuple[float, float]  # after sync: [start sync point, end sync point] (or the given window)
    span_s: tuple[float, float]  # the span the energy refers to
    stats: WindowStats  # the integrity gate's statistics of the span
    sync: str  # markers | host | none
    sync_error_bound_s: float | None
    markers: dict[str, MarkerMatch]
    phases: tuple[tuple[str, float, float], ...]
    net: NetEnergy | None
    n_inferences: int
    valid: bool
    reasons: tuple[str, ...]

    @property
    def energy_j(self) -> float:
        return self.stats.energy_j

    @property
    def mean_power_w(self) -> float:
        return self.stats.mean_power_w

    @property
    def busy_s(self) -> float:
        return self.span_s[1] - self.span_s[0]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def net_energy_per_inference_j(self) -> float | None:
        if self.net is None or self.n_inferences <= 0:
            return None
        return self.net.net_energy_j / self.n_inferences


@dataclass(frozen=True)
class ArraySource:
    """In-memory samples as a trace source: ``sample_index`` (gaps = dropped samples) counts from any origin;
    ``first_index`` is the window's first expected sample (time 0)."""

    sample_index: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    rate_hz: float
    first_index: int = 0
    calibrated: bool = True
    usb_current_a: float = float("nan")

    @classmethod
    def from_trace(cls, tr: Any) -> ArraySource:
        """A ``device.power.Trace`` (time 0 = its first expected sample, ``start_mono_s``)."""
        first = int(round((tr.start_mono_s - tr.anchor_mono_s) * tr.rate_hz)) if math.isfinite(
            tr.start_mono_s) else (int(tr.sample_index[0]) if tr.sample_index.size else 0)
        vol = np.broadcast_to(np.asarray(tr.voltage_v), np.shape(tr.current_a))
        return cls(np.asarray(tr.sample_index, dtype=np.int64), np.asarray(tr.current_a), vol, float(tr.rate_hz),
                   first, bool(tr.calibrated), float(tr.usb_current_a_max))

    def iter_chunks(self, i0: int | None = None, i1: int | None = None) -> Iterator[tuple]:
        """Contiguous runs of samples with index in ``[i0, i1)``."""
        idx = self.sample_index
        sel = np.ones(idx.size, dtype=bool)
        if i0 is not None:
            sel &= idx >= i0
        if i1 is not None:
            sel &= idx < i1
        pos = np.flatnonzero(sel)
        if not pos.size:
            return
        ix = idx[pos]
        breaks = np.flatnonzero((np.diff(ix) != 1) | (np.diff(pos) != 1)) + 1
        bounds = np.concatenate(([0], breaks, [pos.size]))
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            p0, p1 = int(pos[s]), int(pos[e - 1]) + 1
            yield (int(ix[s]), self.current_a[p0:p1], self.voltage_v[p0:p1], self.calibrated, self.usb_current_a)


def _samples_near(src: Any, t_s: float, pad_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(sample index relative to the source's time 0, current) of the samples within ``t_s +- pad_s``."""
    r, first = float(src.rate_hz), int(src.first_index)
    i0 = first + max(int((t_s - pad_s) * r), 0)
    i1 = first + int(math.ceil((t_s + pad_s) * r))
    idx, cur = [], []
    for c in src.iter_chunks(i0, i1):
        n = int(np.asarray(c[1]).size)
        idx.append(np.arange(c[0] - first, c[0] - first + n, dtype=np.int64))
        cur.append(np.asarray(c[1]))
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(idx), np.concatenate(cur)


def find_markers(src: Any, start_s: float, end_s: float, search_s: float = 1.0,
                 busy_scales: tuple[float, ...] = (1.0,)) -> dict[str, MarkerMatch]:
    """The start and end sync markers nearest the host estimates ``start_s``/``end_s`` of their sync points.

    Raises :class:`device.errors.MeasurementError` when either is not found.
    """
    from device import sync as S  # scipy.signal: imported when a window is synced

    found: dict[str, MarkerMatch] = {}
    for kind, t_est in (("start", start_s), ("end", end_s)):
        pad = search_s + S.marker_duration_s(kind, max(busy_scales))
        idx, cur = _samples_near(src, t_est, pad)
        if not idx.size:
            raise MeasurementError(f"{kind} sync marker not found near {t_est:.3f} s (no samples there)")
        found[kind] = S.find_marker(cur, src.rate_hz, kind, expected_sync_s=t_est, search_s=search_s,
                                    busy_scales=busy_scales, sample_index=idx)
    if found["end"].sync_point_s <= found["start"].sync_point_s:
        raise MeasurementError("the end sync marker comes before the start marker")
    return found


def inference_span(a_s: float, b_s: float, inference_s: float | None, guard_s: float) -> tuple[float, float]:
    """The span of the timed inferences: the last ``inference_s`` seconds before ``b_s - guard_s``, not before
    ``a_s`` (program load and warm-up come first); the whole ``[a_s, b_s]`` without ``inference_s``."""
    if inference_s is None:
        return a_s, b_s
    b_inf = b_s - guard_s
    return min(max(a_s, b_inf - float(inference_s)), b_inf), b_inf


def host_sync_reason(error_s: float | None, span_s: float, limit_frac: float, why: str) -> str:
    """The reason a host-timestamp fallback is not trusted ("" when its bound is within the limit)."""
    if error_s is None or not math.isfinite(error_s):
        return f"sync markers not found ({why}); the host-timestamp fallback's error is unknown"
    frac = error_s / span_s if span_s > 0 else math.inf
    if frac <= limit_frac:
        return ""
    return (f"sync markers not found ({why}); host-timestamp error up to {1e3 * error_s:.1f} ms = "
            f"{100 * frac:.1f}% of the {span_s:.3f} s span > {100 * limit_frac:g}%")


def analyse_window(trace: Any, marks: WindowMarks, limits: WindowLimits | None = None,
                   idle_windows_s: Sequence[tuple[float, float]] = ()) -> WindowAnalysis:
    """Analyse one window of ``trace`` (see the module docstring); ``idle_windows_s`` (same time axis) give
    the idle baseline to subtract.  Never raises for a bad window: it comes back invalid with its reasons."""
    lim = limits or WindowLimits()
    reasons: list[str] = [marks.phone_state] if marks.phone_state else []
    a, b = float(marks.start_s), float(marks.end_s)
    how, bound, markers = "none", None, {}
    phases: list[tuple[str, float, float]] = []
    guard = 0.0
    if marks.sync:
        from device.sync import GUARD_S

        guard = GUARD_S
        try:
            markers = find_markers(trace, a, b, lim.sync_search_s, lim.busy_scales)
        except MeasurementError as exc:
            how, bound = "host", marks.host_error_s
            lo, hi = inference_span(a, b, marks.inference_s, guard)
            why = host_sync_reason(bound, hi - lo, lim.max_host_sync_error_frac, str(exc))
            if why:
                reasons.append(why)
        else:
            ms, me = markers["start"], markers["end"]
            a, b, how, bound = ms.sync_point_s, me.sync_point_s, "markers", 0.0
            phases += [("sync", ms.marker_start_s, a), ("sync", b, b + (me.last_burst_end_s - me.first_burst_s))]
    lo, hi = inference_span(a, b, marks.inference_s, guard)
    if marks.inference_s is not None:
        phases += [("warmup", a, lo), ("inference", lo, hi)]
    else:
        phases.append((marks.kind, lo, hi))
    if not hi > lo:
        reasons.append(f"empty span {lo:.4f}..{hi:.4f} s")
        hi = lo + 1.0 / float(trace.rate_hz)  # analysed anyway, for the statistics' shape
    stats = analyse_windows(trace.iter_chunks(), [(lo, hi), *idle_windows_s], trace.rate_hz,
                            int(trace.first_index), gate=lim.gate)
    net = None
    if idle_windows_s:
        net = net_energy(stats[0], stats[1:])
        reasons.extend(net.reasons)
    else:
        reasons.extend(stats[0].reasons)
    return WindowAnalysis(kind=marks.kind, window_s=(a, b), span_s=(lo, hi), stats=stats[0], sync=how,
                          sync_error_bound_s=bound, markers=markers, phases=tuple(phases), net=net,
                          n_inferences=int(marks.n_inferences), valid=not reasons, reasons=tuple(reasons))


def energy_per_inference_mj(energy_j, busy_s, n_inferences, idle_before_w, idle_after_w) -> np.ndarray:
    """Idle subtraction across stored windows: ``(E - busy_s x idle power) / n`` in mJ, the idle power being
    the mean of the bracketing idle windows' mean powers (as :func:`harness.energy.idle_power`); one
    neighbour suffices (the other may be NaN); NaN with none or where n <= 0.  Vectorised."""
    e = np.asarray(energy_j, dtype=np.float64)
    t = np.asarray(busy_s, dtype=np.float64)
    n = np.asarray(n_inferences, dtype=np.float64)
    idle = np.stack([np.asarray(idle_before_w, dtype=np.float64), np.asarray(idle_after_w, dtype=np.float64)])
    cnt = np.isfinite(idle).sum(axis=0)
    p_idle = np.where(cnt > 0, np.nansum(idle, axis=0) / np.maximum(cnt, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (e - t * p_idle) / n * 1000.0
    return np.where(n > 0, out, np.nan)

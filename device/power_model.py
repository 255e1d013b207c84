"""The power model of the virtual lab: busy timeline -> supply current.

The virtual phone appends its activity to ``<root>/busy_timeline.tsv`` (see docs/seams.md): a header line
``# t_mono_s<TAB>busy_threads`` then one line per change.  This module turns that step function into the
current a Monsoon would measure on the phone's battery terminals:

    power_w(t)   = idle_power_w + active_power_per_core_w * min(busy_threads(t), cores)
    current_a(t) = power_w(t) / supply_voltage_v  (+ drift_a_per_s * t + white noise, noise_current_a sd)

A sample of a 5 kHz monitor is the *mean* current over its 200 us interval (the monitor's ADC is filtered), so
the model integrates the step function exactly over each sample interval: the sum of samples / rate is the
exact energy integral, and an edge inside a sample shows as a fractional value.  Every function here is
vectorised over sample times (no Python loop over samples).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.errors import DataError

log = logging.getLogger(__name__)

TIMELINE_HEADER = "# t_mono_s\tbusy_threads"


@dataclass(frozen=True)
class PowerModelProfile:
    """Parameters of the virtual phone's power draw (loadable from a TOML ``[power]`` table)."""

    name: str = "nexus4-virtual"
    supply_voltage_v: float = 4.2
    idle_power_w: float = 0.85
    active_power_per_core_w: float = 0.70
    cores: int = 4
    noise_current_a: float = 0.010
    drift_a_per_s: float = 0.0
    usb_passthrough_current_a: float = 0.100
    drop_every_packets: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "supply_voltage_v": 0.5 <= self.supply_voltage_v <= 13.5,
            "idle_power_w": 0 <= self.idle_power_w < 50,
            "active_power_per_core_w": 0 <= self.active_power_per_core_w < 50,
            "cores": 1 <= self.cores <= 64,
            "noise_current_a": 0 <= self.noise_current_a < 5,
            "drop_every_packets": self.drop_every_packets >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise DataError(f"power profile {self.name!r}: out-of-range value(s) for {', '.join(bad)}")


    def power_w(self, busy_threads: np.ndarray) -> np.ndarray:
        """Noise-free power for a number of busy threads (array)."""
        busy = np.clip(np.asarray(busy_threads, dtype=np.float64), 0, self.cores)
        return self.idle_power_w + self.active_power_per_core_w * busy


def read_busy_timeline(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a busy timeline file into ``(t_mono_s, busy_threads)`` arrays (sorted by time).

    A missing file is an empty timeline (the phone has done nothing yet); a malformed line is a DataError
    with its line number; a partial last line (being written) is ignored.
    """
    p = Path(path)
    if not p.exists():
        return np.zeros(0), np.zeros(0)
    text = p.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a line still being written
    t: list[float] = []
    b: list[float] = []
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split("\t") if "\t" in s else s.split()
        try:
            tv, bv = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise DataError(f"{p}:{no}: malformed busy timeline line {line!r}") from None
        if not (math.isfinite(tv) and math.isfinite(bv)) or bv < 0:
            raise DataError(f"{p}:{no}: bad busy timeline values {line!r}")
        t.append(tv)
        b.append(bv)
    ta, ba = np.asarray(t), np.asarray(b)
    order = np.argsort(ta, kind="stable")
    return ta[order], ba[order]


def write_busy_timeline(path: str | Path, events: list[tuple[float, float]]) -> None:
    """Write a timeline file in the seam format (for tests and replays)."""
    with open(path, "w") as fh:
        fh.write(TIMELINE_HEADER + "\n")
        for t, b in events:
            fh.write(f"{t:.9f}\t{b:g}\n")


def busy_integral(t_s: np.ndarray, tl_t_s: np.ndarray, tl_busy: np.ndarray, cores: int) -> np.ndarray:
    """Integral of min(busy, cores) dt from -inf to each of ``t_s`` (busy is 0 before the first event)."""
    t_s = np.asarray(t_s, dtype=np.float64)
    if tl_t_s.size == 0:
        return np.zeros_like(t_s)
    level = np.clip(tl_busy, 0, cores)
    seg = np.diff(tl_t_s) * level[:-1]
    cum = np.concatenate(([0.0], np.cumsum(seg)))  # integral up to each event time
    k = np.searchsorted(tl_t_s, t_s, side="right") - 1  # last event at or before t
    kk = np.clip(k, 0, None)
    out = cum[kk] + (t_s - tl_t_s[kk]) * level[kk]
    return np.where(k < 0, 0.0, out)


def mean_busy(t0_s: np.ndarray, dt_s: float, tl_t_s: np.ndarray, tl_busy: np.ndarray, cores: int) -> np.ndarray:
    """Mean busy threads over each interval ``[t0, t0 + dt)`` (exact for the step function)."""
    t0_s = np.asarray(t0_s, dtype=np.float64)
    return (busy_integral(t0_s + dt_s, tl_t_s, tl_busy, cores) - busy_integral(t0_s, tl_t_s, tl_busy, cores)) / dt_s


def sample_current_a(
    profile: PowerModelProfile,
    t0_s: np.ndarray,
    rate_hz: float,
    tl_t_s: np.ndarray,
    tl_busy: np.ndarray,
    rng: np.random.Generator | None = None,
    drift_origin_s: float = 0.0,
) -> np.ndarray:
    """Current (A) of samples starting at host times ``t0_s``, each averaged over 1/rate_hz.

    Noise is added when ``rng`` is given (sd ``noise_current_a``); drift is ``drift_a_per_s`` times the time
    since ``drift_origin_s``.
    """
    dt = 1.0 / rate_hz
    busy = mean_busy(t0_s, dt, tl_t_s, tl_busy, profile.cores)
    cur = profile.power_w(busy) / profile.supply_voltage_v
    if profile.drift_a_per_s:
        cur = cur + profile.drift_a_per_s * (np.asarray(t0_s) - drift_origin_s)
    if rng is not None and profile.noise_current_a > 0:
        cur = cur + rng.normal(0.0, profile.noise_current_a, size=cur.shape)
    return cur


def expected_energy_j(profile: PowerModelProfile, t_start_s: float, t_end_s: float, tl_t_s, tl_busy) -> float:
    """Exact noise-free, drift-free energy of ``[t_start, t_end)`` at the profile's supply voltage."""
    busy_s = float(
        busy_integral(np.array([t_end_s]), tl_t_s, tl_busy, profile.cores)[0]
        - busy_integral(np.array([t_start_s]), tl_t_s, tl_busy, profile.cores)[0]
    )
    return profile.idle_power_w * (t_end_s - t_start_s) + profile.active_power_per_core_w * busy_s


class TimelineFollower:
    """Follow a growing busy timeline file (re-reads only what was appended)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pos = 0
        self._t: list[float] = []
        self._b: list[float] = []
        self._arrays: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    def poll(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all events so far as arrays (times ascending)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
        except FileNotFoundError:
            return self._arrays
        if not chunk:
            return self._arrays
        end = chunk.rfind(b"\n")
        if end < 0:
            return self._arrays
        self._pos += end + 1
        changed = False
        for line in chunk[: end + 1].decode("utf-8", "replace").splitlines():
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            try:
                tv, bv = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                log.warning("busy timeline %s: skipping malformed line %r", self.path, line)
                continue
            self._t.append(tv)
            self._b.append(bv)
            changed = True
        if changed:
            t, b = np.asarray(self._t), np.asarray(self._b)
            order = np.argsort(t, kind="stable")
            self._arrays = (t[order], b[order])
        return self._arrays


@dataclass(frozen=True)
class GroundTruthTrace:
    """A synthetic trace with exactly known energies and phase boundaries (times from sample 0)."""

    sample_index: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    rate_hz: float
    window_s: tuple[float, float]  # true sync points: end of start marker, start of end marker
    idle_windows_s: tuple[tuple[float, float], tuple[float, float]]
    energy_j: float  # true energy of window_s
    net_energy_j: float  # true energy above the idle baseline in window_s
    idle_power_w: float  # true idle power at the window's centre
    timeline: tuple[np.ndarray, np.ndarray]


def ground_truth_trace(
    profile: PowerModelProfile | None = None,
    rate_hz: float = 5000.0,
    idle_s: float = 2.0,
    work_s: float = 5.0,
    work_threads: float = 2.0,
    origin_s: float = 0.1234567,
    spikes: int = 0,
    spike_a: float = 1.5,
    drop_every: int = 0,
    drop_run: int = 1,
    seed: int = 0,
) -> GroundTruthTrace:
    """Idle, start marker, workload, end marker, idle; current from the power model, known truth.

    Spikes (``spikes`` pulses of ``spike_a`` A, 1 ms each, in the workload) and linear drift are part of
    the truth; noise is zero-mean and not; ``drop_every`` removes ``drop_run`` samples every so many.
    """
    from device import sync

    prof = profile or PowerModelProfile()
    ev: list[tuple[float, float]] = [(0.0, 0.0)]
    t = origin_s + idle_s
    for a, b in sync.marker_busy_intervals("start", t):
        ev += [(a, 1.0), (b, 0.0)]
    w0 = sync.marker_busy_intervals("start", t)[-1][1]
    work_a = t + sync.marker_duration_s("start")
    work_b = work_a + work_s
    ev += [(work_a, work_threads), (work_b, 0.0)]
    bursts = sync.marker_busy_intervals("end", work_b)
    w1 = bursts[0][0]
    for a, b in bursts:
        ev += [(a, 1.0), (b, 0.0)]
    total_s = work_b + sync.marker_duration_s("end") + idle_s
    tl_t = np.array([e[0] for e in ev])
    tl_b = np.array([e[1] for e in ev])
    n = int(total_s * rate_hz)
    idx = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    cur = sample_current_a(prof, idx / rate_hz, rate_hz, tl_t, tl_b, rng, drift_origin_s=0.0)
    v = prof.supply_voltage_v
    spike_j = 0.0
    if spikes:
        width = max(1, int(round(1e-3 * rate_hz)))
        starts = rng.choice(np.arange(int(np.ceil(work_a * rate_hz)) + 1, int(work_b * rate_hz) - width - 1),
                            size=spikes, replace=False)
        for s in np.sort(starts):
            cur[s : s + width] += spike_a
        spike_j = spikes * spike_a * v * width / rate_hz
    energy = expected_energy_j(prof, w0, w1, tl_t, tl_b) + spike_j
    energy += v * prof.drift_a_per_s * (w1**2 - w0**2) / 2.0
    idle_p = prof.idle_power_w + v * prof.drift_a_per_s * (w0 + w1) / 2.0
    net = energy - idle_p * (w1 - w0)
    keep = np.ones(n, dtype=bool)
    if drop_every:
        for k in range(drop_run):
            keep[drop_every // 2 + k :: drop_every] = False
    idle_windows = ((origin_s + 0.1, origin_s + idle_s - 0.1), (total_s - idle_s + 0.1, total_s - 0.1))
    # symmetric idle windows around the work window, so linear drift cancels in the bracketing mean
    centre = (w0 + w1) / 2.0
    before = idle_windows[0]
    half = centre - (before[0] + before[1]) / 2.0
    after = (before[0] + 2 * half, before[1] + 2 * half)
    if after[1] > total_s:
        after = idle_windows[1]
    return GroundTruthTrace(
        sample_index=idx[keep], current_a=cur[keep], voltage_v=np.full(int(keep.sum()), v), rate_hz=rate_hz,
        window_s=(w0, w1), idle_windows_s=(before, after), energy_j=energy, net_energy_j=net,
        idle_power_w=idle_p, timeline=(tl_t, tl_b),
    )

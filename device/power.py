"""Power monitors: the ``PowerMonitor`` interface, the ``Trace`` value and keyed measurement windows.

A monitor streams samples to a ``.ptrc`` file (device/tracefile.py) from ``start()`` to ``stop()``.  Between
them, ``begin(key)`` / ``end(key)`` mark windows by host time (``time.monotonic()``); ``end`` returns the
window's :class:`Trace`.  Sample times are never per-packet host times: they are rebuilt from the sample index
and the rate from one anchor (the host time of sample 0), so duplicated or truncated packet timestamps cannot
leak in.  Gaps in the index are dropped samples.  A ``Trace`` only carries samples: its energy, sync and
integrity verdict come from the harness's one analysis path (``harness.window.analyse_window``).  Misuse (begin twice, end unknown, windows before start or
after stop) raises :class:`~harness.errors.MeasurementError`.

Implementations: ``device.monsoon.MonsoonMonitor`` (HVPM/LVPM through the ``monsoon`` package; the virtual
Monsoon is the same code on a virtual USB bus), ``device.gauge.FuelGaugeMonitor`` (battery fuel gauge, low
resolution) and ``device.replay.ReplayMonitor`` (recorded traces).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import MeasurementError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trace:
    """Samples of one window (or a whole run).

    ``sample_index`` counts samples since the monitor's sample 0 (gaps = dropped samples); sample ``i`` starts
    at host time ``anchor_mono_s + i / rate_hz`` and covers ``1 / rate_hz`` seconds.
    """

    sample_index: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    rate_hz: float
    anchor_mono_s: float
    dropped_samples: int
    instrument: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = True
    usb_current_a_max: float = float("nan")
    expected_samples: int = 0
    start_mono_s: float = float("nan")
    end_mono_s: float = float("nan")
    trace_path: str | None = None
    low_resolution: bool = False

    @property
    def time_mono_s(self) -> np.ndarray:
        """Host monotonic start time of each sample."""
        return self.anchor_mono_s + self.sample_index / self.rate_hz

    @property
    def time_s(self) -> np.ndarray:
        """Seconds from the window's first expected sample."""
        first = self.sample_index[0] if self.sample_index.size else 0
        return (self.sample_index - first) / self.rate_hz

    @property
    def power_w(self) -> np.ndarray:
        return self.current_a.astype(np.float64) * self.voltage_v

    @property
    def samples(self) -> int:
        return int(self.sample_index.size)

    @property
    def duration_s(self) -> float:
        return self.expected_samples / self.rate_hz if self.expected_samples else self.samples / self.rate_hz


@dataclass
class _Window:
    key: str
    begin_mono_s: float
    end_mono_s: float | None = None


class PowerMonitor(ABC):
    """A power monitor that streams to a trace file; windows are keyed by the caller.

    Subclasses implement ``_open``, ``_close``, ``_wait_for_index`` and ``_read_window``; everything about
    window bookkeeping and misuse lives here.
    """

    name: str = "monitor"
    rate_hz: float = 5000.0
    low_resolution: bool = False

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._running = False
        self._stopped = False
        self.anchor_mono_s: float | None = None
        self.trace_path: Path | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start streaming (blocks until the instrument is calibrated and sample 0 is anchored)."""
        if self._running:
            raise MeasurementError(f"{self.name}: already started")
        if self._stopped:
            raise MeasurementError(f"{self.name}: a monitor is started once; make a new one")
        self._open()
        self._running = True

    def stop(self) -> Path | None:
        """Stop streaming; returns the trace file.  Windows still open are reported and discarded."""
        if not self._running:
            return self.trace_path
        open_keys = [k for k, w in self._windows.items() if w.end_mono_s is None]
        if open_keys:
            log.warning("%s: stopping with open window(s) %s", self.name, ", ".join(open_keys))
        try:
            self._close()
        finally:
            self._running = False
            self._stopped = True
        return self.trace_path

    def __enter__(self) -> PowerMonitor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- windows ---------------------------------------------------------------------------------------
    def begin(self, key: str, at_mono_s: float | None = None) -> float:
        """Open window ``key`` now (or at host time ``at_mono_s``); returns its host time."""
        if not self._running:
            raise MeasurementError(f"{self.name}: begin({key!r}) before start() or after stop()")
        if key in self._windows:
            raise MeasurementError(f"{self.name}: window {key!r} was already begun")
        t = time.monotonic() if at_mono_s is None else float(at_mono_s)
        self._windows[key] = _Window(key, t)
        return t

    def end(self, key: str, at_mono_s: float | None = None, timeout_s: float = 10.0) -> Trace:
        """Close window ``key`` and return its samples (waits until the samples have arrived)."""
        w = self._windows.get(key)
        if w is None:
            raise MeasurementError(f"{self.name}: end({key!r}) without begin({key!r})")
        if w.end_mono_s is not None:
            raise MeasurementError(f"{self.name}: window {key!r} already ended")
        if not self._running:
            raise MeasurementError(f"{self.name}: end({key!r}) after stop()")
        t = time.monotonic() if at_mono_s is None else float(at_mono_s)
        if t < w.begin_mono_s:
            raise MeasurementError(f"{self.name}: window {key!r} ends before it begins")
        w.end_mono_s = t
        i0, i1 = self.index_range(w.begin_mono_s, t)
        self._wait_for_index(i1, timeout_s)
        tr = self._read_window(i0, i1)
        return tr

    def window_keys(self) -> list[str]:
        return list(self._windows)

    def index_range(self, begin_mono_s: float, end_mono_s: float) -> tuple[int, int]:
        """Sample indices ``[i0, i1)`` whose start times fall in ``[begin, end)``."""
        if self.anchor_mono_s is None:
            raise MeasurementError(f"{self.name}: no anchor (not started)")
        i0 = int(np.ceil((begin_mono_s - self.anchor_mono_s) * self.rate_hz - 1e-9))
        i1 = int(np.ceil((end_mono_s - self.anchor_mono_s) * self.rate_hz - 1e-9))
        return max(i0, 0), max(i1, 0)

    # --- for subclasses --------------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Connect, configure, start streaming; set ``anchor_mono_s`` and ``trace_path``."""

    @abstractmethod
    def _close(self) -> None:
        """Stop streaming and release the instrument (restoring what was changed)."""

    @abstractmethod
    def _wait_for_index(self, index: int, timeout_s: float) -> None:
        """Block until samples before ``index`` were received; MeasurementError if streaming stopped."""

    @abstractmethod
    def _read_window(self, i0: int, i1: int) -> Trace:
        """Build the Trace of samples ``[i0, i1)`` from the stream."""


def wait_for_reader_index(reader, index: int, timeout_s: float, poll_s: float,
                          check_source: Callable[[], None], timeout_message: str) -> None:
    """Poll a trace file reader until samples before ``index`` arrived (the common ``_wait_for_index``).

    ``check_source`` raises :class:`MeasurementError` when the writer stopped; past ``timeout_s`` the error
    says ``timeout_message`` and the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        reader.refresh()
        if reader.end_index >= index:
            return
        check_source()
        if time.monotonic() > deadline:
            raise MeasurementError(f"{timeout_message} within {timeout_s:g} s")
        time.sleep(poll_s)


def trace_from_reader(reader, i0: int, i1: int, instrument: dict[str, Any], low_resolution: bool = False) -> Trace:
    """Build a :class:`Trace` for sample indices ``[i0, i1)`` of a trace file reader."""
    idx, cur, vol = [], [], []
    cal = True
    usb = float("nan")
    for c in reader.iter_chunks(i0, i1):
        idx.append(np.arange(c.start_index, c.start_index + c.current_a.size, dtype=np.int64))
        cur.append(c.current_a)
        vol.append(c.voltage_v)
        cal = cal and c.calibrated
        if np.isfinite(c.usb_current_a):
            usb = c.usb_current_a if not np.isfinite(usb) else max(usb, c.usb_current_a)
    index = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    n = max(i1 - i0, 0)
    return Trace(
        sample_index=index,
        current_a=np.concatenate(cur) if cur else np.zeros(0, np.float32),
        voltage_v=np.concatenate(vol) if vol else np.zeros(0, np.float32),
        rate_hz=reader.rate_hz,
        anchor_mono_s=reader.anchor_mono_s,
        dropped_samples=n - int(index.size),
        instrument=dict(instrument),
        calibrated=cal,
        usb_current_a_max=usb,
        expected_samples=n,
        start_mono_s=reader.anchor_mono_s + i0 / reader.rate_hz,
        end_mono_s=reader.anchor_mono_s + i1 / reader.rate_hz,
        trace_path=str(reader.path),
        low_resolution=low_resolution,
    )

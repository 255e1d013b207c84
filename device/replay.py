"""Replay of recorded traces as a :class:`~device.power.PowerMonitor` (our ``.ptrc`` or a Monsoon CSV).

Windows are given in the recording's host time (``at_mono_s``): for a ``.ptrc`` that is the sampler's
``time.monotonic()`` axis (the file's anchor); for a CSV, seconds from its first sample (anchor 0) unless an
``anchor_mono_s`` is given.  Nothing is sampled: ``end`` returns the recorded samples of the window.
"""

from __future__ import annotations

from pathlib import Path

from device.errors import MeasurementError
from device.power import PowerMonitor, Trace, trace_from_reader
from device.tracefile import open_trace


class ReplayMonitor(PowerMonitor):
    """A monitor that answers windows from a recorded trace."""

    name = "replay"

    def __init__(self, path: str | Path, anchor_mono_s: float | None = None, rate_hz: float | None = None,
                 time_unit: str | None = None):
        super().__init__()
        self.source = open_trace(path, rate_hz, time_unit)
        self.rate_hz = self.source.rate_hz
        self.trace_path = Path(path)
        self._anchor = anchor_mono_s
        self.instrument = {"kind": "replay", "source": str(path), **getattr(self.source, "instrument", {})}

    def _open(self) -> None:
        if self._anchor is not None:
            self.anchor_mono_s = float(self._anchor)
        else:
            self.anchor_mono_s = float(self.source.anchor_mono_s) - 0.0
            if self.source.kind == "csv":
                self.anchor_mono_s = -self.source.first_index / self.rate_hz
        self.source.anchor_mono_s = self.anchor_mono_s

    def _close(self) -> None:
        return None

    def _wait_for_index(self, index: int, timeout_s: float) -> None:
        if index > self.source.end_index:
            raise MeasurementError(
                f"replay: window needs sample {index} but the recording ends at {self.source.end_index}"
            )

    def _read_window(self, i0: int, i1: int) -> Trace:
        return trace_from_reader(self.source, i0, i1, self.instrument)

"""Battery fuel gauge over ADB: a LOW-RESOLUTION power monitor for users without a Monsoon.

Polls ``/sys/class/power_supply/<supply>/current_now`` (uA) and ``voltage_now`` (uV) through the
:class:`device.base.Device` shell at ``rate_hz`` (default 4 Hz) from a thread and streams them to a ``.ptrc``
file like any monitor; ``Trace.low_resolution`` is True and the instrument says ``fuel-gauge``.  Caveats
(the reason it is labelled low resolution): the gauge averages over its own window (often 1-10 s), updates
slowly, includes the ADB shell's own cost, and its sign convention differs between phones (the magnitude is
used).  A phone that reports ``Charging`` is powered by USB: those samples carry their current as
"USB-channel current", so the integrity gate rejects the window.

The gauge polls over its OWN ADB link when the device can open one (ADB over TCP: :func:`second_link`).
One adb-shell link serves one reader at a time: while the runner's long shell command waits for its output
it holds the link's transport, so a poll on the same link waited for the whole inference window (every
window invalid, hundreds of dropped samples).  Over USB only one link exists; the gauge then shares it and
cannot sample while a command runs (use ADB over Wi-Fi for gauge measurements; USB also charges the phone).
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device.errors import DataError, DeviceError, DevicePackageError, MeasurementError
from device.power import PowerMonitor, Trace, trace_from_reader, wait_for_reader_index
from device.tracefile import TraceReader, TraceWriter

log = logging.getLogger(__name__)


class ShellDevice(Protocol):
    """What the gauge needs of a device (device/base.py's ``Device`` satisfies it)."""

    name: str

    def shell(self, command: str, timeout_s: float = 60.0, check: bool = True, retry: bool = True) -> Any: ...


def second_link(device: Any) -> Any | None:
    """A separate connection to the same phone (ADB over TCP, or through an adb server, which multiplexes
    commands over one USB link), or None when only one link can exist."""
    from device.adb import AdbDevice
    from device.adb_server import AdbServerDevice

    if isinstance(device, AdbServerDevice):
        return AdbServerDevice(device.serial, device.server).connect()
    if not isinstance(device, AdbDevice) or device.kind != "tcp":
        return None
    return AdbDevice(device.name, device.options).connect()


def parse_gauge(output: str) -> tuple[float, float, bool]:
    """Parse ``current_now``, ``voltage_now`` and ``status`` lines into (A, V, charging)."""
    lines = [x.strip() for x in output.strip().splitlines() if x.strip()]
    if len(lines) < 2:
        raise DataError(f"fuel gauge: expected current_now and voltage_now, got {output!r}")
    try:
        cur_ua, vol_uv = float(lines[0]), float(lines[1])
    except ValueError:
        raise DataError(f"fuel gauge: not numbers: {lines[:2]!r}") from None
    charging = len(lines) > 2 and lines[2].lower().startswith("charg")
    return abs(cur_ua) * 1e-6, vol_uv * 1e-6, charging


class FuelGaugeMonitor(PowerMonitor):
    """Polls the phone's fuel gauge (low resolution; see the module doc)."""

    name = "fuel-gauge"
    low_resolution = True

    def __init__(self, device: ShellDevice, trace_path: str | Path, rate_hz: float = 4.0, supply: str = "battery"):
        super().__init__()
        if not (0 < rate_hz <= 50):
            raise DataError(f"fuel gauge rate must be in (0, 50] Hz, not {rate_hz}")
        self.device = device
        self._link: Any | None = None  # the gauge's own ADB link, opened on start
        self.rate_hz = float(rate_hz)
        self.trace_path = Path(trace_path)
        base = f"/sys/class/power_supply/{supply}"
        self._cmd = "cat " + " ".join(shlex.quote(f"{base}/{f}") for f in ("current_now", "voltage_now", "status"))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: str | None = None
        self._reader: TraceReader | None = None
        self.instrument = {"kind": "fuel-gauge", "device": getattr(device, "name", "device"), "supply": supply,
                           "low_resolution": True}

    def read_once(self) -> tuple[float, float, bool]:
        res = (self._link or self.device).shell(self._cmd, timeout_s=5.0, check=False)
        if getattr(res, "exit_code", 0) != 0:
            raise DeviceError(self.instrument["device"], f"fuel gauge not readable: {res.output.strip()[:200]}")
        return parse_gauge(res.output)

    def _open(self) -> None:
        self._link = second_link(self.device)
        if self._link is None:
            log.warning("fuel gauge on %s shares the command link: it cannot sample while a command runs",
                        self.instrument["device"])
        try:
            self.read_once()  # fail early, in the caller's thread, if the gauge is not there
        except BaseException:
            if self._link is not None:
                self._link.close()
                self._link = None
            raise
        self.anchor_mono_s = time.monotonic()
        self._writer = TraceWriter(self.trace_path, {"rate_hz": self.rate_hz, "anchor_mono_s": self.anchor_mono_s,
                                                     "instrument": self.instrument})
        self._reader = TraceReader(self.trace_path)
        self._thread = threading.Thread(target=self._poll, name="fuel-gauge", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        last = -1
        try:
            while not self._stop.is_set():
                cur, vol, charging = self.read_once()
                i = int(round((time.monotonic() - self.anchor_mono_s) * self.rate_hz))
                if i > last:
                    self._writer.append(i, np.array([cur]), np.array([vol]), True, cur if charging else 0.0)
                    last = i
                nxt = self.anchor_mono_s + (last + 1) / self.rate_hz
                self._stop.wait(max(nxt - time.monotonic(), 0.0))
            self._writer.close({"end_reason": "stopped"})
        except DevicePackageError as exc:
            self._error = str(exc)
            self._writer.close({"end_reason": f"error: {exc}"})

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._link is not None:
            self._link.close()
            self._link = None

    def _wait_for_index(self, index: int, timeout_s: float) -> None:
        wait_for_reader_index(self._reader, index, timeout_s, 0.02, self._check_polling,
                              f"fuel gauge: no sample {index}")

    def _check_polling(self) -> None:
        if self._error or not self._thread.is_alive():
            raise MeasurementError(f"fuel gauge stopped mid-window: {self._error or 'poller exited'}")

    def _read_window(self, i0: int, i1: int) -> Trace:
        return trace_from_reader(self._reader, i0, i1, self.instrument, low_resolution=True)

"""Monsoon HVPM/LVPM power monitors through the ``monsoon`` package (the only module importing ``Monsoon``).

``MonsoonMonitor`` is a :class:`device.power.PowerMonitor`.  ``start()`` spawns a sampling process that

1. (virtual lab only) installs the virtual USB backend, since it is a fresh interpreter;
2. connects with ``Monsoon.HVPM.Monsoon().setup_usb(serial, pmapi.USB_protocol())`` (the library prints
   "Unable to find device" and returns when nothing is there: we check ``Protocol.DEVICE``);
3. reads status and calibration (``fillStatusPacket``), records serial and firmware, remembers the USB
   passthrough mode, turns passthrough off, sets the current limits and the output voltage from the device
   profile (``setVout``), and starts sampling the main channel at the native 5 kHz (``StartSampling``);
4. reads packets with ``BulkRead`` and decodes them in batches with the arithmetic of ``sampleEngine``
   (zero/reference calibration from the calibration samples, fine/coarse switch), vectorised
   (:mod:`device.monsoon_packets`); waits until
   calibrated; numbers every sample from the device's dropped-sample counter (16-bit, rollover unwrapped), so
   sample times come from the index and one anchor, never from per-packet host time;
5. streams blocks of ~0.1 s to a ``.ptrc`` file (memory does not grow with run length); on stop, or when
   the monitor disappears mid-run, stops sampling, restores USB passthrough and writes the trailer.

The sampler dies with the harness (:mod:`device.lifeline`: ``PR_SET_PDEATHSIG`` plus a parent-pid watchdog;
SIGTERM stops it in order, SIGINT is left to the parent), so a ``kill -9`` of the harness leaves no orphan
holding the Monsoon.

The vendor's ``sampleEngine`` collection loop is not used for measuring: it stamps samples with per-packet
host time, keeps no dropped-sample bookkeeping, and is too slow in Python to keep up at 5 kHz (it drops).
:func:`vendor_csv_capture` still drives it (for cross-checks against the CSVs people already have).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DataError, DeviceError, MeasurementError
from device.lifeline import die_with_parent, send_quietly
from device.monsoon_packets import PacketDecoder, Scales
from device.power import PowerMonitor, Trace, trace_from_reader, wait_for_reader_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonsoonOptions:
    """How to drive a Monsoon (loadable from TOML ``[monsoon]``)."""

    model: str = "HVPM"  # HVPM | LVPM
    serial: int | None = None
    voltage_v: float = 4.2  # output voltage: take it from the device profile (battery nominal)
    runtime_current_limit_a: float = 8.0
    powerup_current_limit_a: float = 8.0
    powerup_time_ms: int = 100
    cal_time_ms: int = 1250
    calibration_timeout_s: float = 10.0
    anchor_window_s: float = 0.25
    block_s: float = 0.1
    start_timeout_s: float = 30.0
    rate_hz: float = 5000.0

    def __post_init__(self) -> None:
        if self.model not in ("HVPM", "LVPM"):
            raise DataError(f"monsoon model must be HVPM or LVPM, not {self.model!r}")
        vmax = 13.5 if self.model == "HVPM" else 4.55
        if not (0.8 <= self.voltage_v <= vmax):
            raise DataError(f"monsoon voltage {self.voltage_v} V is outside 0.8..{vmax} V for {self.model}")
        amax = 15.625 if self.model == "HVPM" else 8.0
        for name in ("runtime_current_limit_a", "powerup_current_limit_a"):
            if not (0 < getattr(self, name) <= amax):
                raise DataError(f"monsoon {name} must be in (0, {amax}] A")


# ------------------------------------------------------------------------------------------------------------
# the sampling process
# ------------------------------------------------------------------------------------------------------------
def _connect(opts: MonsoonOptions):
    """Connect with the vendor library; DeviceError when absent or busy."""
    import usb.core
    import usb.util
    from Monsoon import HVPM, LVPM, pmapi

    mon = HVPM.Monsoon() if opts.model == "HVPM" else LVPM.Monsoon()
    proto = pmapi.USB_protocol()
    try:
        mon.setup_usb(opts.serial, proto)
    except usb.core.USBError as exc:
        if getattr(exc, "errno", None) == 16 or "busy" in str(exc).lower():
            raise DeviceError("monsoon", f"the Monsoon is busy (used by another process): {exc}") from None
        raise DeviceError("monsoon", f"USB error while connecting: {exc}") from None
    except usb.core.NoBackendError:
        raise DeviceError("monsoon", "no USB backend (libusb) available") from None
    if proto.DEVICE is None:
        # the library's matcher swallows errors: tell "busy" from "absent" by asking each candidate ourselves
        for d in usb.core.find(find_all=True, idVendor=0x2AB9, idProduct=0x0001):
            try:
                _ = d.serial_number
            except usb.core.USBError as exc:
                if getattr(exc, "errno", None) == 16 or "busy" in str(exc).lower():
                    raise DeviceError("monsoon", "the Monsoon is busy (used by another process)") from None
            finally:
                usb.util.dispose_resources(d)
        which = f"serial {opts.serial}" if opts.serial is not None else "any serial"
        raise DeviceError("monsoon", f"no Monsoon found on USB ({which}); is it plugged in and powered?")
    return mon


def _sampler_main(opts: MonsoonOptions, trace_path: str, conn, stop_event, virtual,
                  parent_pid: int | None = None, pdeathsig: bool = False) -> None:
    """Body of the sampling process (module-level so that 'spawn' can pickle it)."""
    logging.basicConfig(level=logging.WARNING)
    halt = threading.Event()
    if parent_pid is not None:
        die_with_parent(parent_pid, halt, pdeathsig=pdeathsig)
    import usb.core

    from device.tracefile import TraceWriter

    if virtual is not None:
        from device import virtual_monsoon
        from device.virtual_monsoon import hvpm

        hvpm.SERVES_PID = parent_pid  # our claim on the virtual monitor names the harness we work for
        virtual_monsoon.install(*virtual)
    from Monsoon import Operations as op

    mon = None
    writer = None
    prev_passthrough = None
    trailer: dict[str, Any] = {}
    try:
        mon = _connect(opts)
        mon.fillStatusPacket()
        sp = mon.statusPacket
        prev_passthrough = int(sp.usbPassthroughMode)
        mon.setUSBPassthroughMode(op.USB_Passthrough.Off)
        mon.setPowerUpCurrentLimit(opts.powerup_current_limit_a)
        mon.setRunTimeCurrentLimit(opts.runtime_current_limit_a)
        mon.setPowerupTime(opts.powerup_time_ms)
        mon.setVout(opts.voltage_v)
        mon.StartSampling(opts.cal_time_ms, 0xFFFFFFFF)  # refreshes the status packet
        instrument = {
            "kind": "monsoon", "model": opts.model, "serial": int(sp.serialNumber),
            "firmware": int(sp.firmwareVersion), "protocol": int(sp.protocolVersion),
            "hardware_model": int(sp.hardwareModel), "vout_v": opts.voltage_v, "virtual": virtual is not None,
            "usb_passthrough_before": prev_passthrough, "runtime_current_limit_a": opts.runtime_current_limit_a,
        }
        dec = PacketDecoder(Scales.from_monsoon(mon), signed=opts.model == "LVPM")
        t_start = time.monotonic()
        batch = bytearray()
        batch_n = 0
        anchor_est = float("inf")
        anchor_until = None
        buffered: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        pend: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        pend_n = 0
        block_n = max(int(opts.block_s * opts.rate_hz), 3)
        per_batch = 48  # packets decoded together (~29 ms)
        end_reason = "stopped"

        def write(idx, cur, vol, usb_a):
            # split at index gaps (dropped samples) into contiguous blocks
            brk = np.flatnonzero(np.diff(idx) != 1) + 1
            b = np.concatenate(([0], brk, [idx.size]))
            for s, e in zip(b[:-1], b[1:], strict=True):
                if e > s:
                    seg = usb_a[s:e]
                    u = float(np.nanmax(np.abs(seg))) if np.isfinite(seg).any() else float("nan")
                    writer.append(int(idx[s]), cur[s:e], vol[s:e], True, u)

        while True:
            if stop_event.is_set():
                break
            if halt.is_set():
                end_reason = "stopped: the harness process is gone (or sent SIGTERM)"
                break
            try:
                buf = mon.BulkRead()
            except usb.core.USBError as exc:
                if isinstance(exc, usb.core.USBTimeoutError) or getattr(exc, "errno", None) == 110:
                    if time.monotonic() - t_start > opts.calibration_timeout_s and writer is None:
                        raise DeviceError("monsoon", "no samples from the Monsoon (read timeouts)") from None
                    continue
                end_reason = f"monsoon stopped: {exc}"
                break
            t_rx = time.monotonic()
            batch += bytes(buf)
            batch_n += 1
            if batch_n < per_batch:
                continue
            pk = np.frombuffer(bytes(batch), dtype=np.uint8).reshape(-1, 64)
            batch.clear()
            batch_n = 0
            idx, cur, vol, usb_a, calibrated = dec.feed(pk)
            if not calibrated:
                if time.monotonic() - t_start > opts.calibration_timeout_s:
                    raise DeviceError("monsoon", f"not calibrated after {opts.calibration_timeout_s:g} s")
                continue
            if idx.size == 0:
                continue
            # anchor: host time of sample 0 = min over packets of (receive time - samples so far / rate)
            anchor_est = min(anchor_est, t_rx - (idx[-1] + 1) / opts.rate_hz)
            if writer is None:
                if anchor_until is None:
                    anchor_until = t_rx + opts.anchor_window_s
                buffered.append((idx, cur, vol, usb_a))
                if t_rx < anchor_until:
                    continue
                writer = TraceWriter(trace_path, {
                    "rate_hz": opts.rate_hz, "anchor_mono_s": anchor_est, "instrument": instrument,
                    "anchor_method": "min(receive time - index/rate) over the first packets",
                    "pid": os.getpid(),
                })
                send_quietly(conn, ("ready", {"anchor_mono_s": anchor_est, "instrument": instrument}))
                for item in buffered:
                    write(*item)
                buffered = []
                continue
            pend.append((idx, cur, vol, usb_a))
            pend_n += idx.size
            if pend_n >= block_n:
                write(*(np.concatenate([p[i] for p in pend]) for i in range(4)))
                pend, pend_n = [], 0
        if writer is not None and pend:
            write(*(np.concatenate([p[i] for p in pend]) for i in range(4)))
        if writer is not None and batch_n:
            idx, cur, vol, usb_a, calibrated = dec.feed(np.frombuffer(bytes(batch), dtype=np.uint8).reshape(-1, 64))
            if calibrated and idx.size:
                write(idx, cur, vol, usb_a)
        trailer = {"end_reason": end_reason, "dropped_samples_device": dec.dropped_total,
                   "stop_mono_s": time.monotonic(), "anchor_mono_s_final_estimate": anchor_est}
        if writer is None:
            raise DeviceError("monsoon", f"stopped before sampling was anchored ({end_reason})")
    except DeviceError as exc:
        trailer = {"end_reason": f"error: {exc}"}
        send_quietly(conn, ("error", str(exc)))
    except Exception as exc:  # the sampler must always report and restore the monitor
        trailer = {"end_reason": f"error: {type(exc).__name__}: {exc}"}
        send_quietly(conn, ("error", f"monsoon sampler failed: {type(exc).__name__}: {exc}"))
    finally:
        restored = None
        if mon is not None and mon.Protocol is not None and mon.Protocol.DEVICE is not None:
            try:
                mon.stopSampling()
                if prev_passthrough is not None:
                    mon.setUSBPassthroughMode(prev_passthrough)
                    restored = prev_passthrough
                mon.closeDevice()
            except Exception as exc:  # a vanished monitor cannot be restored; say so
                log.warning("monsoon: could not restore/close the monitor: %s", exc)
        if writer is not None:
            writer.close({**trailer, "usb_passthrough_restored": restored})
        send_quietly(conn, ("done", {**trailer, "usb_passthrough_restored": restored}))
        conn.close()


class MonsoonMonitor(PowerMonitor):
    """A Monsoon power monitor sampled by a separate process streaming to ``trace_path``."""

    name = "monsoon"

    def __init__(self, options: MonsoonOptions, trace_path: str | Path, virtual: Any = None):
        super().__init__()
        self.options = options
        self.rate_hz = options.rate_hz
        self.trace_path = Path(trace_path)
        if self.trace_path.exists():
            raise DataError(f"{self.trace_path} exists; a measurement is never overwritten")
        self._virtual = tuple(virtual) if isinstance(virtual, list | tuple) else ((virtual,) if virtual else None)
        self.instrument: dict[str, Any] = {}
        self._proc = None
        self._conn = None
        self._stop = None
        self._reader = None
        self.final: dict[str, Any] = {}

    def _open(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_sampler_main,
            args=(self.options, str(self.trace_path), child, self._stop, self._virtual, os.getpid(),
                  threading.current_thread() is threading.main_thread()),
            name="monsoon-sampler", daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.options.start_timeout_s):
            self._kill()
            raise DeviceError("monsoon", f"sampler did not start within {self.options.start_timeout_s:g} s")
        try:
            kind, info = parent.recv()
        except (EOFError, OSError):
            self._kill()
            raise DeviceError("monsoon", f"sampler process died at start (exit code {self._proc.exitcode})") from None
        if kind != "ready":
            self._drain()
            self._proc.join(5)
            raise DeviceError("monsoon", str(info).removeprefix("monsoon: "))
        self.anchor_mono_s = float(info["anchor_mono_s"])
        self.instrument = dict(info["instrument"])
        from device.tracefile import TraceReader

        self._reader = TraceReader(self.trace_path)

    def _drain(self) -> None:
        try:
            while self._conn.poll(0.5):
                kind, info = self._conn.recv()
                if kind == "done":
                    self.final = dict(info)
        except (EOFError, OSError):
            pass

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)

    def _close(self) -> None:
        self._stop.set()
        self._drain()
        self._proc.join(10)
        if self._proc.is_alive():
            log.warning("monsoon sampler did not stop; killing it (the trace so far is kept)")
            self._kill()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _wait_for_index(self, index: int, timeout_s: float) -> None:
        def check_sampler() -> None:
            if self._reader.complete or not self.alive:
                self._drain()
                reason = (self._reader.trailer or self.final or {}).get("end_reason", "sampler exited")
                raise MeasurementError(
                    f"monsoon stopped mid-window at sample {self._reader.end_index} (window needs {index}): "
                    f"{reason}; samples so far are kept in {self.trace_path}"
                )

        wait_for_reader_index(self._reader, index, timeout_s, 0.01, check_sampler,
                              f"monsoon: samples up to {index} did not arrive")

    def _read_window(self, i0: int, i1: int) -> Trace:
        return trace_from_reader(self._reader, i0, i1, self.instrument)


def vendor_csv_capture(opts: MonsoonOptions, csv_path: str | Path, samples: int) -> None:
    """Capture ``samples`` with the vendor's own ``sampleEngine`` into its CSV (for cross-checks).

    Runs in the calling process; the CSV has the library's quirks (seconds in "Time(ms)", one host time per
    packet) that :func:`device.tracefile.read_monsoon_csv` undoes.
    """
    from Monsoon import Operations as op
    from Monsoon import sampleEngine

    mon = _connect(opts)
    mon.fillStatusPacket()
    prev = int(mon.statusPacket.usbPassthroughMode)
    try:
        mon.setUSBPassthroughMode(op.USB_Passthrough.Off)
        mon.setVout(opts.voltage_v)
        eng = sampleEngine.SampleEngine(mon)
        eng.ConsoleOutput(False)
        eng.enableCSVOutput(str(csv_path))
        eng.startSampling(samples)
    finally:
        mon.setUSBPassthroughMode(prev)
        mon.closeDevice()


def options_dict(opts: MonsoonOptions) -> dict[str, Any]:
    return asdict(opts)

"""The virtual HVPM: EEPROM, control requests and 64-byte sample packets, as the ``monsoon`` library reads them.

Wire format (what ``Monsoon.HVPM.swizzlePacket`` and ``sampleEngine`` decode): bytes 0-1 the dropped-sample
counter (uint16, little endian, wraps at 65536), byte 2 flags, byte 3 the number of samples (<= 3); then per
sample eight 16-bit channel values (main coarse, main fine, USB coarse, USB fine, aux coarse, aux fine, main
voltage, USB voltage) and a type byte (0x00 measurement, 0x10 zero calibration, 0x30 reference calibration),
every 16-bit word from byte 4 on sent big endian (the library swaps the bytes back).

Current encoding follows sampleEngine's decoding exactly: ``mA = (raw - zero) * scale / (ref - zero)``
(``/1000`` on fine channels), the fine channel used while its raw value is below 64000.  Calibration samples
are sent ten times every 10 ms after start, then every ``calTime`` ms; they are extra packets and take no
measurement slot.  Main voltage raw = V / (62.5 uV * 4).

Timing: measurement sample ``k`` covers host time ``[t0 + k/rate, t0 + (k+1)/rate)`` (``t0`` = start request);
a sample is sent once it is complete plus a 2 ms pipeline latency, in bursts of 10 packets.  If the reader falls more than
``fifo_samples`` behind, the oldest samples are dropped and counted, as the real FIFO does.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from device.lock import LockBusy, acquire_lock_file, release_lock_file
from device.power_model import PowerModelProfile, TimelineFollower, sample_current_a

log = logging.getLogger(__name__)

VENDOR_ID = 0x2AB9
PRODUCT_ID = 0x0001
PACKET_BYTES = 64
RATE_HZ = 5000.0
LATENCY_S = 0.002
BATCH_SAMPLES = 30  # packets leave in bursts of ~10 (6 ms), as USB frames batch them
ADC_V_PER_LSB = 62.5e-6
MAIN_VOLTAGE_SCALE = 4
USB_VOLTAGE_SCALE = 2
FINE_THRESHOLD = 64000
ZERO_CAL_RAW = 100
REF_CAL_RAW = 30100
#: The process this one works for, written into the claim (:mod:`device.lock`): the Monsoon sampler sets its
#: parent (the harness) here; None means this process itself.
SERVES_PID: int | None = None
_SWZ = struct.Struct("<HBB" + "HHHHHHHHBB" * 3)

# opcodes (Monsoon.Operations.OpCodes), kept here so the virtual device does not import the vendor library
OP_SET_MAIN_VOLTAGE = 0x41
OP_SERIAL = 0x42
OP_FIRMWARE = 0xC0
OP_PROTOCOL = 0xC1
OP_HW_MODEL = 0x45
OP_START_STATUS = 0xC4
OP_PASSTHROUGH = 0x10
OP_RUN_LIMIT = 0x44
OP_POWERUP_LIMIT = 0x43


def default_eeprom() -> dict[int, int]:
    """EEPROM of a healthy HVPM (calibration values as the vendor's setDefaultScaleValues writes them)."""
    return {
        0x1A: 36500, 0x1B: 6400, 0x1C: 14000, 0x1D: 600, 0x1E: 3100, 0x1F: 250,  # scales
        0x25: 15, 0x26: 15, 0x27: 0, 0x28: 0,  # zero offsets
        OP_POWERUP_LIMIT: 0xF000, OP_RUN_LIMIT: 0xF000, 0x0C: 100, 0x29: 0x3200,
        OP_PASSTHROUGH: 2, 0x23: 0, OP_SET_MAIN_VOLTAGE: 0,
        0x88: 0xE000, 0x89: 0xC800,  # dacCalLow, dacCalHigh (within the library's tolerance)
        OP_HW_MODEL: 2, OP_FIRMWARE: 32, OP_PROTOCOL: 25,
    }


@dataclass(frozen=True)
class VirtualMonsoonConfig:
    """One virtual HVPM on the virtual USB bus (picklable: the sampling process rebuilds it)."""

    root: str  # lab directory: EEPROM state and lock files live here
    timeline_path: str  # the virtual phone's busy_timeline.tsv
    serial: int = 20421
    profile: PowerModelProfile = field(default_factory=PowerModelProfile)
    present: bool = True  # False: nothing on the bus
    fail_after_s: float | None = None  # the monitor "disconnects" this long after sampling starts
    fifo_samples: int = 10000
    voltage_drift_v_per_s: float = 0.0  # fault: the main output voltage ramps by this much per second of sampling

    def state_path(self) -> Path:
        return Path(self.root) / f"virtual_monsoon_{self.serial}.json"

    def lock_path(self) -> Path:
        return Path(self.root) / f"virtual_monsoon_{self.serial}.lock"

    def eeprom(self) -> dict[int, int]:
        """The persisted EEPROM (what a previous session set survives, as on hardware)."""
        p = self.state_path()
        e = default_eeprom()
        if p.exists():
            e.update({int(k): int(v) for k, v in json.loads(p.read_text()).items()})
        return e


class USBErrorLike(Exception):
    """Raised by the device model; the backend converts it to ``usb.core.USBError``."""

    def __init__(self, msg: str, errno_: int):
        super().__init__(msg)
        self.errno = errno_


class VirtualHVPM:
    """Device-side state machine of one open virtual HVPM."""

    def __init__(self, cfg: VirtualMonsoonConfig):
        self.cfg = cfg
        self.eeprom = cfg.eeprom()
        self.sampling = False
        self._lock_fd: int | None = None
        self._follower = TimelineFollower(cfg.timeline_path)
        self._rng = np.random.default_rng(cfg.profile.seed)
        self._t0 = 0.0
        self._next = 0
        self._dropped = 0
        self._packets = 0
        self._cal_times: list[float] = []
        self._cal_period_s = 1.25
        self._queue: deque[bytes] = deque()
        self._rest = np.zeros((0, 10), dtype=np.int64)
        self._profile: PowerModelProfile | None = None
        self._static_cols = np.zeros(6, dtype=np.int64)
        self._last_poll = 0.0

    # --- ownership (a second open of the same monitor is "busy") -----------------------------------------
    def open(self) -> None:
        """Claim the monitor, as the kernel's USB interface claim does on hardware (EBUSY when taken).

        The lock file names its holder and the process it serves (:data:`SERVES_PID`): the Monsoon sampler
        serves its parent, so a sampler orphaned by a ``kill -9`` of the harness is ended and its claim
        taken over (a warning says so) instead of blocking every later run.
        """
        Path(self.cfg.root).mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = acquire_lock_file(self.cfg.lock_path(), f"virtual Monsoon {self.cfg.serial}",
                                              serves_pid=SERVES_PID)
        except LockBusy as busy:
            who = f" (pid {busy.owner.pid})" if busy.owner else ""
            raise USBErrorLike(f"Resource busy (another process holds the virtual Monsoon{who})",
                               errno.EBUSY) from None

    def close(self) -> None:
        self.sampling = False
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            release_lock_file(fd)

    def _save(self) -> None:
        p = self.cfg.state_path()
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({str(k): v for k, v in self.eeprom.items()}))
        os.replace(tmp, p)

    # --- control requests --------------------------------------------------------------------------------
    def get_value(self, opcode: int) -> bytes:
        if opcode == OP_SERIAL:
            v = self.cfg.serial
        elif opcode == OP_START_STATUS:
            v = 0x80 if self.sampling else 0x00
        else:
            v = self.eeprom.get(opcode, 0)
        return struct.pack("<I", v & 0xFFFFFFFF)

    def set_value(self, opcode: int, value: int) -> None:
        if self.sampling and opcode not in (OP_START_STATUS,):
            raise USBErrorLike("Pipe error (command while sampling)", errno.EPIPE)
        if opcode in (OP_SERIAL, OP_FIRMWARE, OP_PROTOCOL, OP_HW_MODEL):
            return  # read-only
        self.eeprom[opcode] = int(value)
        self._save()

    def start(self, cal_time_ms: int) -> None:
        self._prepare()
        self.sampling = True
        self._t0 = time.monotonic()
        self._next = 0
        self._dropped = 0
        self._packets = 0
        self._queue.clear()
        self._rest = np.zeros((0, 10), dtype=np.int64)
        self._cal_period_s = max(cal_time_ms, 1) / 1000.0
        self._cal_times = [self._t0 + 0.010 * k for k in range(1, 11)]
        # for tests and lab notes: when sample 0 started on the host clock (a real Monsoon cannot say this)
        p = Path(self.cfg.root) / f"virtual_monsoon_{self.cfg.serial}.session.json"
        p.write_text(json.dumps({"sampling_started_mono_s": self._t0, "pid": os.getpid(), "rate_hz": RATE_HZ}))

    def stop(self) -> None:
        self.sampling = False

    @property
    def vout_v(self) -> float:
        return self.eeprom.get(OP_SET_MAIN_VOLTAGE, 0) / 1048576.0

    @property
    def passthrough(self) -> int:
        return self.eeprom.get(OP_PASSTHROUGH, 2)

    # --- encoding ----------------------------------------------------------------------------------------
    def _raw_main(self, current_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ma = np.asarray(current_a) * 1000.0
        zf = self.eeprom[0x25] + ZERO_CAL_RAW
        zc = self.eeprom[0x26] + ZERO_CAL_RAW
        slope_f = self.eeprom[0x1A] / (REF_CAL_RAW - zf)
        slope_c = self.eeprom[0x1B] / (REF_CAL_RAW - zc)
        fine = np.clip(np.rint(ma * 1000.0 / slope_f + zf), 0, 65535)
        coarse = np.clip(np.rint(ma / slope_c + zc), 0, 65535)
        return coarse.astype(np.int64), fine.astype(np.int64)

    def _raw_usb(self, current_a: float) -> tuple[int, int]:
        ma = current_a * 1000.0
        zf = self.eeprom[0x27] + ZERO_CAL_RAW
        zc = self.eeprom[0x28] + ZERO_CAL_RAW
        fine = int(np.clip(round(ma * 1000.0 / (self.eeprom[0x1C] / (REF_CAL_RAW - zf)) + zf), 0, 65535))
        coarse = int(np.clip(round(ma / (self.eeprom[0x1D] / (REF_CAL_RAW - zc)) + zc), 0, 65535))
        return coarse, fine

    @staticmethod
    def _packet(dropped: int, samples: list[tuple[int, ...]]) -> bytes:
        vals: list[int] = [dropped & 0xFFFF, 0, len(samples)]
        for s in samples:
            vals.extend(s)
        vals.extend([0] * (10 * (3 - len(samples))))
        swz = bytearray(_SWZ.pack(*vals)) + bytes(PACKET_BYTES - _SWZ.size)
        body = swz[4:]
        body[0::2], body[1::2] = swz[5::2], swz[4::2]  # words big endian on the wire
        return bytes(swz[:4] + body)

    def _cal_packet(self, dropped: int) -> bytes:
        z = ZERO_CAL_RAW
        r = REF_CAL_RAW
        return self._packet(dropped, [(z, z, z, z, z, z, 0, 0, 0x10, 0), (r, r, r, r, r, r, 0, 0, 0x30, 0)])

    # --- streaming ---------------------------------------------------------------------------------------
    def _encode(self, rows: np.ndarray) -> list[bytes]:
        """Measurement rows (n, 10), n a multiple of 3, to 64-byte packets (vectorised)."""
        npk = rows.shape[0] // 3
        r = rows[: npk * 3].reshape(npk, 3, 10)
        words = np.empty((npk, 3, 9), dtype=">u2")
        words[:, :, :8] = r[:, :, :8]
        words[:, :, 8] = (r[:, :, 9] << 8) | r[:, :, 8]
        keep = np.ones(npk, dtype=bool)
        de = self.cfg.profile.drop_every_packets
        if de:
            no = self._packets + 1 + np.arange(npk)
            keep = no % de != 0
        lost_before = np.cumsum(~keep) - (~keep)
        dropped = (self._dropped + 3 * lost_before) & 0xFFFF
        self._packets += npk
        self._dropped += 3 * int((~keep).sum())
        pk = np.zeros((npk, PACKET_BYTES), dtype=np.uint8)
        pk[:, 0] = dropped & 0xFF
        pk[:, 1] = dropped >> 8
        pk[:, 3] = 3
        pk[:, 4:58] = words.view(np.uint8).reshape(npk, 54)
        blob = pk[keep].tobytes()
        return [blob[i : i + PACKET_BYTES] for i in range(0, len(blob), PACKET_BYTES)]

    def _produce(self, now: float) -> None:
        """Compute every measurement sample complete by ``now - latency`` (vectorised) into packets."""
        due = int(np.floor((now - LATENCY_S - self._t0) * RATE_HZ))
        backlog = due - self._next + 3 * len(self._queue) + len(self._rest)
        if backlog > self.cfg.fifo_samples:
            lost = backlog - self.cfg.fifo_samples
            while lost >= 3 and self._queue:
                self._queue.popleft()
                self._dropped += 3
                lost -= 3
            self._dropped += lost
            self._next += lost
        if due <= self._next:
            return
        if now - self._last_poll > 0.001:
            self._follower.poll()
            self._last_poll = now
        tl_t, tl_b = self._follower._arrays
        k = np.arange(self._next, due)
        t = self._t0 + k / RATE_HZ
        prof = self._profile
        if prof is None:
            cur = np.zeros(k.size)
        else:
            cur = sample_current_a(prof, t, RATE_HZ, tl_t, tl_b, self._rng, drift_origin_s=self._t0)
            cur = np.clip(cur, 0.0, None)
        coarse, fine = self._raw_main(cur)
        rows = np.empty((k.size, 10), dtype=np.int64)
        rows[:, 0] = coarse
        rows[:, 1] = fine
        rows[:, 2:8] = self._static_cols
        if self.cfg.voltage_drift_v_per_s:  # fault: a drifting supply (the phone's current is unchanged)
            dv = np.rint((t - self._t0) * self.cfg.voltage_drift_v_per_s / (ADC_V_PER_LSB * MAIN_VOLTAGE_SCALE))
            rows[:, 6] = np.clip(rows[:, 6] + dv.astype(np.int64), 0, 0xFFFF)
        rows[:, 8] = 0x00
        rows[:, 9] = 0
        if self._rest.size:
            rows = np.concatenate([self._rest, rows])
        n3 = rows.shape[0] - rows.shape[0] % 3
        self._queue.extend(self._encode(rows[:n3]))
        self._rest = rows[n3:]
        self._next = due

    def _prepare(self) -> None:
        vout = self.vout_v
        prof = self.cfg.profile
        self._profile = PowerModelProfile(**{**asdict(prof), "supply_voltage_v": vout}) if vout > 0 else None
        usb_a = prof.usb_passthrough_current_a if self.passthrough != 0 else 0.0
        uc, uf = self._raw_usb(usb_a)
        vraw = int(round(vout / (ADC_V_PER_LSB * MAIN_VOLTAGE_SCALE)))
        usb_v = int(round(5.0 / (ADC_V_PER_LSB * USB_VOLTAGE_SCALE))) if self.passthrough != 0 else 0
        self._static_cols = np.array([uc, uf, ZERO_CAL_RAW, ZERO_CAL_RAW, vraw, usb_v], dtype=np.int64)

    def read_packet(self, timeout_ms: int) -> bytes:
        """Block until a packet is ready (or the timeout passes) and return its 64 bytes."""
        if not self.sampling:
            raise USBErrorLike("Operation timed out (not sampling)", errno.ETIMEDOUT)
        deadline = time.monotonic() + max(timeout_ms, 1) / 1000.0
        while True:
            now = time.monotonic()
            fa = self.cfg.fail_after_s
            if fa is not None and now - self._t0 > fa:
                self.sampling = False
                raise USBErrorLike("No such device (it has been disconnected)", errno.ENODEV)
            if self._cal_times and now >= self._cal_times[0]:
                t = self._cal_times.pop(0)
                if not self._cal_times:
                    self._cal_times.append(t + self._cal_period_s)
                return self._cal_packet(self._dropped)
            if self._queue:
                return self._queue.popleft()
            due = int((now - LATENCY_S - self._t0) * RATE_HZ)
            if due - self._next >= BATCH_SAMPLES or (due - self._next >= 3 and now >= deadline):
                self._produce(now)
                continue
            if now >= deadline:
                raise USBErrorLike("Operation timed out", errno.ETIMEDOUT)
            wait = (self._next + BATCH_SAMPLES) / RATE_HZ + self._t0 + LATENCY_S - now
            time.sleep(min(max(wait, 0.0002), max(deadline - now, 0.0) + 1e-4))

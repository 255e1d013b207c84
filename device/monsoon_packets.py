"""Monsoon sample packets, decoded: a vectorised version of ``Monsoon.HVPM.swizzlePacket`` and the arithmetic of
``sampleEngine`` (zero/reference calibration, fine/coarse switch), plus the dropped-sample bookkeeping.

Used by the sampling process in :mod:`device.monsoon` (which re-exports these names); it needs no vendor library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZERO_CAL = 0x10
REF_CAL = 0x30
MEASUREMENT = 0x00


def decode_packets(packets: np.ndarray, signed: bool = False) -> dict[str, np.ndarray]:
    """Split raw 64-byte packets ``(k, 64) uint8`` into header fields and per-slot sample values.

    Returns ``dropped`` (k,), ``count`` (k,), ``values`` (k, 3, 8) channel words, ``type`` (k, 3) sample
    type (``& 0x30``), ``slot_valid`` (k, 3).
    """
    p = np.ascontiguousarray(packets, dtype=np.uint8)
    dropped = p[:, 0].astype(np.int64) | (p[:, 1].astype(np.int64) << 8)
    count = p[:, 3].astype(np.int64)
    words = p[:, 4:58].copy().view(">i2" if signed else ">u2").reshape(-1, 3, 9)
    values = words[:, :, :8].astype(np.int64)
    type_ = (words[:, :, 8].astype(np.int64) & 0xFF) & 0x30
    slot_valid = np.arange(3)[None, :] < count[:, None]
    return {"dropped": dropped, "count": count, "values": values, "type": type_, "slot_valid": slot_valid}


class Calibration:
    """sampleEngine's rolling calibration: last 5 non-zero zero/ref readings per channel (coarse, fine)."""

    def __init__(self, keep: int = 5):
        self.keep = keep
        self.zero = [[] for _ in range(6)]  # main c/f, usb c/f, aux c/f
        self.ref = [[] for _ in range(6)]

    def add(self, kind: int, values: np.ndarray) -> None:
        store = self.zero if kind == ZERO_CAL else self.ref
        for ch in range(6):
            v = int(values[ch])
            if v != 0:
                store[ch].append(v)
                del store[ch][: -self.keep]

    @property
    def calibrated(self) -> bool:
        return all(len(z) >= self.keep for z in self.zero) and all(len(r) >= self.keep for r in self.ref)

    def zero_of(self, ch: int) -> float:
        return sum(self.zero[ch]) / len(self.zero[ch])

    def ref_of(self, ch: int) -> float:
        return sum(self.ref[ch]) / len(self.ref[ch])


@dataclass(frozen=True)
class Scales:
    """Calibration constants from the status packet (and the model's thresholds)."""

    main_fine_scale: float
    main_coarse_scale: float
    usb_fine_scale: float
    usb_coarse_scale: float
    main_fine_zero: float
    main_coarse_zero: float
    usb_fine_zero: float
    usb_coarse_zero: float
    fine_threshold: int
    main_voltage_scale: float
    adc_ratio: float = 62.5e-6

    @classmethod
    def from_monsoon(cls, mon) -> Scales:
        sp = mon.statusPacket
        return cls(
            float(sp.mainFineScale), float(sp.mainCoarseScale), float(sp.usbFineScale), float(sp.usbCoarseScale),
            float(sp.mainFineZeroOffset), float(sp.mainCoarseZeroOffset), float(sp.usbFineZeroOffset),
            float(sp.usbCoarseZeroOffset), int(mon.fineThreshold), float(mon.mainvoltageScale),
        )


def _channel_ma(raw_c, raw_f, cal: Calibration, ch_c: int, scale_c, zero_c, scale_f, zero_f, thr) -> np.ndarray:
    zc = zero_c + cal.zero_of(ch_c)
    zf = zero_f + cal.zero_of(ch_c + 1)
    den_c = cal.ref_of(ch_c) - zc
    den_f = cal.ref_of(ch_c + 1) - zf
    coarse = (raw_c - zc) * (scale_c / den_c if den_c else 0.0)
    fine = (raw_f - zf) * (scale_f / den_f if den_f else 0.0) / 1000.0
    return np.where(raw_f < thr, fine, coarse)


def convert_samples(values: np.ndarray, cal: Calibration, sc: Scales) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measurement words ``(n, 8)`` -> main current (A), main voltage (V), USB current (A)."""
    v = values.astype(np.float64)
    main_ma = _channel_ma(v[:, 0], v[:, 1], cal, 0, sc.main_coarse_scale, sc.main_coarse_zero, sc.main_fine_scale,
                          sc.main_fine_zero, sc.fine_threshold)
    usb_ma = _channel_ma(v[:, 2], v[:, 3], cal, 2, sc.usb_coarse_scale, sc.usb_coarse_zero, sc.usb_fine_scale,
                         sc.usb_fine_zero, sc.fine_threshold)
    volts = v[:, 6] * sc.adc_ratio * sc.main_voltage_scale
    return main_ma / 1000.0, volts, usb_ma / 1000.0


class PacketDecoder:
    """Stateful batch decoder: calibration, dropped-counter rollover, sample numbering."""

    def __init__(self, scales: Scales, signed: bool = False):
        self.sc = scales
        self.signed = signed
        self.cal = Calibration()
        self.last_dropped_raw: int | None = None
        self.dropped_total = 0
        self.measured = 0  # measurement samples received

    def feed(self, packets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
        """Decode a batch; returns (sample_index, current_a, voltage_v, usb_current_a, calibrated).

        Samples that arrive before the monitor is calibrated are numbered but returned with NaN current.
        """
        d = decode_packets(packets, self.signed)
        raw = d["dropped"]
        prev = raw[0] if self.last_dropped_raw is None else self.last_dropped_raw
        steps = np.diff(np.concatenate(([prev], raw))) & 0xFFFF  # rollover of the 16-bit counter
        cum = self.dropped_total + np.cumsum(steps)
        self.dropped_total = int(cum[-1])
        self.last_dropped_raw = int(raw[-1])
        t = d["type"]
        valid = d["slot_valid"]
        for k, s in zip(*np.nonzero(valid & ((t == ZERO_CAL) | (t == REF_CAL))), strict=True):
            self.cal.add(int(t[k, s]), d["values"][k, s])
        meas = valid & (t == MEASUREMENT)
        per_packet = meas.sum(axis=1)
        before = self.measured + np.concatenate(([0], np.cumsum(per_packet)[:-1]))
        within = np.cumsum(meas, axis=1) - 1
        index = (before + cum)[:, None] + within
        index = index[meas]
        self.measured += int(per_packet.sum())
        vals = d["values"][meas]
        if not self.cal.calibrated or vals.shape[0] == 0:
            nan = np.full(vals.shape[0], np.nan)
            return index, nan, nan, nan, False
        cur, vol, usb = convert_samples(vals, self.cal, self.sc)
        return index, cur, vol, usb, True

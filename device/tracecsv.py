"""Monsoon CSV traces, read fully into arrays (see :mod:`device.tracefile` for the time-column rules).

The ``monsoon`` library's sampleEngine writes ``Time(ms),Main(mA),Main Voltage(V),`` (trailing comma) whose
"Time(ms)" actually holds seconds since start, one host value per USB packet repeated for its samples;
Monsoon PowerTool exports one time per sample, in ms.  :func:`read_monsoon_csv` tells them apart from the
sample spacing and the rate (or ``time_unit``), rebuilds times from the sample index and rate, and turns gaps
in per-sample times into dropped samples.  A header of more than 64 KiB or 256 columns is refused before
parsing; quoted input in errors is cut short.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DataError, short_repr
from device.tracechunk import DEFAULT_CHUNK_SAMPLES, MAX_RATE_HZ, TraceChunk

log = logging.getLogger(__name__)

#: A Monsoon CSV header line is short and has a handful of columns; more is not a Monsoon CSV.
MAX_CSV_HEADER_BYTES = 64 * 1024
MAX_CSV_COLUMNS = 256


@dataclass
class CsvTrace:
    """A Monsoon CSV read fully into arrays (the time column interpreted, sample indices rebuilt)."""

    path: Path
    rate_hz: float
    time_mode: str  # "per-packet-seconds" | "per-sample-s" | "per-sample-ms"
    index: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    instrument: dict[str, Any] = field(default_factory=dict)
    kind = "csv"

    @property
    def first_index(self) -> int:
        return int(self.index[0]) if self.index.size else 0

    @property
    def end_index(self) -> int:
        return int(self.index[-1]) + 1 if self.index.size else 0

    @property
    def samples(self) -> int:
        return int(self.index.size)

    @property
    def dropped_samples(self) -> int:
        return self.end_index - self.first_index - self.samples

    complete = True
    anchor_mono_s = 0.0

    def iter_chunks(
        self, start_index: int | None = None, stop_index: int | None = None, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
    ) -> Iterator[TraceChunk]:
        lo = self.first_index if start_index is None else start_index
        hi = self.end_index if stop_index is None else stop_index
        a, z = np.searchsorted(self.index, [lo, hi])
        idx = self.index[a:z]
        if idx.size == 0:
            return
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        bounds = np.concatenate(([0], breaks, [idx.size]))
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            for p in range(s, e, chunk_samples):
                q = min(p + chunk_samples, e)
                yield TraceChunk(int(idx[p]), self.current_a[a + p : a + q], self.voltage_v[a + p : a + q])


def _find_col(names: list[str], *keys: str, exclude: str = "") -> str | None:
    for n in names:
        low = n.strip().lower()
        if all(k in low for k in keys) and not (exclude and exclude in low):
            return n
    return None


def _check_csv_header(p: Path, head: bytes) -> None:
    """Refuse, before parsing, a header line that is too long or has too many columns to be a Monsoon CSV."""
    line_end = head.find(b"\n")
    line = head if line_end < 0 else head[:line_end]
    if line_end < 0 and len(head) > MAX_CSV_HEADER_BYTES:
        raise DataError(f"{p}: not a Monsoon CSV (the first line is longer than {MAX_CSV_HEADER_BYTES} bytes)")
    n_cols = line.count(b",") + 1
    if n_cols > MAX_CSV_COLUMNS:
        raise DataError(f"{p}: not a Monsoon CSV ({n_cols} columns in the header; at most {MAX_CSV_COLUMNS})")


def read_monsoon_csv(path: str | Path, rate_hz: float = 5000.0, time_unit: str | None = None) -> CsvTrace:
    """Read a Monsoon CSV (sampleEngine or PowerTool flavour); see the module doc for the rules."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such trace file")
    if time_unit not in (None, "s", "ms"):
        raise DataError(f"time unit must be 's' or 'ms', not {time_unit!r}")
    if not (isinstance(rate_hz, int | float) and 0 < rate_hz <= MAX_RATE_HZ):
        raise DataError(f"rate must be a positive number of Hz up to {MAX_RATE_HZ:g}, not {short_repr(rate_hz, 40)}")
    src: Any = p
    try:
        with open(p, "rb") as fh:
            head = fh.read(MAX_CSV_HEADER_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{p}: cannot read trace: {exc.strerror or exc}") from None
    _check_csv_header(p, head)
    if b"np.float64(" in head:
        # the monsoon library writes repr() of numpy scalars: under numpy >= 2 that is "np.float64(0.1)"
        import io

        src = io.BytesIO(p.read_bytes().replace(b"np.float64(", b"").replace(b")", b""))
    try:
        df = pd.read_csv(src, index_col=False, skipinitialspace=True, engine="c", low_memory=False)
    except pd.errors.ParserError as exc:
        msg = str(exc).replace("Error tokenizing data. C error: ", "")
        raise DataError(f"{p}: malformed CSV: {short_repr(msg.strip(), 120)}") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a Monsoon CSV ({short_repr(str(exc), 120)})") from None
    except (ValueError, OverflowError, MemoryError) as exc:  # pandas' other refusals of odd input
        raise DataError(f"{p}: malformed CSV ({short_repr(str(exc), 120)})") from None
    names = [str(c) for c in df.columns]
    tcol = _find_col(names, "time")
    icol = _find_col(names, "main", exclude="volt")
    vcol = _find_col(names, "main", "volt")
    if tcol is None or icol is None:
        raise DataError(f"{p}: not a Monsoon CSV (need Time and Main current columns, found "
                        f"{short_repr(', '.join(names), 120)})")
    cols = {"time": tcol, "current": icol} | ({"voltage": vcol} if vcol else {})
    arrays: dict[str, np.ndarray] = {}
    for key, col in cols.items():
        s = df[col]
        if not pd.api.types.is_numeric_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            bad = np.flatnonzero(num.isna().to_numpy() & s.notna().to_numpy())
            if bad.size:
                raise DataError(f"{p}: malformed CSV: line {int(bad[0]) + 2}: {short_repr(col, 40)}="
                                f"{short_repr(s.iloc[bad[0]])} is not a number")
            s = num
        arrays[key] = s.to_numpy(dtype=np.float64)
    t = arrays["time"]
    if t.size == 0:
        raise DataError(f"{p}: empty trace (no samples)")
    if not np.isfinite(t).all():
        raise DataError(f"{p}: line {int(np.flatnonzero(~np.isfinite(t))[0]) + 2}: missing or infinite time value")
    d = np.diff(t)
    back = np.flatnonzero(d < 0)
    if back.size:
        ln = int(back[0]) + 3
        raise DataError(f"{p}: line {ln}: timestamp goes backwards ({t[back[0]]:g} -> {t[back[0] + 1]:g})")
    unit_i = icol.lower()
    cur = arrays["current"] * (1e-3 if "(ma)" in unit_i or "ma" in unit_i.split("(")[-1] else 1.0)
    vol = arrays.get("voltage", np.full(t.size, np.nan))
    spacing_s = 1.0 / rate_hz
    repeats = float(np.mean(d == 0)) if d.size else 0.0
    if repeats > 0.2:
        # one host time per USB packet: rebuild from the index; the span tells the unit
        span = t[-1] - t[0]
        expect_s = t.size * spacing_s
        unit = time_unit or ("s" if span <= 3 * expect_s + 1.0 else "ms")
        mode = f"per-packet-{unit}"
        index = np.arange(t.size, dtype=np.int64)
        scale = 1.0 if unit == "s" else 1e-3
        if span * scale > 1.5 * expect_s + 1.0:
            log.warning("%s: host time span %.3f s exceeds %d samples / %g Hz = %.3f s: samples may be missing",
                        p, span * scale, t.size, rate_hz, expect_s)
    else:
        med = float(np.median(d)) if d.size else spacing_s
        if time_unit:
            unit = time_unit
        elif abs(med - spacing_s) <= 0.25 * spacing_s:
            unit = "s"
        elif abs(med - 1e3 * spacing_s) <= 0.25 * 1e3 * spacing_s:
            unit = "ms"
        else:
            raise DataError(
                f"{p}: sample spacing {med:g} fits neither seconds nor ms at {rate_hz:g} Hz; "
                "give --rate-hz or --time-unit"
            )
        mode = f"per-sample-{unit}"
        scale = 1.0 if unit == "s" else 1e-3
        if abs(med * scale * rate_hz - 1.0) > 0.25:
            raise DataError(
                f"{p}: sample spacing {med:g} {unit} is {med * scale * rate_hz:g} samples at {rate_hz:g} Hz, "
                "not 1; wrong --time-unit or --rate-hz?"
            )
        index = np.rint((t - t[0]) * scale * rate_hz).astype(np.int64)
        dup = np.flatnonzero(np.diff(index) < 1)
        if dup.size:
            raise DataError(f"{p}: line {int(dup[0]) + 3}: two samples within one sample period; wrong --rate-hz?")
    return CsvTrace(p, float(rate_hz), mode, index, cur, vol, {"kind": "csv", "source": p.name, "time_mode": mode})

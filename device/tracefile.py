"""Power trace files: our streaming binary format (``.ptrc``) and the Monsoon CSV flavours, read in chunks.

Binary format (little endian), written while sampling so nothing measured is lost if the sampler dies::

    b"PWRTRC01" | uint32 n | n bytes JSON header (schema_version, rate_hz, anchor_mono_s, instrument, ...)
    then blocks:  b"BLK1" | int64 start_index | uint32 n | uint32 flags | float32 usb_current_a
                  | n float32 current_a | n float32 voltage_v
    then, when the sampler stopped cleanly:  b"END1" | uint32 n | n bytes JSON trailer (dropped_samples, ...)

Sample ``i`` of a block covers host time ``anchor_mono_s + (start_index + i) / rate_hz``; a jump in
``start_index`` between blocks is a run of dropped samples.  ``flags`` bit 0 = calibrated.  A file without
trailer (sampler killed) still reads up to its last complete block, and says so (``complete`` False).

CSV: the ``monsoon`` library's sampleEngine writes ``Time(ms),Main(mA),Main Voltage(V),`` (trailing comma)
whose "Time(ms)" actually holds seconds since start, one host value per USB packet repeated for its samples;
Monsoon PowerTool exports one time per sample, in ms.  :func:`open_trace` tells them apart from the sample
spacing and the rate (or ``time_unit``), rebuilds times from the sample index and rate, and turns gaps in
per-sample times into dropped samples.

Malformed input (crafted headers, a CSV header of millions of columns, a line of 50 MB) is one
:class:`DataError` whose quoted input is cut to about 80 characters.  The module is one thing, the
trace formats, and a little over 500 lines for it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from device.errors import DataError

log = logging.getLogger(__name__)

MAGIC = b"PWRTRC01"
BLOCK_MAGIC = b"BLK1"
END_MAGIC = b"END1"
SCHEMA_VERSION = 1
_BLOCK_HDR = struct.Struct("<4sqIIf")
FLAG_CALIBRATED = 1
DEFAULT_CHUNK_SAMPLES = 1 << 16  # 64 Ki samples: ~2 MB of working memory, fastest on small caches


class TraceChunk(NamedTuple):
    """Contiguous samples: index of the first one, current (A), voltage (V), calibration, USB-channel current."""

    start_index: int
    current_a: np.ndarray
    voltage_v: np.ndarray
    calibrated: bool = True
    usb_current_a: float = float("nan")


class TraceWriter:
    """Append-only writer of a ``.ptrc`` file; every block is flushed to the OS when written."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        if "rate_hz" not in header or not float(header["rate_hz"]) > 0:
            raise DataError("trace header needs a positive rate_hz")
        hdr = {"schema_version": SCHEMA_VERSION, **header}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "xb")  # never overwrite a measurement
        blob = json.dumps(hdr, sort_keys=True).encode()
        self._fh.write(MAGIC + struct.pack("<I", len(blob)) + blob)
        self._fh.flush()
        self.next_index: int | None = None
        self.samples_written = 0

    def append(
        self,
        start_index: int,
        current_a: np.ndarray,
        voltage_v: np.ndarray,
        calibrated: bool = True,
        usb_current_a: float = float("nan"),
    ) -> None:
        """Write one block of contiguous samples starting at ``start_index``."""
        cur = np.ascontiguousarray(current_a, dtype="<f4")
        vol = np.ascontiguousarray(voltage_v, dtype="<f4")
        if cur.shape != vol.shape or cur.ndim != 1:
            raise DataError("trace block: current and voltage must be 1-D arrays of the same length")
        if cur.size == 0:
            return
        if self.next_index is not None and start_index < self.next_index:
            raise DataError(f"trace block starts at sample {start_index}, before {self.next_index}")
        self._fh.write(
            _BLOCK_HDR.pack(BLOCK_MAGIC, int(start_index), cur.size, FLAG_CALIBRATED if calibrated else 0,
                            float(usb_current_a))
        )
        self._fh.write(cur.tobytes())
        self._fh.write(vol.tobytes())
        self._fh.flush()
        self.next_index = int(start_index) + cur.size
        self.samples_written += cur.size

    def close(self, trailer: dict[str, Any] | None = None) -> None:
        """Write the trailer (summary of the run) and close; safe to call twice."""
        if self._fh.closed:
            return
        blob = json.dumps({"samples_written": self.samples_written, **(trailer or {})}, sort_keys=True).encode()
        self._fh.write(END_MAGIC + struct.pack("<I", len(blob)) + blob)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close({"end_reason": "exception" if exc[0] else "closed"})


@dataclass
class _Block:
    offset: int  # file offset of the sample data
    start_index: int
    n: int
    calibrated: bool
    usb_current_a: float


#: Largest JSON header or trailer a trace may carry (ours are a few hundred bytes).
MAX_JSON_BYTES = 1 << 20
#: Highest sample rate a trace may claim (the Monsoon HVPM samples at 5 kHz).
MAX_RATE_HZ = 1e7
#: Highest sample index a block may start at (2**48: 1,600 years at 5 kHz; keeps index sums in int64).
MAX_SAMPLE_INDEX = 1 << 48
#: A Monsoon CSV header line is short and has a handful of columns; more is not a Monsoon CSV.
MAX_CSV_HEADER_BYTES = 64 * 1024
MAX_CSV_COLUMNS = 256


def _short(value: object, limit: int = 80) -> str:
    """``value`` quoted for a one-line error, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit] + "...") if len(text) > limit else repr(text)


def _json_object(path: Path, blob: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a trace's header or trailer; one DataError for anything else."""
    try:
        obj = json.loads(blob)
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, absurd nesting
        raise DataError(f"{path}: corrupt trace {what} (not JSON)") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: corrupt trace {what} (a JSON {type(obj).__name__}, not an object)")
    return obj


def _number(path: Path, header: dict[str, Any], key: str, default: float | None = None) -> float:
    v = header.get(key, default)
    if v is None:
        raise DataError(f"{path}: trace header lacks {key}")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DataError(f"{path}: trace header {key} is not a number ({_short(v, 40)})")
    try:
        f = float(v)
    except OverflowError:
        f = float("inf")
    if not np.isfinite(f):
        raise DataError(f"{path}: trace header {key} is not finite ({_short(v, 40)})")
    return f


def parse_header(path: Path, blob: bytes) -> tuple[dict[str, Any], float, float, dict[str, Any]]:
    """(header, rate_hz, anchor_mono_s, instrument) of a ``.ptrc`` header; one DataError when malformed."""
    header = _json_object(path, blob, "header")
    ver = header.get("schema_version", 0)
    if isinstance(ver, bool) or not isinstance(ver, int):
        raise DataError(f"{path}: trace header schema_version is not a whole number ({_short(ver, 40)})")
    if ver > SCHEMA_VERSION:
        raise DataError(f"{path}: trace schema_version {ver} is newer than this harness ({SCHEMA_VERSION})")
    rate_hz = _number(path, header, "rate_hz")
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise DataError(f"{path}: trace header rate_hz {rate_hz:g} is not in (0, {MAX_RATE_HZ:g}] Hz")
    anchor = _number(path, header, "anchor_mono_s", 0.0)
    instrument = header.get("instrument", {})
    if not isinstance(instrument, dict):
        raise DataError(f"{path}: trace header instrument is not a table ({_short(instrument, 40)})")
    return header, rate_hz, anchor, dict(instrument)


class TraceReader:
    """Reads a ``.ptrc`` file in chunks; can be polled while another process is still writing it.

    A malformed file (bad magic, header or trailer JSON of the wrong shape, a zero or non-finite rate,
    a header over 1 MiB) is one :class:`DataError`, never a ``KeyError`` or ``ZeroDivisionError``.
    """

    kind = "ptrc"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(12)
                if len(head) < 12 or head[:8] != MAGIC:
                    raise DataError(f"{self.path}: not a power trace file (bad magic)")
                (n,) = struct.unpack("<I", head[8:12])
                if n > MAX_JSON_BYTES:
                    raise DataError(f"{self.path}: corrupt trace header (claims {n} bytes)")
                blob = fh.read(n)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read trace: {exc.strerror or exc}") from None
        if len(blob) != n:
            raise DataError(f"{self.path}: truncated trace header ({len(blob)} of {n} bytes)")
        self.header, self.rate_hz, self.anchor_mono_s, self.instrument = parse_header(self.path, blob)
        self._data_start = 12 + n
        self._scan_pos = self._data_start
        self.blocks: list[_Block] = []
        self.trailer: dict[str, Any] | None = None
        self.refresh()

    @property
    def complete(self) -> bool:
        """True when the writer closed the file cleanly (trailer present)."""
        return self.trailer is not None

    def refresh(self) -> None:
        """Index blocks appended since the last call (header reads only, no sample data)."""
        if self.trailer is not None:
            return
        try:
            self._scan()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read trace: {exc.strerror or exc}") from None

    def _scan(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            pos = self._scan_pos
            while pos + 8 <= size:
                fh.seek(pos)
                tag = fh.read(4)
                if tag == END_MAGIC:
                    (n,) = struct.unpack("<I", fh.read(4))
                    if n > MAX_JSON_BYTES:
                        raise DataError(f"{self.path}: corrupt trace trailer (claims {n} bytes)")
                    blob = fh.read(n)
                    if len(blob) == n:
                        self.trailer = _json_object(self.path, blob, "trailer")
                        pos += 8 + n
                    break
                if tag != BLOCK_MAGIC:
                    raise DataError(f"{self.path}: corrupt trace (bad block tag at byte {pos})")
                if pos + _BLOCK_HDR.size > size:
                    break
                fh.seek(pos)
                _, start, n, flags, usb = _BLOCK_HDR.unpack(fh.read(_BLOCK_HDR.size))
                end = pos + _BLOCK_HDR.size + 8 * n
                if end > size:
                    break  # block still being written
                if not 0 <= start <= MAX_SAMPLE_INDEX:
                    raise DataError(f"{self.path}: corrupt trace (sample index {start} at byte {pos})")
                if self.blocks and start < self.blocks[-1].start_index + self.blocks[-1].n:
                    raise DataError(f"{self.path}: sample index goes backwards at byte {pos}")
                self.blocks.append(_Block(pos + _BLOCK_HDR.size, start, n, bool(flags & FLAG_CALIBRATED), usb))
                pos = end
        self._scan_pos = pos

    @property
    def first_index(self) -> int:
        return self.blocks[0].start_index if self.blocks else 0

    @property
    def end_index(self) -> int:
        """One past the last sample index received so far."""
        return self.blocks[-1].start_index + self.blocks[-1].n if self.blocks else 0

    @property
    def samples(self) -> int:
        return sum(b.n for b in self.blocks)

    def iter_chunks(
        self, start_index: int | None = None, stop_index: int | None = None, chunk_samples: int = DEFAULT_CHUNK_SAMPLES
    ) -> Iterator[TraceChunk]:
        """Yield contiguous chunks (at most ``chunk_samples`` each) of samples in ``[start, stop)``.

        Consecutive contiguous blocks are merged, so small sampler blocks do not slow analysis; memory is
        bounded by ``chunk_samples``.
        """
        lo = self.first_index if start_index is None else int(start_index)
        hi = self.end_index if stop_index is None else int(stop_index)
        starts = np.fromiter((b.start_index for b in self.blocks), dtype=np.int64, count=len(self.blocks))
        first = max(int(np.searchsorted(starts, lo, side="right")) - 1, 0)
        pend: list[tuple[int, np.ndarray, np.ndarray, bool, float]] = []
        pend_n = 0

        def flush() -> TraceChunk:
            nonlocal pend, pend_n
            s0 = pend[0][0]
            if len(pend) == 1:
                c, v, cal, usb = pend[0][1], pend[0][2], pend[0][3], pend[0][4]
            else:
                c = np.concatenate([p[1] for p in pend])
                v = np.concatenate([p[2] for p in pend])
                cal = all(p[3] for p in pend)
                usbs = [p[4] for p in pend if np.isfinite(p[4])]
                usb = max(usbs) if usbs else float("nan")
            pend, pend_n = [], 0
            return TraceChunk(s0, c, v, cal, usb)

        with open(self.path, "rb") as fh:
            for b in self.blocks[first:]:
                if b.start_index >= hi:
                    break
                a = max(lo - b.start_index, 0)
                z = min(hi - b.start_index, b.n)
                if z <= a:
                    continue
                pos = a
                while pos < z:
                    take = min(z - pos, chunk_samples - pend_n)
                    fh.seek(b.offset + 4 * pos)
                    cur = np.fromfile(fh, dtype="<f4", count=take)
                    fh.seek(b.offset + 4 * b.n + 4 * pos)
                    vol = np.fromfile(fh, dtype="<f4", count=take)
                    s = b.start_index + pos
                    if pend and pend[-1][0] + len(pend[-1][1]) != s:
                        yield flush()
                    pend.append((s, cur, vol, b.calibrated, b.usb_current_a))
                    pend_n += take
                    pos += take
                    if pend_n >= chunk_samples:
                        yield flush()
            if pend:
                yield flush()

    @property
    def dropped_samples(self) -> int:
        """Samples missing between the first and last received ones (gaps in the index)."""
        return self.end_index - self.first_index - self.samples


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
        raise DataError(f"rate must be a positive number of Hz up to {MAX_RATE_HZ:g}, not {_short(rate_hz, 40)}")
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
        raise DataError(f"{p}: malformed CSV: {_short(msg.strip(), 120)}") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not a Monsoon CSV ({_short(str(exc), 120)})") from None
    except (ValueError, OverflowError, MemoryError) as exc:  # pandas' other refusals of odd input
        raise DataError(f"{p}: malformed CSV ({_short(str(exc), 120)})") from None
    names = [str(c) for c in df.columns]
    tcol = _find_col(names, "time")
    icol = _find_col(names, "main", exclude="volt")
    vcol = _find_col(names, "main", "volt")
    if tcol is None or icol is None:
        raise DataError(f"{p}: not a Monsoon CSV (need Time and Main current columns, found "
                        f"{_short(', '.join(names), 120)})")
    cols = {"time": tcol, "current": icol} | ({"voltage": vcol} if vcol else {})
    arrays: dict[str, np.ndarray] = {}
    for key, col in cols.items():
        s = df[col]
        if not pd.api.types.is_numeric_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            bad = np.flatnonzero(num.isna().to_numpy() & s.notna().to_numpy())
            if bad.size:
                raise DataError(f"{p}: malformed CSV: line {int(bad[0]) + 2}: {_short(col, 40)}="
                                f"{_short(s.iloc[bad[0]])} is not a number")
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


def open_trace(path: str | Path, rate_hz: float | None = None, time_unit: str | None = None):
    """Open a trace by content: our binary ``.ptrc`` (TraceReader) or a Monsoon CSV (CsvTrace)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise DataError(f"{p}: cannot open trace: {exc.strerror or exc}") from None
    if head == MAGIC:
        r = TraceReader(p)
        if rate_hz is not None and not abs(rate_hz - r.rate_hz) <= 1e-9:
            raise DataError(f"{p}: the file says {r.rate_hz:g} Hz; --rate-hz {rate_hz:g} contradicts it")
        return r
    return read_monsoon_csv(p, 5000.0 if rate_hz is None else rate_hz, time_unit)


def write_trace(path: str | Path, chunks, header: dict[str, Any], trailer: dict[str, Any] | None = None) -> int:
    """Write chunks (``TraceChunk``) to a new ``.ptrc`` file via a temporary name; returns samples written."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    w = TraceWriter(tmp, header)
    try:
        for c in chunks:
            w.append(c.start_index, c.current_a, c.voltage_v, c.calibrated, c.usb_current_a)
        w.close(trailer or {"end_reason": "converted"})
    except BaseException:
        w._fh.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)
    return w.samples_written

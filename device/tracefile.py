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
:class:`DataError` whose quoted input is cut to about 80 characters.  The CSV reader lives in
:mod:`device.tracecsv` and the chunk type in :mod:`device.tracechunk`; both are re-exported here.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DataError, short_repr
from device.tracechunk import DEFAULT_CHUNK_SAMPLES, MAX_RATE_HZ, TraceChunk
from device.tracecsv import MAX_CSV_COLUMNS, MAX_CSV_HEADER_BYTES, CsvTrace, read_monsoon_csv

__all__ = [
    "DEFAULT_CHUNK_SAMPLES", "FLAG_CALIBRATED", "MAGIC", "MAX_CSV_COLUMNS", "MAX_CSV_HEADER_BYTES", "MAX_RATE_HZ",
    "CsvTrace", "TraceChunk", "TraceReader", "TraceWriter", "open_trace", "read_monsoon_csv", "write_trace",
]


MAGIC = b"PWRTRC01"
BLOCK_MAGIC = b"BLK1"
END_MAGIC = b"END1"
SCHEMA_VERSION = 1
_BLOCK_HDR = struct.Struct("<4sqIIf")
FLAG_CALIBRATED = 1


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
#: Highest sample index a block may start at (2**48: 1,600 years at 5 kHz; keeps index sums in int64).
MAX_SAMPLE_INDEX = 1 << 48


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
        raise DataError(f"{path}: trace header {key} is not a number ({short_repr(v, 40)})")
    try:
        f = float(v)
    except OverflowError:
        f = float("inf")
    if not np.isfinite(f):
        raise DataError(f"{path}: trace header {key} is not finite ({short_repr(v, 40)})")
    return f


def parse_header(path: Path, blob: bytes) -> tuple[dict[str, Any], float, float, dict[str, Any]]:
    """(header, rate_hz, anchor_mono_s, instrument) of a ``.ptrc`` header; one DataError when malformed."""
    header = _json_object(path, blob, "header")
    ver = header.get("schema_version", 0)
    if isinstance(ver, bool) or not isinstance(ver, int):
        raise DataError(f"{path}: trace header schema_version is not a whole number ({short_repr(ver, 40)})")
    if ver > SCHEMA_VERSION:
        raise DataError(f"{path}: trace schema_version {ver} is newer than this harness ({SCHEMA_VERSION})")
    rate_hz = _number(path, header, "rate_hz")
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise DataError(f"{path}: trace header rate_hz {rate_hz:g} is not in (0, {MAX_RATE_HZ:g}] Hz")
    anchor = _number(path, header, "anchor_mono_s", 0.0)
    instrument = header.get("instrument", {})
    if not isinstance(instrument, dict):
        raise DataError(f"{path}: trace header instrument is not a table ({short_repr(instrument, 40)})")
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

"""Our binary trace format and the Monsoon CSV readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.errors import DataError
from device.tracefile import MAGIC, TraceReader, TraceWriter, open_trace, read_monsoon_csv


def _write(path, blocks, trailer=True):
    w = TraceWriter(path, {"rate_hz": 5000.0, "anchor_mono_s": 12.5, "instrument": {"kind": "test"}})
    for s, n in blocks:
        w.append(s, np.arange(s, s + n, dtype=np.float32) * 1e-3, np.full(n, 4.0, np.float32), True, 0.0)
    if trailer:
        w.close({"dropped_samples": 7})
    else:
        w._fh.close()
    return w


def test_round_trip_gaps_and_bounded_chunks(tmp_path):
    p = tmp_path / "a.ptrc"
    _write(p, [(0, 3000), (3000, 2000), (5007, 4000)])
    r = TraceReader(p)
    assert r.complete and r.trailer["dropped_samples"] == 7 and r.trailer["samples_written"] == 9000
    assert r.samples == 9000 and r.dropped_samples == 7 and r.end_index == 9007
    assert r.anchor_mono_s == 12.5 and r.instrument == {"kind": "test"}
    chunks = list(r.iter_chunks(chunk_samples=1500))
    assert max(c.current_a.size for c in chunks) <= 1500
    idx = np.concatenate([np.arange(c.start_index, c.start_index + c.current_a.size) for c in chunks])
    cur = np.concatenate([c.current_a for c in chunks])
    np.testing.assert_allclose(cur, idx.astype(np.float32) * np.float32(1e-3))
    assert 5000 not in idx and 5007 in idx
    # contiguous blocks are merged into one chunk
    assert [c.start_index for c in r.iter_chunks()] == [0, 5007]
    part = list(r.iter_chunks(2990, 5010))
    assert [(c.start_index, c.current_a.size) for c in part] == [(2990, 2010), (5007, 3)]


def test_truncated_file_keeps_what_was_measured(tmp_path):
    p = tmp_path / "b.ptrc"
    _write(p, [(0, 1000), (1000, 1000)], trailer=False)
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 100)  # the sampler died inside the second block
    r = TraceReader(p)
    assert not r.complete and r.samples == 1000


def test_never_overwrites_and_refuses_newer_schema(tmp_path):
    p = tmp_path / "c.ptrc"
    _write(p, [(0, 10)])
    with pytest.raises(FileExistsError):
        TraceWriter(p, {"rate_hz": 5000.0})
    blob = json.dumps({"schema_version": 99, "rate_hz": 5000.0}).encode()
    q = tmp_path / "d.ptrc"
    q.write_bytes(MAGIC + len(blob).to_bytes(4, "little") + blob)
    with pytest.raises(DataError, match="newer"):
        TraceReader(q)
    with pytest.raises(DataError):
        TraceWriter(tmp_path / "e.ptrc", {"rate_hz": 0})


def test_backwards_block_refused(tmp_path):
    w = TraceWriter(tmp_path / "f.ptrc", {"rate_hz": 5000.0})
    w.append(100, np.zeros(10), np.zeros(10))
    with pytest.raises(DataError):
        w.append(105, np.zeros(10), np.zeros(10))


def test_csv_modes(tmp_path):
    se = tmp_path / "se.csv"
    t = (np.arange(30) // 3) * 0.0006 + 0.01
    se.write_text("Time(ms),Main(mA),Main Voltage(V),\n" + "".join(f"{v:.4f},100.0,4.2,\n" for v in t))
    tr = read_monsoon_csv(se)
    assert tr.time_mode == "per-packet-s" and tr.samples == 30 and tr.dropped_samples == 0
    np.testing.assert_allclose(tr.current_a, 0.1)
    pt = tmp_path / "pt.csv"
    t_s = np.delete(np.arange(20) / 5000.0, [5, 6])
    pt.write_text("Time(s),Main(A),Main Voltage(V)\n" + "".join(f"{v:.6f},0.25,4.0\n" for v in t_s))
    tr = open_trace(pt)
    assert tr.time_mode == "per-sample-s" and tr.dropped_samples == 2
    np.testing.assert_allclose(tr.current_a, 0.25)
    with pytest.raises(DataError, match="neither"):
        read_monsoon_csv(pt, rate_hz=50.0)


@pytest.mark.parametrize("header,msg", [
    (b"{}", "lacks rate_hz"),
    (b"[]", "a JSON list, not an object"),
    (b'{"rate_hz": 0}', "rate_hz 0 is not in"),
    (b'{"rate_hz": "fast"}', "rate_hz is not a number"),
    (b'{"rate_hz": true}', "rate_hz is not a number"),
    (b'{"rate_hz": 5000, "anchor_mono_s": Infinity}', "anchor_mono_s is not finite"),
    (b'{"rate_hz": 5000, "instrument": [1]}', "instrument is not a table"),
    (b'{"rate_hz": 5000, "schema_version": 1.5}', "schema_version is not a whole number"),
    (b"\xff\xfe", "not JSON"),
])
def test_crafted_ptrc_header_is_one_data_error(tmp_path, header, msg):
    import struct

    from device.errors import DataError
    from device.tracefile import TraceReader

    p = tmp_path / "t.ptrc"
    p.write_bytes(b"PWRTRC01" + struct.pack("<I", len(header)) + header)
    with pytest.raises(DataError, match=msg):
        TraceReader(p)


def test_csv_long_value_is_cut_in_the_error(tmp_path):
    from device.errors import DataError
    from device.tracefile import read_monsoon_csv

    p = tmp_path / "t.csv"
    p.write_bytes(b"Time(s),Main(mA)\n" + b"z" * 1_000_000 + b",1\n")
    with pytest.raises(DataError) as info:
        read_monsoon_csv(p)
    assert len(str(info.value)) < 300 and "zzz..." in str(info.value)

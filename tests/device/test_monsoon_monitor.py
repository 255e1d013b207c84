"""MonsoonMonitor end to end: sampling process, vendor library, virtual HVPM, trace file, windows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from device import sync
from device.errors import DataError, DeviceError, MeasurementError
from device.monsoon import MonsoonMonitor, MonsoonOptions
from device.power_model import PowerModelProfile, expected_energy_j, read_busy_timeline, write_busy_timeline
from device.tracefile import TraceReader
from device.virtual_monsoon.hvpm import VirtualHVPM, VirtualMonsoonConfig
from harness import energy as E

PROFILE = PowerModelProfile(noise_current_a=0.01, seed=3)


def _cfg(tmp_path: Path, **kw) -> VirtualMonsoonConfig:
    tl = tmp_path / "busy_timeline.tsv"
    if not tl.exists():
        write_busy_timeline(tl, [])
    return VirtualMonsoonConfig(root=str(tmp_path), timeline_path=str(tl), profile=kw.pop("profile", PROFILE), **kw)


def test_windows_energy_sync_and_passthrough_restored(tmp_path):
    cfg = _cfg(tmp_path)
    mon = MonsoonMonitor(MonsoonOptions(voltage_v=4.0), tmp_path / "run.ptrc", virtual=cfg)
    mon.start()
    assert mon.instrument["serial"] == 20421 and mon.instrument["firmware"] == 32
    t = time.monotonic() + 0.3
    # the phone: idle, start marker, 2 threads busy for 0.8 s, end marker
    ev = [(t - 5, 0.0)]
    for a, b in sync.marker_busy_intervals("start", t):
        ev += [(a, 1.0), (b, 0.0)]
    w0 = t + sync.marker_duration_s("start")
    ev += [(w0, 2.0), (w0 + 0.8, 0.0)]
    for a, b in sync.marker_busy_intervals("end", w0 + 0.8):
        ev += [(a, 1.0), (b, 0.0)]
    t_end = w0 + 0.8 + sync.marker_duration_s("end")
    write_busy_timeline(cfg.timeline_path, ev)
    mon.begin("idle", t - 1.0)
    mon.end("idle", t - 0.1)
    mon.begin("run", t - 0.05)
    flat = (w0 + 0.2, w0 + 0.6)
    mon.begin("flat", flat[0])
    tr_flat = mon.end("flat", flat[1])
    tr = mon.end("run", t_end + 0.05)
    with pytest.raises(MeasurementError):
        mon.end("run")
    path = mon.stop()
    # energy of a flat stretch: exact from the model, independent of any sync
    e_true = expected_energy_j(PROFILE, flat[0], flat[1], *read_busy_timeline(cfg.timeline_path))
    assert tr_flat.dropped_samples == 0 and tr_flat.calibrated and tr_flat.usb_current_a_max < 0.005
    assert abs(_energy_j(tr_flat) / e_true - 1) < 0.005
    # sync: markers found in the trace vs the truth on the device's own sample clock
    t0 = json.loads((tmp_path / "virtual_monsoon_20421.session.json").read_text())["sampling_started_mono_s"]
    # (times from find_marker are seconds from sample index 0; the device's sample 0 started at t0)
    ms = sync.find_marker(tr.current_a, tr.rate_hz, "start", sample_index=tr.sample_index)
    me = sync.find_marker(tr.current_a, tr.rate_hz, "end", sample_index=tr.sample_index)
    start_true = sync.marker_busy_intervals("start", t)[-1][1]
    end_true = sync.marker_busy_intervals("end", w0 + 0.8)[0][0]
    assert abs(t0 + ms.sync_point_s - start_true) < 1e-3
    assert abs(t0 + me.sync_point_s - end_true) < 1e-3
    # host-timestamp fallback: the anchor is late by the USB pipeline latency only
    assert 0 <= mon.anchor_mono_s - t0 < 0.05
    # window between markers: energy within 0.5% of the truth
    off = tr.sample_index[0] / tr.rate_hz  # analysis times count from the window's first sample
    (st,) = E.window_stats_from_arrays(tr.current_a, tr.voltage_v, tr.rate_hz,
                                       [(ms.sync_point_s - off, me.sync_point_s - off)], sample_index=tr.sample_index)
    e_win = expected_energy_j(PROFILE, start_true, end_true, *read_busy_timeline(cfg.timeline_path))
    assert st.valid and abs(st.energy_j / e_win - 1) < 0.005
    # passthrough was off while measuring, restored to what it was (Auto = 2) after; trailer written
    assert cfg.eeprom()[0x10] == 2
    r = TraceReader(path)
    assert r.complete and r.trailer["usb_passthrough_restored"] == 2 and r.dropped_samples == 0


def test_monitor_stops_mid_window_keeps_samples(tmp_path):
    cfg = _cfg(tmp_path, fail_after_s=1.0)
    mon = MonsoonMonitor(MonsoonOptions(), tmp_path / "cut.ptrc", virtual=cfg)
    mon.start()
    mon.begin("w")
    time.sleep(1.2)
    with pytest.raises(MeasurementError, match="stopped mid-window"):
        mon.end("w")
    mon.stop()
    r = TraceReader(tmp_path / "cut.ptrc")
    assert r.samples > 1000 and "monsoon stopped" in r.trailer["end_reason"]


def test_absent_and_busy_monitor(tmp_path):
    with pytest.raises(DeviceError, match="no Monsoon found"):
        MonsoonMonitor(MonsoonOptions(), tmp_path / "a.ptrc", virtual=_cfg(tmp_path, present=False)).start()
    cfg = _cfg(tmp_path)
    holder = VirtualHVPM(cfg)
    holder.open()  # another process/program holds the monitor
    try:
        with pytest.raises(DeviceError, match="busy"):
            MonsoonMonitor(MonsoonOptions(), tmp_path / "b.ptrc", virtual=cfg).start()
    finally:
        holder.close()
    assert not (tmp_path / "a.ptrc").exists() and not (tmp_path / "b.ptrc").exists()


def test_options_validation(tmp_path):
    with pytest.raises(DataError):
        MonsoonOptions(voltage_v=20.0)
    with pytest.raises(DataError):
        MonsoonOptions(model="XVPM")
    (tmp_path / "x.ptrc").write_bytes(b"")
    with pytest.raises(DataError, match="overwritten"):
        MonsoonMonitor(MonsoonOptions(), tmp_path / "x.ptrc")


def _energy_j(tr):
    """Energy of a whole monitor window through the one analysis path."""
    from harness.window import ArraySource, WindowMarks, analyse_window

    return analyse_window(ArraySource.from_trace(tr), WindowMarks(0.0, tr.duration_s, kind="window")).energy_j

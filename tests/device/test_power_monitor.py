"""PowerMonitor windows (replay), the fuel gauge and the whole virtual lab over ADB."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from device import sync
from device.adb import AdbOptions, connect, ensure_adb_key
from device.errors import DataError, MeasurementError
from device.gauge import FuelGaugeMonitor, parse_gauge
from device.monsoon import MonsoonMonitor, MonsoonOptions
from device.power_model import PowerModelProfile, expected_energy_j, ground_truth_trace, read_busy_timeline
from device.replay import ReplayMonitor
from device.tracefile import TraceChunk, write_trace
from device.virtual_monsoon.hvpm import VirtualMonsoonConfig
from device.virtual_phone import VirtualPhone
from harness import energy as E


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    g = ground_truth_trace(seed=9)
    p = tmp_path_factory.mktemp("rec") / "rec.ptrc"
    write_trace(p, [TraceChunk(0, g.current_a, g.voltage_v)], {"rate_hz": g.rate_hz, "anchor_mono_s": 100.0})
    return p, g


def test_replay_windows_and_misuse(recorded):
    p, g = recorded
    mon = ReplayMonitor(p)
    with pytest.raises(MeasurementError, match="before start"):
        mon.begin("a")
    with mon:
        a, b = g.window_s
        mon.begin("w", 100.0 + a)
        with pytest.raises(MeasurementError, match="already begun"):
            mon.begin("w", 100.0 + a)
        with pytest.raises(MeasurementError, match="without begin"):
            mon.end("nope")
        tr = mon.end("w", 100.0 + b)
        assert tr.time_mono_s[0] == pytest.approx(100.0 + a, abs=1 / g.rate_hz)
        assert abs(_energy_j(tr) / g.energy_j - 1) < 0.005
        with pytest.raises(MeasurementError, match="already ended"):
            mon.end("w")
        mon.begin("late", 100.0 + 9.5)
        with pytest.raises(MeasurementError, match="recording ends"):
            mon.end("late", 100.0 + 99.0)
    with pytest.raises(MeasurementError):
        mon.start()  # a monitor is started once


def test_parse_gauge():
    assert parse_gauge("-250000\n4100000\nDischarging\n") == (0.25, 4.1, False)
    assert parse_gauge("350000\n4200000\nCharging\n")[2] is True
    with pytest.raises(DataError):
        parse_gauge("oops\n")


@pytest.fixture()
def lab(tmp_path):
    key = ensure_adb_key(tmp_path / "keys" / "adbkey")
    with VirtualPhone(tmp_path / "phone", authorized_keys=(f"{key}.pub",)) as vp:
        dev = connect(vp.address, AdbOptions(key_path=str(key), retries=2, retry_backoff_s=0.05))
        yield vp, dev, tmp_path
        dev.close()


def test_fuel_gauge_on_virtual_phone(lab):
    vp, dev, tmp = lab
    mon = FuelGaugeMonitor(dev, tmp / "gauge.ptrc", rate_hz=10.0)
    with mon:
        mon.begin("w")
        time.sleep(1.0)
        tr = mon.end("w")
    assert tr.low_resolution and tr.instrument["kind"] == "fuel-gauge"
    assert tr.samples >= 5
    assert np.all(tr.current_a > 0) and np.all((tr.voltage_v > 3.0) & (tr.voltage_v < 4.5))


def test_virtual_lab_markers_over_adb(lab):
    """The phone runs the marker shell text over ADB; the virtual Monsoon measures; analysis finds them."""
    vp, dev, tmp = lab
    timeline = tmp / "phone" / "busy_timeline.tsv"
    prof = PowerModelProfile(noise_current_a=0.01, seed=5)
    cfg = VirtualMonsoonConfig(root=str(tmp / "monsoon"), timeline_path=str(timeline), profile=prof)
    mon = MonsoonMonitor(MonsoonOptions(voltage_v=4.0), tmp / "lab.ptrc", virtual=cfg)
    with mon:
        t_host = mon.begin("run")
        cmd = "; ".join([sync.marker_command("start"), "dd if=/dev/zero of=/dev/null bs=1000000 count=300",
                         sync.marker_command("end")])
        dev.shell(cmd, timeout_s=30)
        tr = mon.end("run")
    t0 = json.loads((tmp / "monsoon" / "virtual_monsoon_20421.session.json").read_text())["sampling_started_mono_s"]
    tl_t, tl_b = read_busy_timeline(timeline)
    rises = tl_t[1:][(np.diff(tl_b) > 0)]
    falls = tl_t[1:][(np.diff(tl_b) < 0)]
    rises, falls = rises[rises > t_host], falls[falls > t_host]
    start_true, end_true = falls[2], rises[4]  # end of the 3rd burst; start of the 5th (after the workload)
    guess = lambda t: t - t0  # noqa: E731  host time -> seconds since the monitor's sample 0
    ms = sync.find_marker(tr.current_a, tr.rate_hz, "start", sample_index=tr.sample_index,
                          expected_sync_s=guess(start_true) + 0.2)
    me = sync.find_marker(tr.current_a, tr.rate_hz, "end", sample_index=tr.sample_index,
                          expected_sync_s=guess(end_true) - 0.2)
    assert abs(ms.sync_point_s - guess(start_true)) < 1e-3
    assert abs(me.sync_point_s - guess(end_true)) < 1e-3
    off = tr.sample_index[0] / tr.rate_hz
    (st,) = E.window_stats_from_arrays(tr.current_a, tr.voltage_v, tr.rate_hz,
                                       [(ms.sync_point_s - off, me.sync_point_s - off)], sample_index=tr.sample_index)
    truth = expected_energy_j(prof, start_true, end_true, tl_t, tl_b)
    assert st.valid and abs(st.energy_j / truth - 1) < 0.005


def _energy_j(tr):
    """Energy of a whole monitor window through the one analysis path."""
    from harness.window import ArraySource, WindowMarks, analyse_window

    return analyse_window(ArraySource.from_trace(tr), WindowMarks(0.0, tr.duration_s, kind="window")).energy_j

"""A real Monsoon on USB (skipped without HARNESS_HARDWARE=1): connect, calibrate, stream 2 s, restore."""

from __future__ import annotations

import os
import time

import pytest

from device.monsoon import MonsoonMonitor, MonsoonOptions
from device.tracefile import TraceReader


@pytest.mark.hardware
def test_real_monsoon_streams_without_drops(tmp_path):
    opts = MonsoonOptions(model=os.environ.get("HARNESS_MONSOON_MODEL", "HVPM"),
                          voltage_v=float(os.environ.get("HARNESS_MONSOON_VOLTAGE_V", "4.2")))
    mon = MonsoonMonitor(opts, tmp_path / "hw.ptrc")
    with mon:
        mon.begin("w")
        time.sleep(2.0)
        tr = mon.end("w")
    assert tr.calibrated and tr.samples > 0.99 * tr.expected_samples
    assert tr.instrument["serial"] > 0
    r = TraceReader(tmp_path / "hw.ptrc")
    assert r.complete and r.trailer["usb_passthrough_restored"] is not None

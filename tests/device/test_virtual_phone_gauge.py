"""The fuel gauge samples while a long shell command (the runner) holds the command link.

One adb-shell link serves one reader at a time; the gauge therefore polls over its own link.  Before that,
a 1.5 s command on the shared link left the gauge with one sample in the window (every window invalid).
"""

from __future__ import annotations

import time

import pytest

from device.adb import AdbOptions, connect, ensure_adb_key
from device.gauge import FuelGaugeMonitor
from device.virtual_phone import VirtualPhone


@pytest.fixture()
def lab(tmp_path):
    key = ensure_adb_key(tmp_path / "keys" / "adbkey")
    with VirtualPhone(tmp_path / "phone", authorized_keys=(f"{key}.pub",)) as vp:
        dev = connect(vp.address, AdbOptions(key_path=str(key), retries=1, retry_backoff_s=0.05))
        yield vp, dev, tmp_path
        dev.close()


def test_gauge_samples_while_a_command_holds_the_device_link(lab):
    vp, dev, tmp = lab
    mon = FuelGaugeMonitor(dev, tmp / "gauge.ptrc", rate_hz=10.0)
    with mon:
        mon.begin("w")
        t0 = time.monotonic()
        res = dev.shell("sleep 1.5; echo done", timeout_s=30, check=False, retry=False)
        busy_s = time.monotonic() - t0
        tr = mon.end("w")
    assert res.output.strip() == "done" and busy_s >= 1.5
    assert tr.samples >= 12, f"{tr.samples} samples in a {busy_s:.1f} s window"
    assert tr.dropped_samples <= 0.01 * max(tr.expected_samples, 1) + 1


def test_gauge_closes_its_own_link(lab):
    vp, dev, tmp = lab
    with FuelGaugeMonitor(dev, tmp / "g2.ptrc", rate_hz=10.0) as mon:
        assert mon._link is not None and mon._link is not dev
    assert mon._link is None
    assert dev.shell("echo ok", timeout_s=10).output.strip() == "ok"  # the command link is untouched

"""The virtual HVPM seen through the UNMODIFIED ``monsoon`` library (its pyusb calls go to our backend)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from device import virtual_monsoon
from device.lock import pid_alive, process_start_ticks
from device.monsoon_packets import Calibration, PacketDecoder, Scales, decode_packets
from device.power_model import PowerModelProfile, write_busy_timeline
from device.virtual_monsoon.hvpm import (
    REF_CAL_RAW,
    ZERO_CAL_RAW,
    USBErrorLike,
    VirtualHVPM,
    VirtualMonsoonConfig,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def lab(tmp_path):
    tl = tmp_path / "busy_timeline.tsv"
    write_busy_timeline(tl, [])
    cfg = VirtualMonsoonConfig(root=str(tmp_path), timeline_path=str(tl),
                               profile=PowerModelProfile(noise_current_a=0.0))
    virtual_monsoon.install(cfg)
    yield cfg
    virtual_monsoon.uninstall()


def _connect():
    from Monsoon import HVPM, pmapi

    mon = HVPM.Monsoon()
    mon.setup_usb(None, pmapi.USB_protocol())
    return mon


def test_library_connects_and_reads_status(lab):
    import usb.core

    assert [d.serial_number for d in usb.core.find(find_all=True, idVendor=0x2AB9, idProduct=1)] == ["20421"]
    mon = _connect()
    assert mon.Protocol.DEVICE is not None
    mon.fillStatusPacket()
    sp = mon.statusPacket
    assert (sp.serialNumber, sp.firmwareVersion, sp.hardwareModel) == (20421, 32, 2)
    assert sp.mainFineScale == 36500 and sp.mainCoarseZeroOffset == 15
    mon.setVout(4.0)
    mon.setUSBPassthroughMode(0)
    assert mon.Protocol.getValue(0x10, 1) == 0
    mon.closeDevice()
    # EEPROM settings persist like on hardware (another process sees them)
    assert lab.eeprom()[0x41] == 4 * 1048576


def test_library_prints_and_returns_when_absent(tmp_path, capsys):
    virtual_monsoon.install(VirtualMonsoonConfig(root=str(tmp_path), timeline_path="", present=False))
    try:
        mon = _connect()
        assert mon.Protocol.DEVICE is None
        assert "Unable to find device" in capsys.readouterr().out
    finally:
        virtual_monsoon.uninstall()


def test_decoder_matches_vendor_swizzle_and_sample_engine_math(lab):
    from Monsoon import sampleEngine

    now = time.monotonic()
    write_busy_timeline(lab.timeline_path, [(now - 10, 0.0), (now + 60, 2.0)])
    mon = _connect()
    mon.setVout(4.0)
    mon.setUSBPassthroughMode(0)
    # the vendor's own engine on the virtual device: calibrates and measures the model's current
    eng = sampleEngine.SampleEngine(mon)
    eng.ConsoleOutput(False)
    eng.startSampling(2500)
    main_ma = np.asarray(eng.getSamples()[sampleEngine.channels.MainCurrent])
    assert main_ma.size == 2500
    idle_ma = 1000 * lab.profile.idle_power_w / 4.0
    assert np.median(main_ma) == pytest.approx(idle_ma, rel=2e-3)
    # raw packets: our vectorised decoder == the library's swizzlePacket, field by field
    mon.StartSampling(1250, 0xFFFFFFFF)
    raw = [bytes(mon.BulkRead()) for _ in range(200)]
    mon.stopSampling()
    mon.closeDevice()
    d = decode_packets(np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, 64))
    for k, pkt in enumerate(raw):
        ref = mon.swizzlePacket(list(pkt))
        assert d["dropped"][k] == ref[0] and d["count"][k] == ref[2]
        for s in range(ref[2]):
            assert list(d["values"][k, s]) == ref[3 + 10 * s : 3 + 10 * s + 8]
            assert d["type"][k, s] == ref[3 + 10 * s + 8] & 0x30
    assert (d["type"] == 0x10).any() and (d["type"] == 0x30).any()


def test_dropped_counter_rollover_and_numbering():
    z, r = ZERO_CAL_RAW, REF_CAL_RAW
    cal = VirtualHVPM._packet(65534, [(z,) * 6 + (0, 0, 0x10, 0), (r,) * 6 + (0, 0, 0x30, 0)])
    meas = (5000, 65535, 100, 100, 100, 100, 16000, 0, 0x00, 0)  # fine saturated: coarse is used
    pk = [cal] * 5 + [VirtualHVPM._packet(65534, [meas] * 3), VirtualHVPM._packet(1, [meas] * 3),
                      VirtualHVPM._packet(1, [meas] * 2)]
    sc = Scales(36500, 6400, 14000, 600, 15, 15, 0, 0, 64000, 4.0)
    dec = PacketDecoder(sc)
    idx, cur, vol, usb, ok = dec.feed(np.frombuffer(b"".join(pk), dtype=np.uint8).reshape(-1, 64))
    assert ok and dec.cal.calibrated
    # 65534 -> 1 wraps: 3 samples were dropped between the two packets
    assert list(idx) == [0, 1, 2, 6, 7, 8, 9, 10]
    assert dec.dropped_total == 3
    expect_a = (5000 - 115) * 6400 / (r - 115) / 1000
    np.testing.assert_allclose(cur, expect_a)
    np.testing.assert_allclose(vol, 16000 * 62.5e-6 * 4)
    c = Calibration()
    assert not c.calibrated


def test_vendor_engine_csv_reads_back(lab, tmp_path):
    from device.monsoon import MonsoonOptions, vendor_csv_capture
    from device.tracefile import open_trace

    csv = tmp_path / "vendor.csv"
    vendor_csv_capture(MonsoonOptions(voltage_v=4.0), csv, 1500)
    tr = open_trace(csv)
    assert tr.time_mode == "per-packet-s" and tr.samples >= 1400
    np.testing.assert_allclose(np.median(tr.current_a), lab.profile.idle_power_w / 4.0, rtol=2e-3)
    np.testing.assert_allclose(tr.voltage_v, 4.0)
    assert lab.eeprom()[0x10] == 2  # passthrough restored


# --------------------------------------------------------------------------- the claim after a kill -9


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, **kw)


#: A "harness" that starts a helper holding the virtual Monsoon's claim for it, prints the helper's pid, waits.
HOLDER = """
    import subprocess, sys, time
    helper = subprocess.Popen([sys.executable, "-c", '''
    import os, sys, time
    from device.virtual_monsoon import hvpm
    hvpm.SERVES_PID = os.getppid()  # as the sampler does: it works for its parent
    hvpm.VirtualHVPM(hvpm.VirtualMonsoonConfig(root=sys.argv[1], timeline_path="")).open()
    print(os.getpid(), flush=True)
    time.sleep(120)
    ''', sys.argv[1]], stdout=subprocess.PIPE, text=True)
    print(helper.stdout.readline().strip(), flush=True)
    time.sleep(120)
"""


def _wait_gone(pid: int, start_ticks, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, start_ticks):
            return True
        time.sleep(0.05)
    return False


def test_claim_of_an_orphaned_helper_is_taken_over_and_a_live_one_is_busy(tmp_path, caplog):
    cfg = VirtualMonsoonConfig(root=str(tmp_path), timeline_path="")
    parent = _python(HOLDER, str(tmp_path))
    helper = int(parent.stdout.readline())
    ticks = process_start_ticks(helper)
    try:
        with pytest.raises(USBErrorLike, match=f"busy .*pid {helper}") as busy:  # its harness is alive
            VirtualHVPM(cfg).open()
        assert busy.value.errno == errno.EBUSY
        parent.kill()  # kill -9 of the "harness": the helper lives on, holding the claim
        parent.wait(timeout=10)
        assert pid_alive(helper, ticks)
        caplog.set_level(logging.WARNING, logger="device.lock")
        dev = VirtualHVPM(cfg)
        dev.open()  # not "busy": the orphan is ended and its claim taken over
        try:
            assert _wait_gone(helper, ticks)
            assert f"ending pid {helper}" in caplog.text and "orphan" in caplog.text
            assert cfg.lock_path().read_text().split()[0] == str(os.getpid())
        finally:
            dev.close()
    finally:
        parent.kill()
        if pid_alive(helper, ticks):
            os.kill(helper, signal.SIGKILL)


SAMPLER_PARENT = """
    import sys, time
    from device.monsoon import MonsoonMonitor, MonsoonOptions
    from device.virtual_monsoon import VirtualMonsoonConfig
    cfg = VirtualMonsoonConfig(root=sys.argv[1], timeline_path=sys.argv[1] + "/busy_timeline.tsv")
    mon = MonsoonMonitor(MonsoonOptions(voltage_v=4.0), sys.argv[1] + "/k.ptrc", virtual=cfg)
    mon.start()
    print(mon._proc.pid, flush=True)
    time.sleep(120)
"""


def test_sampler_dies_with_its_harness_and_leaves_the_monitor_free(tmp_path, caplog):
    from device.tracefile import TraceReader

    write_busy_timeline(tmp_path / "busy_timeline.tsv", [])
    parent = _python(SAMPLER_PARENT, str(tmp_path))
    try:
        sampler = int(parent.stdout.readline())
        ticks = process_start_ticks(sampler)
        assert cfg_owner(tmp_path) == sampler
        parent.kill()
        parent.wait(timeout=10)
        assert _wait_gone(sampler, ticks), "the sampler outlived its parent"
    finally:
        parent.kill()
    trailer = TraceReader(tmp_path / "k.ptrc").trailer
    assert "harness process is gone" in trailer["end_reason"]  # it stopped in order: trace closed
    assert trailer["usb_passthrough_restored"] == 2
    caplog.set_level(logging.WARNING, logger="device.lock")
    dev = VirtualHVPM(VirtualMonsoonConfig(root=str(tmp_path), timeline_path=""))
    dev.open()  # free: no takeover was needed
    dev.close()
    assert "stale" not in caplog.text


def cfg_owner(root: Path) -> int:
    return int((root / "virtual_monsoon_20421.lock").read_text().split()[0])


WATCHED = """
    import os, sys, threading, time
    from device.lifeline import die_with_parent
    child = '''
    import os, sys, threading, time
    from device.lifeline import die_with_parent
    halt = threading.Event()
    die_with_parent(os.getppid(), halt, pdeathsig=False, poll_s=0.05, grace_s=0.5)
    print(os.getpid(), flush=True)
    if sys.argv[2] == "obeys":
        halt.wait(60)
        open(sys.argv[1], "w").write("stopped in order")
    else:
        time.sleep(60)  # ignores the halt: the watchdog ends it
    '''
    import subprocess
    p = subprocess.Popen([sys.executable, "-c", child, *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
    print(p.stdout.readline().strip(), flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("behaviour", ["obeys", "hangs"])
def test_watchdog_stops_a_helper_without_the_death_signal(tmp_path, behaviour):
    flag = tmp_path / "flag"
    parent = _python(WATCHED, str(flag), behaviour)
    try:
        child = int(parent.stdout.readline())
        ticks = process_start_ticks(child)
        parent.kill()
        parent.wait(timeout=10)
        assert _wait_gone(child, ticks, timeout_s=10)
    finally:
        parent.kill()
    assert flag.exists() == (behaviour == "obeys")

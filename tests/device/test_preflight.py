"""Preflight against the virtual phone (real adb-shell client) and runner-binary checks on synthetic ELFs."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time

import pytest

from device.adb import AdbOptions, connect, ensure_adb_key
from device.errors import DeviceError
from device.preflight import PreflightOptions, inspect_elf, preflight, runner_problems
from device.profiles import load_profile
from device.virtual_phone import VirtualPhone


def make_elf(path, bits: int, machine: int, pie: bool = True, api: int | None = None):
    """A minimal ELF: header, one PT_NOTE program header, and the NDK's Android note."""
    note = b""
    if api is not None:
        note = struct.pack("<III", 8, 4, 1) + b"Android\0" + struct.pack("<I", api)
    e_type = 3 if pie else 2
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + b"\0" * 9
    if bits == 32:
        ehdr = ident + struct.pack("<HHIIIIIHHHHHH", e_type, machine, 1, 0, 52, 0, 0, 52, 32, 1, 0, 0, 0)
        phdr = struct.pack("<8I", 4, 52 + 32, 0, 0, len(note), len(note), 4, 4)
    else:
        ehdr = ident + struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(note), len(note), 4)
    path.write_bytes(ehdr + phdr + note)
    return path


def test_inspect_elf(tmp_path):
    info = inspect_elf(make_elf(tmp_path / "a64", 64, 183, api=29))
    assert (info.bits, info.abi, info.pie, info.api_level) == (64, "arm64-v8a", True, 29)
    info = inspect_elf(make_elf(tmp_path / "a32", 32, 40, pie=False))
    assert (info.bits, info.abi, info.pie, info.api_level) == (32, "armeabi-v7a", False, None)
    (tmp_path / "txt").write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="not an ELF"):
        inspect_elf(tmp_path / "txt")


def test_runner_fit_rules(tmp_path):
    n4, abis = load_profile("nexus4"), ["armeabi-v7a", "armeabi"]
    arm64 = make_elf(tmp_path / "runner64", 64, 183, api=26)
    (msg,) = [m for m in runner_problems(n4, abis, 22, arm64) if "64-bit" in m]
    assert "32-bit only" in msg and "ANDROID_ABI=armeabi-v7a" in msg
    assert any("needs Android API 26" in m for m in runner_problems(n4, abis, 22, arm64))
    good = make_elf(tmp_path / "runner32", 32, 40, api=21)
    assert runner_problems(n4, abis, 22, good) == []
    nopie = make_elf(tmp_path / "nopie", 32, 40, pie=False, api=21)
    assert any("position-independent" in m for m in runner_problems(n4, abis, 22, nopie))
    assert "names no runner binary" in runner_problems(n4, abis, 22, None)[0]
    assert runner_problems(load_profile("virtual-nexus4"), abis, 22, None) == []  # built-in runner


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ensure_adb_key(tmp_path_factory.mktemp("keys") / "adbkey")


def _connect(vp, key):
    return connect(vp.address, AdbOptions(key_path=str(key)))


def test_virtual_nexus4_passes_and_is_fingerprinted(tmp_path, key):
    model = tmp_path / "m.pte"
    model.write_bytes(b"model bytes")
    with VirtualPhone(tmp_path / "p", authorized_keys=(f"{key}.pub",)) as vp:
        dev = _connect(vp, key)
        rep = preflight(dev, load_profile("virtual-nexus4"), model_paths=[model])
        assert rep.ok, rep.failures
        assert [c.name for c in rep.checks] == ["abi_api", "charging_off", "screen_off", "airplane_on",
                                                "governor_pinned", "temperature"]
        fp = rep.fingerprint
        assert fp["governors"] == ["performance"] * 4 and fp["cur_freq_khz"] == [1512000] * 4
        assert fp["battery"]["usb_powered"] is False and fp["battery"]["ac_powered"] is False
        assert fp["api_level"] == 22 and fp["build_fingerprint"].startswith("harness/virtual_occam")
        assert fp["temperatures_c"] == {"thermal_zone0": 31.0, "thermal_zone1": 31.0}
        assert fp["models_sha256"]["m.pte"] == hashlib.sha256(b"model bytes").hexdigest()
        assert fp["kernel"].startswith("Linux version")
        # the phone really is in that state
        assert dev.shell("settings get global airplane_mode_on").output == "1\n"
        assert "mWakefulness=Asleep" in dev.shell("dumpsys power").output
        dev.close()


def test_modern_phone_without_root_warns_but_passes(tmp_path, key):
    with VirtualPhone(tmp_path / "p", profile="virtual-pixel6", authorized_keys=(f"{key}.pub",)) as vp:
        dev = _connect(vp, key)
        rep = preflight(dev, load_profile("virtual-pixel6"))
        gov = [c for c in rep.checks if c.name == "governor_pinned"][0]
        assert rep.ok and not gov.ok and not gov.fatal and "no root" in gov.message
        assert "USB powered: false" in dev.shell("dumpsys battery").output  # 'dumpsys battery unplug' on API 34
        dev.close()


def test_hot_phone_waits_then_fails_or_passes(tmp_path, key):
    with VirtualPhone(tmp_path / "p", authorized_keys=(f"{key}.pub",)) as vp:
        dev = _connect(vp, key)
        zone = vp.state.sandbox.host_path("/sys/class/thermal/thermal_zone1/temp")
        zone.write_text("55000\n")
        prof = load_profile("virtual-nexus4")
        t0 = time.monotonic()
        rep = preflight(dev, prof, options=PreflightOptions(cool_timeout_s=0.4, cool_poll_s=0.1))
        assert 0.4 <= time.monotonic() - t0 < 5
        temp = rep.checks[-1]
        assert not rep.ok and "55.0 C (thermal_zone1) above 40 C" in temp.message
        with pytest.raises(DeviceError, match="preflight failed: temperature"):
            rep.raise_for_failures(dev.name)
        def cool_down():  # atomically, as the kernel updates the file: a reader never sees it half-written
            tmp = zone.with_name("temp.new")
            tmp.write_text("36000\n")
            os.replace(tmp, zone)

        threading.Timer(0.3, cool_down).start()
        rep = preflight(dev, prof, options=PreflightOptions(cool_timeout_s=10, cool_poll_s=0.1))
        assert rep.ok and rep.checks[-1].message.startswith("36.0 C <= 40 C")
        dev.close()


def test_real_profile_with_a_64bit_runner_on_a_32bit_phone_fails(tmp_path, key):
    runner = make_elf(tmp_path / "executor_runner", 64, 183, api=26)
    with VirtualPhone(tmp_path / "p", authorized_keys=(f"{key}.pub",)) as vp:
        dev = _connect(vp, key)
        rep = preflight(dev, load_profile("nexus4"), runner_path=runner, options=PreflightOptions(apply=False))
        assert not rep.ok
        with pytest.raises(DeviceError, match="custom|32-bit only"):
            rep.raise_for_failures(dev.name)
        assert rep.fingerprint["runner"]["sha256"] and not rep.fingerprint["runner"]["builtin"]
        dev.close()

"""`harness virtual-phone` and `harness devices` as a user runs them (subprocesses, real sockets)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.adb import AdbOptions, connect, ensure_adb_key

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path) -> dict:
    return {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


def harness(tmp_path, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=ROOT, timeout=timeout)


def _read_json_object(stream) -> dict:
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if line.rstrip() == "}":
            return json.loads("".join(lines))
    raise AssertionError(f"no JSON object on stdout: {''.join(lines)!r}")


def test_serve_connect_list_and_stop(tmp_path):
    key = ensure_adb_key(tmp_path / "keys" / "adbkey")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "virtual-phone", "--port", "0", "--json",
                             "--root", str(tmp_path / "phone"), "--accept-new-keys", "--duration-s", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), cwd=ROOT)
    try:
        info = _read_json_object(proc.stdout)
        assert info["address"] == f"127.0.0.1:{info['port']}" and info["profile"] == "virtual-nexus4"
        assert Path(info["timeline"]) == tmp_path / "phone" / "busy_timeline.tsv"
        dev = connect(info["address"], AdbOptions(key_path=str(key)))
        assert dev.shell("getprop ro.product.model").output == "Virtual Nexus 4\n"
        dev.close()
        assert (tmp_path / "phone" / "adb_keys").read_text().split()[0] == Path(f"{key}.pub").read_text().split()[0]
        listed = harness(tmp_path, "devices", "--json", "--no-usb")
        assert listed.returncode == 0, listed.stderr
        out = json.loads(listed.stdout)
        (entry,) = out["devices"]
        assert entry["address"] == info["address"] and entry["virtual"] and entry["profile"] == "virtual-nexus4"
        assert "nexus4" in {p["name"] for p in out["profiles"]}
        probed = harness(tmp_path, "devices", "--json", "--no-usb", "--connect", info["address"], "--key", str(key))
        assert [d.get("model") for d in json.loads(probed.stdout)["devices"]][-1] == "Virtual Nexus 4"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    assert not list((tmp_path / "cache" / "virtual-phones").glob("*.json"))  # withdrawn on exit


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    res = harness(tmp_path, "virtual-phone", "--profile", "nexus5")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "known: nexus4" in res.stderr
    res = harness(tmp_path, "virtual-phone", "--port", "70000")
    assert res.returncode == 2 and "--port" in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        res = harness(tmp_path, "virtual-phone", "--port", str(busy.getsockname()[1]), "--root", str(tmp_path / "r"))
    assert res.returncode == 2 and "cannot listen" in res.stderr and res.stderr.count("\n") == 1
    res = harness(tmp_path, "devices", "--connect", "not-an-address", "--no-usb")
    assert res.returncode == 2 and "HOST:PORT" in res.stderr


@pytest.mark.parametrize("flag", ["--json", None])
def test_devices_lists_profiles(tmp_path, flag):
    res = harness(tmp_path, "devices", "--no-usb", *([flag] if flag else []))
    assert res.returncode == 0
    if flag:
        out = json.loads(res.stdout)
        assert out["devices"] == [] and {"nexus4", "pixel6", "virtual-nexus4"} <= {p["name"] for p in out["profiles"]}
    else:
        assert "nexus4" in res.stdout and "armeabi-v7a" in res.stdout

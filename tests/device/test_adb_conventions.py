"""adb conventions: ``ANDROID_SERIAL``, the only attached phone, ``ADB_VENDOR_KEYS``, and a running adb server.

Phones are virtual phones (``harness virtual-phone`` in their own processes, or in this process); the adb
server is the Debian ``adb`` client's, on a free loopback port with its own HOME, killed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.adb import AdbDevice, AdbOptions, ensure_adb_key
from device.adb_select import choose_serial, open_phone
from device.adb_server import AdbServer, AdbServerDevice
from device.errors import CommandError, DeviceError, InputError
from device.virtual_phone import VirtualPhone
from harness.cli import main

REPO = Path(__file__).resolve().parents[2]
ADB = shutil.which("adb")
needs_adb = pytest.mark.skipif(ADB is None, reason="the `adb` client is not installed (apt-get install -y adb)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def clean_env(tmp_path, monkeypatch):
    """No phone of the user's: an empty virtual-phone registry, no adb server, no adb variables."""
    for k in ("ANDROID_SERIAL", "ADB_VENDOR_KEYS", "ADB_SERVER_SOCKET"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(_free_port()))  # nothing listens there
    return tmp_path


# ---------------------------------------------------------------- choosing the phone


def test_choose_serial_follows_adb():
    assert choose_serial("X1", ["A", "B"], {"ANDROID_SERIAL": "B"}) == ("X1", "--serial")
    assert choose_serial(None, ["A", "B"], {"ANDROID_SERIAL": " B "}) == ("B", "ANDROID_SERIAL")
    assert choose_serial("", ["A"], {}) == ("A", "the only attached phone")
    with pytest.raises(InputError, match="no phone attached.*ANDROID_SERIAL"):
        choose_serial(None, [], {})
    with pytest.raises(InputError) as err:
        choose_serial(None, ["A", "10.0.0.2:5555", "A"], {})
    assert str(err.value) == ("2 phones attached (A, 10.0.0.2:5555); choose one with --serial or ANDROID_SERIAL")


class Phones:
    """``harness virtual-phone`` processes announced in one registry (``HARNESS_CACHE_DIR``)."""

    def __init__(self, tmp: Path, key: Path):
        self.tmp, self.key, self.procs, self.entries = tmp, key, [], []

    def start(self, serial: str) -> dict:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "virtual-phone", "--port", "0", "--root", str(self.tmp / serial),
             "--serial", serial, "--authorize-key", f"{self.key}.pub", "--duration-s", "1800"],
            cwd=str(self.tmp), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        reg = Path(os.environ["HARNESS_CACHE_DIR"]) / "virtual-phones"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for p in reg.glob("*.json") if reg.is_dir() else []:
                info = json.loads(p.read_text())
                if info.get("serial") == serial:
                    self.entries.append(info)
                    return info
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            time.sleep(0.1)
        raise RuntimeError("the virtual phone did not announce itself")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture()
def two_phones(clean_env):
    key = ensure_adb_key(clean_env / "key" / "adbkey")
    phones = Phones(clean_env, key)
    try:
        a, b = phones.start("vp-alpha"), phones.start("vp-beta")
        yield a, b, key
    finally:
        phones.stop()


def _devices_json(capsys, *argv) -> dict:
    assert main(["devices", "--no-usb", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_android_serial_selects_the_phone_in_harness_devices(two_phones, capsys, monkeypatch):
    a, b, _key = two_phones
    out = _devices_json(capsys)
    assert {d["address"] for d in out["devices"]} == {a["address"], b["address"]}
    assert out["selected"] is None and "no phone attached" in out["selection_error"]  # virtual: only when named
    for name in (b["address"], "vp-beta"):  # its address, or the serial it reports
        monkeypatch.setenv("ANDROID_SERIAL", name)
        out = _devices_json(capsys)
        assert out["selected"] == name and out["selected_by"] == "ANDROID_SERIAL"
        assert [d["address"] for d in out["devices"] if d.get("selected")] == [b["address"]]
    assert main(["devices", "--no-usb"]) == 0
    text = capsys.readouterr().out
    assert f"* {b['address']}" in text and f"  {a['address']}" in text
    assert "selected: vp-beta (ANDROID_SERIAL)" in text


def test_android_serial_selects_the_phone_of_harness_run(two_phones, tmp_path, monkeypatch):
    """``harness run --device virtual`` measures the running virtual phone ANDROID_SERIAL names."""
    from harness.backends import make_backend, resolve_device
    from harness.plan import make_plan

    _a, b, key = two_phones
    monkeypatch.setenv("ANDROID_SERIAL", b["address"])
    choice = resolve_device("virtual")
    plan = make_plan(choice.kind, choice.name, {"device": choice.name, "levels": (50,)})
    backend = make_backend(choice, plan, tmp_path / "work", key=str(key))
    with backend:
        assert backend.phone is None  # nothing started here
        assert backend.fingerprint()["ro.serialno"] == "vp-beta"
    monkeypatch.setenv("ANDROID_SERIAL", "nothing-running")  # a real phone's serial: the lab starts its own
    assert make_backend(choice, plan, Path("unused"), key=str(key)).external is None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HARNESS_SLOW") != "1", reason="slow (builds and exports first): HARNESS_SLOW=1")
def test_android_serial_selects_the_phone_of_harness_run_end_to_end(two_phones, tmp_path, monkeypatch, capsys):
    _a, b, key = two_phones
    monkeypatch.setenv("ANDROID_SERIAL", "vp-beta")
    db = tmp_path / "db" / "h.sqlite"
    code = main(["run", "--device", "virtual", "--key", str(key), "--levels", "50", "--window-s", "0.3",
                 "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2", "--no-report", "--db", str(db), "--json"])
    assert code == 0, capsys.readouterr().err
    rows = (Path(b["root"]) / "busy_timeline.tsv").read_text().splitlines()[2:]
    assert any(int(r.split()[1]) > 0 for r in rows)  # the runner ran on phone b


def test_run_refuses_an_ambiguous_real_phone_in_one_line(clean_env, capsys):
    """No serial, ANDROID_SERIAL unset, no phone: one line naming the ways to choose, exit 2."""
    assert main(["run", "--device", "nexus4", "--db", str(clean_env / "r" / "h.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no phone attached" in err and "ANDROID_SERIAL" in err
    assert main(["run", "--device", "nexus4", "--connect", "X1", "--db", str(clean_env / "r" / "h.db")]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    assert not (clean_env / "r").exists()


def test_a_wrong_adb_vendor_keys_is_refused_before_any_work(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("ADB_VENDOR_KEYS", str(clean_env / "nowhere"))
    assert main(["run", "--device", "virtual", "--db", str(clean_env / "r" / "h.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ADB_VENDOR_KEYS" in err and "nowhere" in err
    assert not (clean_env / "r").exists()


# ---------------------------------------------------------------- ADB_VENDOR_KEYS


def test_adb_vendor_keys_are_offered(clean_env, monkeypatch):
    vendor_dir = clean_env / "vendor"
    vendor = ensure_adb_key(vendor_dir / "lab.adbkey")
    Path(f"{vendor}.pub").rename(clean_env / "lab.pub")  # adb derives the public half: so must we
    own = ensure_adb_key(clean_env / "own" / "adbkey")
    with VirtualPhone(clean_env / "phone", authorized_keys=(clean_env / "lab.pub",)) as vp:
        with pytest.raises(DeviceError, match="refused our ADB key"):
            AdbDevice(vp.address, AdbOptions(key_path=str(own), retries=0, auth_timeout_s=2)).connect()
        monkeypatch.setenv("ADB_VENDOR_KEYS", f"{clean_env / 'nowhere'}")
        with pytest.raises(InputError, match="ADB_VENDOR_KEYS.*neither a key file nor a directory"):
            AdbDevice(vp.address, AdbOptions(key_path=str(own)))
        for value in (str(vendor_dir), f":{vendor}:"):  # a directory (its *.adbkey files), or files
            monkeypatch.setenv("ADB_VENDOR_KEYS", value)
            dev = AdbDevice(vp.address, AdbOptions(key_path=str(own), retries=0)).connect()
            try:
                assert dev.shell("echo hi").output == "hi\n"
            finally:
                dev.close()


# ---------------------------------------------------------------- a running adb server


@pytest.fixture()
def adb_server(clean_env, monkeypatch):
    """The Debian adb server on a free loopback port, with its own HOME and key; killed afterwards."""
    home = clean_env / "home"
    (home / ".android").mkdir(parents=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANDROID", "ADB"))}
    env.update(HOME=str(home), ANDROID_ADB_SERVER_PORT=str(port), ADB_MDNS="0")
    subprocess.run([ADB, "keygen", str(home / ".android" / "adbkey")], env=env, check=True, timeout=30,
                   capture_output=True)
    subprocess.run([ADB, "-P", str(port), "start-server"], env=env, check=True, timeout=60, capture_output=True)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    try:
        yield env, home / ".android" / "adbkey.pub"
    finally:
        subprocess.run([ADB, "-P", str(port), "kill-server"], env=env, timeout=30, capture_output=True)


def _adb(env, *args):
    return subprocess.run([ADB, *args], env=env, capture_output=True, timeout=60)


@needs_adb
def test_phones_held_by_a_running_adb_server_are_driven_through_it(clean_env, adb_server, capsys, monkeypatch):
    from harness.backends import check_device_args, resolve_device
    from harness.errors import UsageError
    from harness.plan import make_plan

    env, server_key = adb_server
    with (VirtualPhone(clean_env / "p1", authorized_keys=(server_key,)) as p1,
          VirtualPhone(clean_env / "p2", authorized_keys=(server_key,)) as p2):
        assert b"connected to" in _adb(env, "connect", p1.address).stdout
        server = AdbServer.from_env()
        assert server.running() and server.state_of(p1.address) == "device"
        # the only attached phone is picked (the server's list counts)
        devs = _devices_json(capsys)
        entry = next(d for d in devs["devices"] if d["address"] == p1.address)
        assert entry["via"] == server.label and devs["selected"] == p1.address
        choice = resolve_device("nexus4")
        plan = make_plan(choice.kind, choice.name, {"device": choice.name})
        with pytest.raises(UsageError, match="executor_runner"):  # the phone was chosen; the profile's runner next
            check_device_args(choice, plan)
        # two attached, none chosen: one line listing both
        assert b"connected to" in _adb(env, "connect", p2.address).stdout
        with pytest.raises(UsageError, match=f"2 phones attached \\(.*{p2.address}.*\\); choose one with --serial"):
            check_device_args(choice, plan)
        monkeypatch.setenv("ANDROID_SERIAL", p2.address)
        with pytest.raises(UsageError, match="executor_runner"):
            check_device_args(choice, plan)
        # through the server: shell (exit status), push/pull/stat, properties
        dev = open_phone(p2.address)
        assert isinstance(dev, AdbServerDevice)
        assert dev.shell("echo out; exit 3", check=False).exit_code == 3
        with pytest.raises(CommandError):
            dev.run(["false"])
        data = os.urandom(300_000)
        (clean_env / "f.bin").write_bytes(data)
        dev.push(clean_env / "f.bin", "/data/local/tmp/f.bin", mode=0o755)
        assert p2.state.sandbox.host_path("/data/local/tmp/f.bin").read_bytes() == data
        st = dev.stat("/data/local/tmp/f.bin")
        assert st.exists and st.size_bytes == len(data) and st.mode & 0o777 == 0o755
        assert not dev.stat("/data/local/tmp/none").exists
        dev.pull("/data/local/tmp/f.bin", clean_env / "g.bin")
        assert (clean_env / "g.bin").read_bytes() == data
        with pytest.raises(DeviceError, match="pull /data/none"):
            dev.pull("/data/none", clean_env / "h.bin")
        assert not (clean_env / "h.bin").exists()
        assert dev.describe()["model"] == "Virtual Nexus 4" and dev.getprop("ro.build.version.sdk") == "22"
        with pytest.raises(DeviceError, match="does not list this phone"):
            AdbServerDevice("nope", server).connect()
        _adb(env, "disconnect", p1.address)
        _adb(env, "disconnect", p2.address)

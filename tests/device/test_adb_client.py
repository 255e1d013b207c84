"""The standard `adb` command-line client (Debian package `adb`, version 29) against the virtual phone.

The client gets its own HOME and server port, and the server it forks is stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from device.virtual_phone import VirtualPhone

ADB = shutil.which("adb")
pytestmark = pytest.mark.skipif(ADB is None, reason="the `adb` client is not installed (apt-get install -y adb)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def adb_env(tmp_path):
    home = tmp_path / "home"
    (home / ".android").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANDROID", "ADB"))}
    env.update(HOME=str(home), ANDROID_ADB_SERVER_PORT=str(_free_port()), ADB_MDNS="0")
    subprocess.run([ADB, "keygen", str(home / ".android" / "adbkey")], env=env, check=True, timeout=30,
                   capture_output=True)
    yield env, home
    subprocess.run([ADB, "kill-server"], env=env, timeout=30, capture_output=True)


def adb(env, *args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ADB, *args], env=env, input=stdin, capture_output=True, timeout=60)


def test_standard_adb_client_connect_shell_push_pull(tmp_path, adb_env):
    env, home = adb_env
    with VirtualPhone(tmp_path / "phone", authorized_keys=(home / ".android" / "adbkey.pub",)) as vp:
        serial = vp.address
        out = adb(env, "connect", serial)
        assert b"connected to" in out.stdout, out
        devices = adb(env, "devices", "-l").stdout.decode()
        assert serial in devices and "model:Virtual_Nexus_4" in devices
        # shell_v2: stdout and stderr apart, exit status reaches the client
        res = adb(env, "-s", serial, "shell", "echo out; echo err >&2; exit 7")
        assert (res.returncode, res.stdout, res.stderr) == (7, b"out\n", b"err\n")
        res = adb(env, "-s", serial, "shell", "no_such_tool")
        assert res.returncode == 127 and b"not found" in res.stderr
        assert adb(env, "-s", serial, "shell", "getprop", "ro.build.version.sdk").stdout == b"22\n"
        # push into a new directory, pull back
        data = os.urandom(1_500_000)
        (tmp_path / "f.bin").write_bytes(data)
        res = adb(env, "-s", serial, "push", str(tmp_path / "f.bin"), "/data/local/tmp/new/f.bin")
        assert res.returncode == 0, res
        assert vp.state.sandbox.host_path("/data/local/tmp/new/f.bin").read_bytes() == data
        res = adb(env, "-s", serial, "pull", "/data/local/tmp/new/f.bin", str(tmp_path / "g.bin"))
        assert res.returncode == 0 and (tmp_path / "g.bin").read_bytes() == data
        # a missing file and a read-only path fail like on a phone
        assert adb(env, "-s", serial, "pull", "/data/none", str(tmp_path / "x")).returncode != 0
        # stdin-driven shell (no pty): no prompt, just output
        res = adb(env, "-s", serial, "shell", stdin=b"echo piped\nexit 5\necho never\n")
        assert (res.returncode, res.stdout) == (5, b"piped\n")
        adb(env, "disconnect", serial)


def test_unknown_key_is_unauthorized_for_adb(tmp_path, adb_env):
    env, _home = adb_env
    with VirtualPhone(tmp_path / "phone") as vp:  # the client's key is not known, no --accept-new-keys
        adb(env, "connect", vp.address)
        res = adb(env, "-s", vp.address, "shell", "echo hi")
        assert res.returncode != 0 and b"hi" not in res.stdout

"""The virtual phone's shell, sandbox, timeline and wire protocol (no ADB client library involved)."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from device.profiles import load_profile
from device.virtual_phone import VirtualPhone, read_timeline
from device.virtual_phone import protocol as P
from device.virtual_phone.phone import PhoneState
from device.virtual_phone.shell import Output, Shell, ShellSyntaxError, parse


@pytest.fixture()
def phone(tmp_path) -> PhoneState:
    return PhoneState(load_profile("virtual-nexus4"), tmp_path / "phone")


def sh(phone: PhoneState, text: str) -> tuple[int, str, str]:
    out, err = bytearray(), bytearray()
    status = Shell(phone).run(text, Output(out.extend, err.extend))
    return status, out.decode(), err.decode()


# ---------------------------------------------------------------- shell semantics


def test_status_sequences_and_expansion(phone):
    assert sh(phone, "false; echo $?") == (0, "1\n", "")
    assert sh(phone, "true && echo yes || echo no") == (0, "yes\n", "")
    assert sh(phone, "false && echo yes || echo no") == (0, "no\n", "")
    assert sh(phone, "echo 'a  b' \"c $? d\" e\\ f") == (0, "a  b c 0 d e f\n", "")
    assert sh(phone, "exit 3")[0] == 3
    assert sh(phone, "sh -c 'exit 5'; echo rc=$?")[1] == "rc=5\n"
    assert sh(phone, "exit 6; echo not-reached") == (6, "", "")
    assert sh(phone, "echo a && exit 2 || echo b") == (2, "a\n", "")


def test_unknown_command_is_127_like_a_phone(phone):
    status, out, err = sh(phone, "frobnicate --now")
    assert status == 127 and out == ""
    assert err == "/system/bin/sh: frobnicate: not found\n"


def test_toolbox_profile_has_no_sha256sum_but_toybox_does(tmp_path, phone):
    assert sh(phone, "sha256sum /dev/null")[0] == 127
    assert sh(phone, "md5sum /dev/null")[1].startswith("d41d8cd98f00b204e9800998ecf8427e")
    modern = PhoneState(load_profile("virtual-pixel6"), tmp_path / "p6")
    assert sh(modern, "sha256sum /dev/null")[1].startswith(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_redirects_pipes_and_files(phone):
    status, out, _ = sh(phone, "cd /data/local/tmp && echo hello > a.txt && echo more >> a.txt; cat a.txt | wc -c")
    assert status == 0 and out == "11\n"
    assert sh(phone, "cat /data/local/tmp/a.txt")[1] == "hello\nmore\n"
    assert sh(phone, "cat /nope 2>&1")[1] == "cat: /nope: No such file or directory\n"
    assert sh(phone, "cat /nope 2>/dev/null; echo $?")[1] == "1\n"
    assert sh(phone, "mv /data/local/tmp/a.txt /data/local/tmp/b.txt && ls /data/local/tmp")[1] == "b.txt\n"
    assert sh(phone, "rm /data/local/tmp/b.txt; ls /data/local/tmp/b.txt")[0] == 1


def test_taskset_runs_the_command_on_valid_masks_only(phone):
    assert sh(phone, "taskset f echo pinned") == (0, "pinned\n", "")
    status, _, err = sh(phone, "taskset 10 echo no")  # cpu4 does not exist on a 4-core phone
    assert status == 1 and "Invalid argument" in err


def test_parse_errors_are_status_2(phone):
    with pytest.raises(ShellSyntaxError):
        parse("echo 'unterminated")
    status, _, err = sh(phone, "echo hi &&")
    assert status == 2 and "syntax error" in err


def test_getprop_dumpsys_settings_and_screen(phone):
    assert sh(phone, "getprop ro.build.version.sdk")[1] == "22\n"
    assert "[ro.product.cpu.abi]: [armeabi-v7a]" in sh(phone, "getprop")[1]
    # Android 5.1: 'unplug' is unknown (help text, status 0); 'set usb 0' works
    sh(phone, "dumpsys battery unplug")
    assert "USB powered: true" in sh(phone, "dumpsys battery")[1]
    sh(phone, "dumpsys battery set usb 0")
    assert "USB powered: false" in sh(phone, "dumpsys battery")[1]
    assert sh(phone, "cat /sys/class/power_supply/battery/status")[1] == "Discharging\n"
    sh(phone, "settings put global airplane_mode_on 1")
    assert sh(phone, "settings get global airplane_mode_on")[1] == "1\n"
    sh(phone, "input keyevent 223")
    assert "mWakefulness=Asleep" in sh(phone, "dumpsys power")[1]


# ---------------------------------------------------------------- sandbox


def test_sandbox_confines_paths(tmp_path, phone):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    # lexical escapes stop at the sandbox root
    assert sh(phone, f"cat ../../..{secret}")[0] == 1
    assert sh(phone, f"cat {secret}")[0] == 1
    # a symlink planted inside the sandbox that points outside is refused
    link = phone.sandbox.host_path("/data/local/tmp/escape")
    os.symlink(secret, link)
    status, out, err = sh(phone, "cat /data/local/tmp/escape")
    assert status == 1 and "host secret" not in out
    status, _, _ = sh(phone, "echo x > /data/local/tmp/escape")
    assert status == 1 and secret.read_text() == "host secret"


def test_no_host_commands_and_read_only_system_without_root(tmp_path):
    p6 = PhoneState(load_profile("virtual-pixel6"), tmp_path / "p6")
    assert sh(p6, "id")[1].startswith("uid=2000(shell)")
    status, _, err = sh(p6, "echo performance > /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    assert status == 1 and "Permission denied" in err
    # a pushed host binary is never executed
    exe = p6.sandbox.host_path("/data/local/tmp/tool")
    exe.write_bytes(b"#!/bin/sh\ntouch /tmp/pwned\n")
    exe.chmod(0o755)
    status, _, err = sh(p6, "/data/local/tmp/tool")
    assert status == 126 and "Exec format error" in err
    assert not Path("/tmp/pwned").exists()


# ---------------------------------------------------------------- dd / sleep and the busy timeline


def test_dd_is_a_one_thread_busy_period_and_sleep_is_idle(phone):
    t0 = time.monotonic()
    status, _, err = sh(phone, "dd if=/dev/zero of=/dev/null bs=1000000 count=50; sleep 0.05")
    elapsed = time.monotonic() - t0
    assert status == 0 and "50+0 records out" in err
    assert 0.1 <= elapsed < 1.0
    t, busy = read_timeline(phone.timeline.path)
    assert phone.timeline.path.read_text().startswith("# t_mono_s\tbusy_threads\n")
    assert busy.tolist() == [0, 1, 0]
    # 50 MB at the documented 1 GB/s: busy for at least 0.05 s; a loaded machine may end the period late,
    # never early (a 10x wrong speed still fails either bound)
    assert 0.049 <= t[2] - t[1] < 0.3
    assert np.all(np.diff(t) >= 0) and t[-1] <= time.monotonic()


# ---------------------------------------------------------------- wire protocol with a raw socket client


def _read_packet(s: socket.socket) -> tuple[P.Header, bytes]:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    hdr = P.unpack_header(exact(P.HEADER_SIZE))
    data = exact(hdr.length)
    assert P.checksum(data) == hdr.crc
    return hdr, data


def _android_key(tmp_path):
    from adb_shell.auth.keygen import keygen

    keygen(str(tmp_path / "k"))
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    priv = serialization.load_pem_private_key((tmp_path / "k").read_bytes(), password=None)
    def sign(token: bytes) -> bytes:
        return priv.sign(token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))

    return (tmp_path / "k.pub"), sign


def _handshake(port: int, sign) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(P.pack(P.CNXN, P.A_VERSION_MIN, 4096, b"host::\0"))
    hdr, token = _read_packet(s)
    assert hdr.name == "AUTH" and hdr.arg0 == P.AUTH_TOKEN and len(token) == 20
    s.sendall(P.pack(P.AUTH, P.AUTH_SIGNATURE, 0, sign(token)))
    hdr, banner = _read_packet(s)
    assert hdr.name == "CNXN", hdr
    assert b"features=shell_v2" in banner
    return s


def test_signature_check_accepts_known_key_and_rejects_a_forged_one(tmp_path):
    pub, sign = _android_key(tmp_path)
    with VirtualPhone(tmp_path / "phone", authorized_keys=(pub,)) as vp:
        s = _handshake(vp.port, sign)
        s.close()
        # a wrong signature gets a fresh token, and an unknown public key is refused (link closed)
        s = socket.create_connection(("127.0.0.1", vp.port), timeout=5)
        s.sendall(P.pack(P.CNXN, P.A_VERSION_MIN, 4096, b"host::\0"))
        _, token = _read_packet(s)
        s.sendall(P.pack(P.AUTH, P.AUTH_SIGNATURE, 0, b"\x01" * 256))
        hdr, token2 = _read_packet(s)
        assert hdr.name == "AUTH" and token2 != token
        (tmp_path / "other").mkdir()
        other_pub, _ = _android_key(tmp_path / "other")
        s.sendall(P.pack(P.AUTH, P.AUTH_RSAPUBLICKEY, 0, other_pub.read_bytes() + b"\0"))
        assert s.recv(100) == b""
        s.close()


def test_bad_checksum_drops_the_link(tmp_path):
    pub, sign = _android_key(tmp_path)
    with VirtualPhone(tmp_path / "phone", authorized_keys=(pub,)) as vp:
        s = _handshake(vp.port, sign)
        pkt = bytearray(P.pack(P.OPEN, 1, 0, b"shell:echo hi\0"))
        pkt[16] ^= 0xFF  # corrupt the checksum field
        s.sendall(bytes(pkt))
        assert s.recv(100) == b""


def test_sync_send_split_across_packets_and_oddly_chunked(tmp_path):
    pub, sign = _android_key(tmp_path)
    payload = os.urandom(150_000)
    with VirtualPhone(tmp_path / "phone", authorized_keys=(pub,)) as vp:
        s = _handshake(vp.port, sign)
        s.sendall(P.pack(P.OPEN, 7, 0, b"sync:\0"))
        hdr, _ = _read_packet(s)
        assert hdr.name == "OKAY"
        remote = hdr.arg0
        path = b"/data/local/tmp/x.bin,33188"
        stream = struct.pack("<2I", P.S_SEND, len(path)) + path
        for k in range(0, len(payload), 60_000):
            chunk = payload[k:k + 60_000]
            stream += struct.pack("<2I", P.S_DATA, len(chunk)) + chunk
        stream += struct.pack("<2I", P.S_DONE, 1_700_000_000)
        # cut the request stream at awkward places: inside headers and inside the path
        cuts = [3, 11, 30, 4000, 70_001, 140_003, len(stream)]
        prev = 0
        for c in cuts:
            s.sendall(P.pack(P.WRTE, 7, remote, stream[prev:c]))
            hdr, _ = _read_packet(s)
            assert hdr.name == "OKAY"
            prev = c
        hdr, data = _read_packet(s)
        assert hdr.name == "WRTE" and data[:4] == b"OKAY"
        assert vp.state.sandbox.host_path("/data/local/tmp/x.bin").read_bytes() == payload
        assert vp.state.sandbox.host_path("/data/local/tmp/x.bin").stat().st_mtime == 1_700_000_000

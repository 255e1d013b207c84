"""The virtual phone as a safe neighbour: abuse through the real adb-shell client and raw sockets on loopback.

One phone runs in its own process (``harness virtual-phone``) so that its memory is measured alone
(``VmRSS``); each case checks that the phone's memory grew by less than 200 MB and that another client's
``echo`` is answered within 2 s while (or right after) the abuse runs.
"""

from __future__ import annotations

import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from vphone_helpers import PhoneProcess, RawClient

from device.adb import AdbDevice, AdbOptions, ensure_adb_key
from device.virtual_phone import protocol as P

GROWTH_MAX_MB = 200.0
ECHO_MAX_S = 2.0


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ensure_adb_key(tmp_path_factory.mktemp("keys") / "adbkey")


@pytest.fixture(scope="module")
def phone(tmp_path_factory, key):
    p = PhoneProcess(tmp_path_factory.mktemp("vphone"), key)
    yield p
    p.stop()


def _dev(phone, key) -> AdbDevice:
    return AdbDevice(phone.address, AdbOptions(key_path=str(key), retries=1, retry_backoff_s=0.05)).connect()


@pytest.fixture()
def dev(phone, key):
    d = _dev(phone, key)
    yield d
    d.close()


def _echo_s(phone, key) -> float:
    """Seconds for a fresh client to get ``echo`` answered (a new link: the busy one may be held)."""
    t0 = time.monotonic()
    d = _dev(phone, key)
    try:
        res = d.shell("echo alive", timeout_s=10, check=False, retry=False)
        assert res.exit_code == 0 and res.output.strip() == "alive"
    finally:
        d.close()
    return time.monotonic() - t0


class _Budget:
    """RSS before/after a case: growth under ``GROWTH_MAX_MB``."""

    def __init__(self, phone):
        self.phone = phone
        self.before = phone.rss_mb()

    def check(self) -> float:
        growth = self.phone.rss_mb() - self.before
        assert growth < GROWTH_MAX_MB, f"phone RSS grew by {growth:.0f} MB"
        return growth


def _host_mode(phone, device_path: str) -> int:
    return stat.S_IMODE((phone.root / "fs" / device_path.lstrip("/")).stat().st_mode)


# ------------------------------------------------------------------ 1. no setuid / world-writable host files


def test_a_push_with_mode_04777_leaves_no_setuid_or_world_write(phone, dev, tmp_path):
    local = tmp_path / "tool"
    local.write_bytes(b"#!/bin/sh\necho hi\n")
    dev.push(local, "/data/local/tmp/suid_tool", mode=0o4777)
    mode = _host_mode(phone, "/data/local/tmp/suid_tool")
    assert mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022) == 0, oct(mode)
    assert mode & 0o700 == 0o700  # the owner keeps what was asked for


def test_chmod_6777_leaves_no_setuid_setgid_or_world_write(phone, dev):
    assert dev.shell("echo x > /data/local/tmp/chm && chmod 6777 /data/local/tmp/chm", check=False).exit_code == 0
    mode = _host_mode(phone, "/data/local/tmp/chm")
    assert mode & (stat.S_ISUID | stat.S_ISGID | 0o022) == 0 and mode & 0o755 == 0o755, oct(mode)
    assert dev.shell("chmod 1777 /data/local/tmp/chm", check=False).exit_code == 0
    assert _host_mode(phone, "/data/local/tmp/chm") & (stat.S_ISVTX | 0o022) == 0


# ------------------------------------------------------------------ 2. the runner: concurrency and thread caps


@pytest.fixture(scope="module")
def xnn_pte(tmp_path_factory):
    """A small conv net lowered to XNNPACK (uses the runtime's thread pool).  Test fixture only."""
    torch = pytest.importorskip("torch")
    exir = pytest.importorskip("executorch.exir")
    xnn = pytest.importorskip("executorch.backends.xnnpack.partition.xnnpack_partitioner")

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    torch.manual_seed(0)
    ep = torch.export.export(net, (torch.ones(1, 3, 32, 32),))
    prog = exir.to_edge_transform_and_lower(ep, partitioner=[xnn.XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("pte") / "conv.pte"
    path.write_bytes(prog.buffer)
    return path


def test_concurrent_runners_with_different_threads_all_finish(phone, key, dev, xnn_pte):
    dev.push(xnn_pte, "/data/local/tmp/conv.pte")
    warm = dev.shell("/system/bin/executor_runner --model_path=/data/local/tmp/conv.pte", timeout_s=60, check=False)
    assert warm.exit_code == 0, warm.output[-300:]  # the runtime is loaded once per process: not growth
    budget = _Budget(phone)

    def run(threads: int):
        d = _dev(phone, key)
        try:
            return d.shell(f"/system/bin/executor_runner --model_path=/data/local/tmp/conv.pte "
                           f"--num_executions=20 --cpu_threads={threads}", timeout_s=60, check=False, retry=False)
        finally:
            d.close()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run, t) for t in (1, 2, 3, 4)]
        time.sleep(0.2)
        assert _echo_s(phone, key) < ECHO_MAX_S  # a runner queue does not block the shell
        results = [f.result(timeout=120) for f in futures]
    for res in results:
        assert res.exit_code == 0 and "Model executed successfully 20 time(s)" in res.output, res.output[-300:]
    assert phone.proc.poll() is None
    budget.check()


def test_cpu_threads_over_the_cap_is_an_error_line_not_1500_threads(phone, dev, xnn_pte):
    dev.push(xnn_pte, "/data/local/tmp/conv_cap.pte")
    before = phone.threads()
    res = dev.shell("/system/bin/executor_runner --model_path=/data/local/tmp/conv_cap.pte --cpu_threads=1500",
                    timeout_s=30, check=False)
    assert res.exit_code == 1 and "--cpu_threads must be at most 64" in res.output
    assert res.output.count("\n") == 1
    assert phone.threads() < before + 20


# ------------------------------------------------------------------ 3. bounded buffers and arguments


def test_wrte_is_not_acknowledged_before_it_is_consumed(phone, key):
    budget = _Budget(phone)
    c = RawClient(phone.port, key)
    try:
        remote = c.open("shell:sleep 30", local_id=7)
        block = b"x" * (P.MAX_PAYLOAD_BYTES - 1024)
        c.send(P.WRTE, 7, remote, block)
        with pytest.raises((TimeoutError, OSError)):
            hdr, _ = c.read(timeout_s=1.0)  # no OKAY: nobody on the phone read it
        assert _echo_s(phone, key) < ECHO_MAX_S
        # ignoring flow control (400 MB as adb-shell would never send them) loses the link, not memory
        with pytest.raises(OSError):
            for _ in range(1600):
                c.send(P.WRTE, 7, remote, block)
        assert c.closed_by_phone(5.0)
    finally:
        c.close()
    budget.check()
    assert _echo_s(phone, key) < ECHO_MAX_S


def test_a_sync_data_chunk_over_64k_is_a_protocol_error(phone, key):
    budget = _Budget(phone)
    c = RawClient(phone.port, key)
    try:
        remote = c.open("sync:", local_id=3)
        spec = b"/data/local/tmp/huge," + str(0o100644).encode()
        c.send(P.WRTE, 3, remote, struct.pack("<2I", P.S_SEND, len(spec)) + spec)
        c.read()  # OKAY for the request, consumed
        c.send(P.WRTE, 3, remote, struct.pack("<2I", P.S_DATA, 300 << 20) + b"\0" * 1000)
        got = b""
        deadline = time.monotonic() + 5
        while b"FAIL" not in got and time.monotonic() < deadline:
            hdr, data = c.read()
            if hdr.command == P.WRTE:
                got += data
                c.send(P.OKAY, 3, remote)
        assert got.startswith(b"FAIL") and b"over 65536" in got
        assert str(phone.root).encode() not in got
    finally:
        c.close()
    assert not (phone.root / "fs/data/local/tmp/huge").exists()
    budget.check()


@pytest.mark.parametrize("cmd, status, text", [
    ("dd if=/dev/zero bs=100m count=3 > /dev/null", 0, "314572800 bytes"),
    ("dd if=/dev/zero of=/dev/null bs=100m count=1", 0, "104857600 bytes"),
    ("dd if=/dev/zero bs=100m count=1 | wc -c", 1, "over 4 MiB"),
    ("printf '%400000000s' x", 1, "field width"),
    ("printf '%.400000000f' 1", 1, "field width"),
])
def test_big_sizes_stay_bounded(phone, dev, cmd, status, text):
    budget = _Budget(phone)
    res = dev.shell(cmd, timeout_s=60, check=False)
    assert res.exit_code == status and text in res.output, res.output[-300:]
    budget.check()


def test_cat_of_a_big_file_streams(phone, dev):
    big = phone.root / "fs/data/local/tmp/big.bin"
    with open(big, "wb") as fh:
        fh.truncate(300 << 20)  # sparse: 300 MB of zeros without writing them
    budget = _Budget(phone)
    res = dev.shell("cat /data/local/tmp/big.bin > /dev/null && wc -c /data/local/tmp/big.bin", timeout_s=60)
    assert res.output.split()[0] == str(300 << 20)
    budget.check()
    big.unlink()


# ------------------------------------------------------------------ 4. regexes, bad input: a status, not a drop


def test_a_catastrophic_grep_does_not_freeze_other_clients(phone, key, dev):
    box = {}

    def abuse():
        t0 = time.monotonic()
        box["res"] = dev.shell("echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa! | grep -E '^(a|aa)+$'",
                               timeout_s=30, check=False, retry=False)
        box["s"] = time.monotonic() - t0

    th = threading.Thread(target=abuse)
    th.start()
    time.sleep(0.3)
    assert _echo_s(phone, key) < ECHO_MAX_S
    th.join(30)
    assert box["res"].exit_code in (1, 2) and box["s"] < 10


@pytest.mark.parametrize("cmd, status, text", [
    (r"echo -e '\x'", 1, "bad escape"),
    ("sleep inf", 1, "invalid number"),
    ("sleep 1e300", 1, "invalid number"),
    ("grep '(' /dev/null", 2, "bad regex"),
    ("echo '(' | grep -E '('", 2, "bad regex"),
])
def test_bad_arguments_end_with_a_status_not_a_dropped_session(dev, cmd, status, text):
    res = dev.shell(cmd, timeout_s=10, check=False, retry=False)
    assert res.exit_code == status and text in res.output, res.output
    assert dev.shell("echo still", timeout_s=10).output.strip() == "still"  # same link, still served


def test_error_messages_show_device_paths_only(phone, dev, tmp_path):
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program" * 10)
    dev.push(bad, "/data/local/tmp/bad.pte")
    outputs = [dev.shell(c, timeout_s=180, check=False).output for c in (  # the first runner loads ExecuTorch
        "/system/bin/executor_runner --model_path=/data/local/tmp/bad.pte",
        "cp /data/local/tmp/nothing /data/local/tmp/x",
        "cat /data/local/tmp/nothing/deeper",
        "echo x > /data/local/tmp",
        "ls /data/local/tmp/nothing",
        "mv /data/local/tmp/nothing /data/local/tmp/y",
        "rmdir /data/local/tmp/nothing",
    )]
    assert all(o.strip() for o in outputs)
    for out in outputs:
        assert str(phone.root) not in out and "/tmp/pytest" not in out, out


# ------------------------------------------------------------------ 5. connections


def test_connection_caps_keep_a_slot_for_authenticated_clients(phone, key):
    socks = []
    try:
        for _ in range(40):  # unauthenticated: at most 16 are kept
            socks.append(RawClient(phone.port, None, timeout_s=2))
        time.sleep(0.3)
        closed = sum(c.closed_by_phone(0.05) for c in socks)
        assert closed >= 40 - 16
        assert _echo_s(phone, key) < ECHO_MAX_S
    finally:
        for c in socks:
            c.close()


def test_an_unauthenticated_link_is_closed_after_a_timeout(tmp_path, key, monkeypatch):
    from device.virtual_phone import VirtualPhone, connection

    monkeypatch.setattr(connection, "AUTH_TIMEOUT_S", 0.5)
    with VirtualPhone(tmp_path / "p", authorized_keys=(f"{key}.pub",)) as vp:
        c = RawClient(vp.port, None)
        try:
            c.send(P.CNXN, P.A_VERSION_SKIP_CHECKSUM, P.MAX_PAYLOAD_BYTES, b"host::slow\0")
            assert c.read()[0].command == P.AUTH
            assert c.closed_by_phone(3.0)
        finally:
            c.close()
        authed = RawClient(vp.port, key)  # a client that authenticates in time stays
        try:
            time.sleep(0.8)
            authed.open("shell:echo ok")
        finally:
            authed.close()


def test_many_authenticated_connections_are_capped(phone, key):
    budget = _Budget(phone)
    threads_before = phone.threads()
    clients = []
    try:
        for _ in range(80):
            try:
                clients.append(RawClient(phone.port, key, timeout_s=3))
            except (OSError, AssertionError):
                pass
        assert 40 <= len(clients) <= 64
        assert phone.threads() < threads_before + 70
    finally:
        for c in clients:
            c.close()
    time.sleep(0.5)
    assert _echo_s(phone, key) < ECHO_MAX_S
    budget.check()


def test_streams_per_link_are_capped(phone, key):
    budget = _Budget(phone)
    c = RawClient(phone.port, key)
    try:
        answers = []
        for i in range(1, 41):
            c.send(P.OPEN, i, 0, b"shell:sleep 3\0")
            hdr, _ = c.read()
            answers.append(hdr.name)
        assert answers.count("OKAY") == 32 and answers[32:] == ["CLSE"] * 8
        assert _echo_s(phone, key) < ECHO_MAX_S
    finally:
        c.close()
    budget.check()


def test_background_jobs_are_capped(phone, dev):
    before = phone.threads()
    res = dev.shell(" ".join(["sleep 2 &"] * 40) + " echo done", timeout_s=30, check=False)
    assert "can't fork" in res.output and res.output.strip().endswith("done")
    assert phone.threads() <= before + 32 + 2

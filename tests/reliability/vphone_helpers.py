"""Shared by the virtual-phone reliability tests: a phone in its own process, a raw ADB client, RSS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from device.virtual_phone import protocol as P

REPO = Path(__file__).resolve().parents[2]


class PhoneProcess:
    """``python -m harness.cli virtual-phone`` in a subprocess (its own RSS), announced in ``cache``."""

    def __init__(self, tmp: Path, key: Path, *extra: str):
        self.root = tmp / "phone"
        self.cache = tmp / "cache"
        env = {**os.environ, "HARNESS_CACHE_DIR": str(self.cache), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "virtual-phone", "--port", "0", "--root", str(self.root),
             "--authorize-key", f"{key}.pub", "--duration-s", "600", *extra],
            cwd=str(tmp), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        reg = self.cache / "virtual-phones"
        while time.monotonic() < deadline:
            entries = list(reg.glob("*.json")) if reg.is_dir() else []
            if entries:
                self.info = json.loads(entries[0].read_text())
                self.port = int(self.info["port"])
                self.address = self.info["address"]
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"virtual phone exited: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("virtual phone did not announce itself within 120 s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident memory of the phone process (``VmRSS`` in ``/proc/PID/status``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RawClient:
    """A bare ADB client over one socket (no flow control of its own: the test decides)."""

    def __init__(self, port: int, key: Path | None = None, timeout_s: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if key is not None:
            self.handshake(key)

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.sock.sendall(P.pack(command, arg0, arg1, data))

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError("closed by the phone")
            buf += chunk
        return bytes(buf)

    def read(self, timeout_s: float = 5.0) -> tuple[P.Header, bytes]:
        self.sock.settimeout(timeout_s)
        hdr = P.unpack_header(self._recv_exact(P.HEADER_SIZE))
        return hdr, self._recv_exact(hdr.length)

    def handshake(self, key: Path) -> None:
        from adb_shell.auth.sign_pythonrsa import PythonRSASigner

        self.send(P.CNXN, P.A_VERSION_SKIP_CHECKSUM, P.MAX_PAYLOAD_BYTES, b"host::raw\0")
        hdr, token = self.read()
        assert hdr.command == P.AUTH
        self.send(P.AUTH, P.AUTH_SIGNATURE, 0, PythonRSASigner.FromRSAKeyPath(str(key)).Sign(token))
        hdr, _ = self.read()
        assert hdr.command == P.CNXN

    def open(self, service: str, local_id: int = 1) -> int:
        """Open a stream; the phone's id for it."""
        self.send(P.OPEN, local_id, 0, service.encode() + b"\0")
        hdr, _ = self.read()
        assert hdr.command == P.OKAY, hdr.name
        return hdr.arg0

    def closed_by_phone(self, timeout_s: float) -> bool:
        """True once the phone closes the socket (packets before that are skipped)."""
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                if not self.sock.recv(1 << 16):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()

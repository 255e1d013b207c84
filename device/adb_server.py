"""Phones held by a running ``adb`` server, reached through the server's host protocol.

A running ``adb`` server (``adb start-server``, port 5037 or ``$ANDROID_ADB_SERVER_PORT``) claims every USB
phone it sees, so a second USB client cannot.  Instead of asking the user to ``adb kill-server``, the
harness talks to such a phone through the server, as the ``adb`` command does: one TCP connection to the
server per command, ``host:transport:<serial>`` and then the service (``shell:``, ``sync:``, ``reboot:``).
Requests are a 4-hex-digit length and the text; answers ``OKAY`` or ``FAIL`` with a length-prefixed reason
(``SERVICES.TXT`` and ``SYNC.TXT`` of the adb sources).  The server authenticates with its own keys.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import stat as stat_mod
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.adb import SENTINEL, describe_device, parse_shell_output
from device.base import Device, RemoteStat, ShellResult
from device.errors import DeviceError, InputError

log = logging.getLogger(__name__)

DEFAULT_SERVER_PORT = 5037
SYNC_CHUNK_BYTES = 64 * 1024
#: Seconds to wait for a server to answer ``host:version`` when probing whether one runs.
PROBE_TIMEOUT_S = 0.5


class AdbServerError(DeviceError):
    """The adb server refused a request (``FAIL``) or the link to it broke."""


@dataclass(frozen=True)
class AdbServer:
    """Where an adb server listens (loopback port 5037 unless the environment says otherwise)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_SERVER_PORT
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AdbServer:
        """The server adb itself would use: ``$ADB_SERVER_SOCKET`` (``tcp:HOST:PORT``), else
        ``$ANDROID_ADB_SERVER_PORT``, else 127.0.0.1:5037."""
        env = os.environ if env is None else env
        sock = env.get("ADB_SERVER_SOCKET", "").strip()
        if sock:
            kind, _, rest = sock.partition(":")
            host, _, port = rest.rpartition(":")
            if kind != "tcp" or not port.isdigit() or not 0 < int(port) < 65536:
                raise InputError(f"ADB_SERVER_SOCKET={sock!r}: expected tcp:HOST:PORT")
            return cls(host or "127.0.0.1", int(port))
        text = env.get("ANDROID_ADB_SERVER_PORT", "").strip()
        if text:
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise InputError(f"ANDROID_ADB_SERVER_PORT={text!r}: expected a TCP port number")
            return cls(port=int(text))
        return cls()

    @property
    def label(self) -> str:
        return f"adb server {self.host}:{self.port}"

    # ---------------------------------------------------------------- wire
    def _connect(self, timeout_s: float | None = None) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s or self.timeout_s)
        except OSError as exc:
            raise AdbServerError(self.label, f"cannot reach it: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, sock: socket.socket, text: str) -> None:
        """Send one request and wait for ``OKAY`` (``FAIL``: :class:`AdbServerError` with the reason)."""
        data = text.encode()
        sock.sendall(b"%04x" % len(data) + data)
        status = _recv_exact(sock, 4, self.label)
        if status == b"OKAY":
            return
        if status == b"FAIL":
            raise AdbServerError(self.label, f"{text.partition(':')[2] or text}: {self._read_text(sock)}")
        raise AdbServerError(self.label, f"unexpected answer {status!r} to {text!r}")

    def _read_text(self, sock: socket.socket) -> str:
        size = _recv_exact(sock, 4, self.label)
        try:
            n = int(size, 16)
        except ValueError:
            raise AdbServerError(self.label, f"bad length {size!r}") from None
        return _recv_exact(sock, n, self.label).decode("utf-8", "replace")

    def query(self, text: str, timeout_s: float | None = None) -> str:
        """A ``host:`` request answered with one length-prefixed text (``host:version``, ``host:devices-l``)."""
        with self._connect(timeout_s) as sock:
            self.request(sock, text)
            return self._read_text(sock)

    # ---------------------------------------------------------------- host services
    def running(self) -> bool:
        """True when a server answers ``host:version`` there (never starts one)."""
        try:
            self.query("host:version", timeout_s=PROBE_TIMEOUT_S)
            return True
        except (AdbServerError, OSError):
            return False

    def devices(self) -> list[dict[str, str]]:
        """The server's devices (``host:devices-l``): serial, state and the ``key:value`` details."""
        out = []
        for line in self.query("host:devices-l").splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            entry = {"serial": parts[0], "state": parts[1]}
            for kv in parts[2:]:
                k, sep, v = kv.partition(":")
                if sep:
                    entry[k] = v
            out.append(entry)
        return out

    def state_of(self, serial: str) -> str | None:
        """The server's state for ``serial`` (``device``, ``unauthorized``, ``offline``...), None if unknown."""
        for d in self.devices():
            if d["serial"] == serial:
                return d["state"]
        return None

    def open_service(self, serial: str, service: str, timeout_s: float | None = None) -> socket.socket:
        """A socket to ``service`` on the phone ``serial`` (``host:transport:<serial>`` first)."""
        sock = self._connect(timeout_s)
        try:
            self.request(sock, f"host:transport:{serial}")
            self.request(sock, service)
        except BaseException:
            sock.close()
            raise
        if timeout_s is not None:
            sock.settimeout(timeout_s)
        return sock


def running_server(env: dict[str, str] | None = None) -> AdbServer | None:
    """The adb server of this environment when one runs, else None."""
    server = AdbServer.from_env(env)
    return server if server.running() else None


def _recv_exact(sock: socket.socket, n: int, who: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            raise AdbServerError(who, "timed out waiting for an answer") from None
        except OSError as exc:
            raise AdbServerError(who, f"link broken: {exc.strerror or exc}") from None
        if not chunk:
            raise AdbServerError(who, "closed the connection")
        buf += chunk
    return bytes(buf)


def _recv_all(sock: socket.socket, who: str) -> bytes:
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            raise AdbServerError(who, "timed out") from None
        except OSError as exc:
            raise AdbServerError(who, f"link broken: {exc.strerror or exc}") from None
        if not chunk:
            return bytes(buf)
        buf += chunk


class AdbServerDevice(Device):
    """A phone the adb server holds, driven through the server (``harness`` never claims its USB interface)."""

    def __init__(self, serial: str, server: AdbServer | None = None):
        self.server = server or AdbServer.from_env()
        self.name = serial
        self.serial = serial
        self.kind = "tcp" if ":" in serial else "usb"

    def connect(self) -> AdbServerDevice:
        """Check that the server lists the phone as ready; one clear line otherwise."""
        state = self.server.state_of(self.serial)
        if state == "device":
            return self
        if state is None:
            raise DeviceError(self.name, f"the {self.server.label} does not list this phone "
                              "(see `adb devices`)")
        hint = (" (accept the 'Allow USB debugging' dialog on the phone)" if state == "unauthorized" else "")
        raise DeviceError(self.name, f"the {self.server.label} lists this phone as {state}{hint}")

    def _open(self, service: str, timeout_s: float) -> socket.socket:
        return self.server.open_service(self.serial, service, timeout_s)

    # ------------------------------------------------------------ Device
    def shell(self, command: str, timeout_s: float = 60.0, check: bool = True, retry: bool = True) -> ShellResult:
        wrapped = f"sh -c {shlex.quote(command)}; echo {SENTINEL}$?"
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            try:
                with self._open(f"shell:{wrapped}", timeout_s) as sock:
                    raw = _recv_all(sock, self.name)
                break
            except AdbServerError as exc:
                if "timed out" in str(exc) and time.monotonic() - t0 >= 0.9 * timeout_s:
                    raise DeviceError(self.name, f"command {command!r} timed out after {timeout_s:g} s") from None
                if attempt == attempts:
                    raise
                log.info("%s: command %r failed through the adb server, retrying: %s", self.name, command, exc)
        return parse_shell_output(self.name, command, raw, time.monotonic() - t0, check)

    def _sync(self, timeout_s: float) -> socket.socket:
        return self._open("sync:", timeout_s)

    @staticmethod
    def _sync_req(sock: socket.socket, ident: bytes, payload: bytes) -> None:
        sock.sendall(ident + struct.pack("<I", len(payload)) + payload)

    def push(self, local: Path | str, remote: str, mode: int = 0o644, timeout_s: float = 120.0) -> None:
        local = Path(local)
        if not local.is_file():
            raise InputError(f"cannot push {local}: not a file")
        with self._sync(timeout_s) as sock:
            self._sync_req(sock, b"SEND", f"{remote},{stat_mod.S_IFREG | mode}".encode())
            with open(local, "rb") as fh:
                while chunk := fh.read(SYNC_CHUNK_BYTES):
                    self._sync_req(sock, b"DATA", chunk)
            sock.sendall(b"DONE" + struct.pack("<I", int(local.stat().st_mtime)))
            ident, n = struct.unpack("<4sI", _recv_exact(sock, 8, self.name))
            if ident != b"OKAY":
                msg = _recv_exact(sock, n, self.name).decode("utf-8", "replace") if ident == b"FAIL" else repr(ident)
                raise DeviceError(self.name, f"push {local.name} -> {remote}: {msg}")
            self._sync_req(sock, b"QUIT", b"")

    def pull(self, remote: str, local: Path | str, timeout_s: float = 120.0) -> None:
        local = Path(local)
        tmp = local.with_name(f".{local.name}.pull{os.getpid()}")
        try:
            with self._sync(timeout_s) as sock, open(tmp, "wb") as out:
                self._sync_req(sock, b"RECV", remote.encode())
                while True:
                    ident, n = struct.unpack("<4sI", _recv_exact(sock, 8, self.name))
                    if ident == b"DONE":
                        break
                    if ident == b"FAIL":
                        msg = _recv_exact(sock, n, self.name).decode("utf-8", "replace")
                        raise DeviceError(self.name, f"pull {remote}: {msg}")
                    if ident != b"DATA" or n > SYNC_CHUNK_BYTES:
                        raise DeviceError(self.name, f"pull {remote}: unexpected sync answer {ident!r}")
                    out.write(_recv_exact(sock, n, self.name))
                self._sync_req(sock, b"QUIT", b"")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def stat(self, remote: str) -> RemoteStat:
        with self._sync(self.server.timeout_s) as sock:
            self._sync_req(sock, b"STAT", remote.encode())
            ident, mode, size, mtime = struct.unpack("<4sIII", _recv_exact(sock, 16, self.name))
            if ident != b"STAT":
                raise DeviceError(self.name, f"stat {remote}: unexpected sync answer {ident!r}")
            self._sync_req(sock, b"QUIT", b"")
        return RemoteStat(int(mode), int(size), int(mtime))

    def reboot_and_wait(self, timeout_s: float = 180.0) -> float:
        t0 = time.monotonic()
        try:
            with self._open("reboot:", 10.0) as sock:
                _recv_all(sock, self.name)
        except DeviceError:
            pass  # the link often dies before the reply
        deadline = t0 + timeout_s
        time.sleep(0.2)
        while time.monotonic() < deadline:
            try:
                if self.server.state_of(self.serial) == "device" and self.getprop("sys.boot_completed") == "1":
                    return time.monotonic() - t0
            except DeviceError:
                pass
            time.sleep(0.5)
        raise DeviceError(self.name, f"did not come back within {timeout_s:g} s after reboot")

    def describe(self) -> dict[str, Any]:
        """Model, ABI, Android level and serial, for listings."""
        return {**describe_device(self, self.kind), "via": self.server.label}

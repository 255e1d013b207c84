"""The virtual phone's adbd: the ADB wire protocol over TCP on 127.0.0.1.

Handshake ``CNXN`` -> ``AUTH`` token -> signature check against the known keys (``<root>/adb_keys``)
-> ``CNXN`` with the device banner; unknown public keys are accepted only with ``accept_new_keys``.
Streams: ``OPEN``/``OKAY``/``WRTE``/``CLSE`` with one-packet-in-flight flow control.  Services:
``shell:`` (v1: stdout and stderr merged), ``shell,v2,...:`` (the shell protocol with exit codes),
``exec:``, ``sync:`` (STAT/LIST/SEND/RECV/DONE/QUIT; requests may span packets), ``reboot:``, ``root:``.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import stat as stat_mod
import struct
import threading
import time
from pathlib import Path

from device.profiles import DeviceProfile, load_profile
from device.virtual_phone import protocol as P
from device.virtual_phone.phone import FaultConfig, PhoneState
from device.virtual_phone.sandbox import SandboxError
from device.virtual_phone.shell import Cancelled, Output, Shell

log = logging.getLogger(__name__)

FEATURES = "shell_v2,cmd,fixed_push_mkdir"
WRTE_ACK_TIMEOUT_S = 60.0
SYNC_PATH_MAX = 1024


class _Closed(Exception):
    """The stream or the link is gone."""


class Stream:
    """One ADB stream: an input queue fed by ``WRTE`` and an output pump that respects flow control."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self._inbuf = bytearray()
        self.cancel = threading.Event()
        self._cv = threading.Condition()
        self._out = bytearray()
        self._ready = True
        self._closed_local = False

    # --- input
    def deliver(self, data: bytes) -> None:
        self.inbox.put(data)

    def remote_closed(self) -> None:
        self.cancel.set()
        self.inbox.put(None)
        with self._cv:
            self._cv.notify_all()

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` input bytes (requests may span packets); raises :class:`_Closed`."""
        while len(self._inbuf) < n:
            chunk = self.inbox.get()
            if chunk is None:
                self.inbox.put(None)
                raise _Closed()
            self._inbuf += chunk
        data = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        return data

    def read_some(self, timeout_s: float | None = None) -> bytes | None:
        """Whatever input is available (None once closed)."""
        if self._inbuf:
            data = bytes(self._inbuf)
            self._inbuf.clear()
            return data
        try:
            chunk = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return b""
        if chunk is None:
            self.inbox.put(None)
        return chunk

    # --- output
    def okay(self) -> None:
        with self._cv:
            self._ready = True
            self._cv.notify_all()

    def write(self, data: bytes) -> None:
        """Queue output; it is sent in packets of up to the peer's max payload, one in flight."""
        if not data:
            return
        with self._cv:
            if self.cancel.is_set() or not self.conn.alive:
                return
            self._out += data
        self._pump()

    def _pump(self, wait_all: bool = False) -> None:
        while True:
            with self._cv:
                deadline = time.monotonic() + WRTE_ACK_TIMEOUT_S
                while not self._ready and self.conn.alive and not self.cancel.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise _Closed()
                    self._cv.wait(timeout=min(left, 0.5))
                if not self.conn.alive or self.cancel.is_set():
                    self._out.clear()
                    return
                if not self._out:
                    return
                chunk = bytes(self._out[: self.conn.max_payload])
                del self._out[: len(chunk)]
                self._ready = False
            self.conn.send(P.WRTE, self.local_id, self.remote_id, chunk)
            if not wait_all and not self._out:
                return

    def drain(self) -> None:
        """Wait until every queued byte was sent and acknowledged."""
        self._pump(wait_all=True)
        with self._cv:
            deadline = time.monotonic() + WRTE_ACK_TIMEOUT_S
            while not self._ready and self.conn.alive and not self.cancel.is_set() and time.monotonic() < deadline:
                self._cv.wait(timeout=0.5)

    def close(self) -> None:
        """Flush, then send ``CLSE``."""
        if self._closed_local:
            return
        self._closed_local = True
        try:
            self.drain()
        except _Closed:
            pass
        if self.conn.alive:
            self.conn.send(P.CLSE, self.local_id, self.remote_id)
        self.conn.forget(self.local_id)


class Connection:
    """One ADB client link: the handshake, packet demultiplexing and the services."""

    def __init__(self, server: VirtualPhone, sock: socket.socket, peer: str):
        self.server, self.sock, self.peer = server, sock, peer
        self.phone: PhoneState = server.state
        self.alive = True
        self.authed = False
        self.version = P.A_VERSION_MIN
        self.max_payload = 4096
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._token = b""
        self._rx_bytes = 0
        self._rx = sock.makefile("rb", buffering=P.MAX_PAYLOAD_BYTES + P.HEADER_SIZE)

    # --- I/O
    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        delay = self.phone.faults.delay_s
        if delay > 0:
            time.sleep(delay)
        packet = P.pack(command, arg0, arg1, data)
        with self._send_lock:
            if not self.alive:
                return
            try:
                self.sock.sendall(packet)
            except OSError:
                self.kill()

    def _read(self, n: int) -> bytes:
        data = self._rx.read(n) if n else b""
        if len(data) < n:
            raise _Closed()
        self._rx_bytes += n
        limit = self.phone.faults.drop_after_bytes
        if limit is not None and self._rx_bytes >= limit and self.phone.take_drop():
            log.info("fault: dropping %s after %d bytes", self.peer, self._rx_bytes)
            raise _Closed()
        return data

    def kill(self) -> None:
        """Drop the link now (as a pulled cable would)."""
        if not self.alive:
            return
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for s in list(self._streams.values()):
            s.remote_closed()

    def forget(self, local_id: int) -> None:
        self._streams.pop(local_id, None)

    # --- main loop
    def serve(self) -> None:
        try:
            while self.alive:
                hdr = P.unpack_header(self._read(P.HEADER_SIZE))
                if hdr.length > P.MAX_PAYLOAD_BYTES * 4:
                    raise P.ProtocolError(f"payload of {hdr.length} bytes is too large")
                data = self._read(hdr.length)
                if self.version < P.A_VERSION_SKIP_CHECKSUM and hdr.crc != P.checksum(data):
                    raise P.ProtocolError(f"{hdr.name}: payload checksum mismatch")
                self._dispatch(hdr, data)
        except (_Closed, OSError):
            pass
        except P.ProtocolError as exc:
            log.warning("virtual phone: %s: %s; closing the link", self.peer, exc)
        finally:
            self.kill()
            try:
                self.sock.close()
            except OSError:
                pass
            self.server._forget(self)

    def _dispatch(self, hdr: P.Header, data: bytes) -> None:
        cmd = hdr.command
        if cmd == P.CNXN:
            self.version = min(hdr.arg0, P.A_VERSION_SKIP_CHECKSUM) if hdr.arg0 >= P.A_VERSION_MIN else P.A_VERSION_MIN
            self.max_payload = max(1024, min(hdr.arg1 or 4096, P.MAX_PAYLOAD_BYTES))
            self.authed = False
            self._send_token()
            return
        if cmd == P.AUTH:
            self._auth(hdr, data)
            return
        if not self.authed:
            log.info("virtual phone: %s sent %s before authenticating", self.peer, hdr.name)
            return
        if cmd == P.OPEN:
            self._open(hdr.arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif cmd == P.WRTE:
            s = self._streams.get(hdr.arg1)
            if s is not None:
                s.deliver(data)
                self.send(P.OKAY, s.local_id, s.remote_id)
        elif cmd == P.OKAY:
            s = self._streams.get(hdr.arg1)
            if s is not None:
                s.okay()
        elif cmd == P.CLSE:
            s = self._streams.pop(hdr.arg1, None)
            if s is not None:
                s.remote_closed()
                if not s._closed_local:
                    s._closed_local = True
                    self.send(P.CLSE, s.local_id, s.remote_id)

    # --- authentication
    def _send_token(self) -> None:
        self._token = os.urandom(P.TOKEN_SIZE_BYTES)
        self.send(P.AUTH, P.AUTH_TOKEN, 0, self._token)

    def _auth(self, hdr: P.Header, data: bytes) -> None:
        faults = self.phone.faults
        if hdr.arg0 == P.AUTH_SIGNATURE:
            if not faults.refuse_auth and any(P.verify_token_signature(k, self._token, data)
                                              for k in self.phone.known_keys()):
                self._connected()
            else:
                self._send_token()
        elif hdr.arg0 == P.AUTH_RSAPUBLICKEY:
            line = data.rstrip(b"\0").decode("ascii", "replace")
            if self.phone.accept_new_keys and not faults.refuse_auth:
                try:
                    self.phone.remember_key(line)
                except P.ProtocolError as exc:
                    log.warning("virtual phone: %s sent a bad public key: %s", self.peer, exc)
                    self.kill()
                    return
                log.info("virtual phone: accepted a new key from %s", self.peer)
                self._connected()
            else:
                log.warning("virtual phone: refused an unknown ADB key from %s (start with --accept-new-keys "
                            "or add it to %s)", self.peer, self.phone.keys_path)
                self.kill()
        else:
            raise P.ProtocolError(f"unknown AUTH type {hdr.arg0}")

    def _connected(self) -> None:
        self.authed = True
        props = self.phone.props
        banner = (f"device::ro.product.name={props.get('ro.product.name', '')};"
                  f"ro.product.model={props.get('ro.product.model', '')};"
                  f"ro.product.device={props.get('ro.product.device', '')};features={FEATURES}")
        self.send(P.CNXN, self.version, P.MAX_PAYLOAD_BYTES, banner.encode())

    # --- services
    def _open(self, remote_id: int, service: str) -> None:
        handler = None
        if service.startswith("shell"):
            head, _, cmd = service.partition(":")
            opts = head.split(",")[1:]
            handler = functools.partial(self._shell, cmd=cmd, v2="v2" in opts, pty=("raw" not in opts) and not cmd)
        elif service.startswith("exec:"):
            handler = functools.partial(self._shell, cmd=service[5:], v2=False, pty=False)
        elif service.startswith("sync:"):
            handler = self._sync
        elif service.startswith("reboot:"):
            handler = self._reboot
        elif service.startswith("root:") or service.startswith("unroot:"):
            handler = self._root
        if handler is None:
            self.send(P.CLSE, 0, remote_id)
            return
        local_id = self._next_id
        self._next_id += 1
        stream = Stream(self, local_id, remote_id)
        self._streams[local_id] = stream
        self.send(P.OKAY, local_id, remote_id)
        threading.Thread(target=self._run_service, args=(handler, stream), daemon=True,
                         name=f"vphone-{service.split(':')[0]}").start()

    def _run_service(self, handler, stream: Stream) -> None:
        try:
            handler(stream)
        except (_Closed, Cancelled):
            pass
        except Exception:  # a bug in a service must not take the phone down
            log.exception("virtual phone: service failed")
        finally:
            stream.close()

    def _shell(self, stream: Stream, cmd: str, v2: bool, pty: bool) -> None:
        shell = Shell(self.phone, stream.cancel)
        if v2:
            def packet(kind: int):
                return lambda b: stream.write(P.SHELL_V2_HEADER.pack(kind, len(b)) + b) if b else None

            out = Output(packet(P.SHELL_STDOUT), packet(P.SHELL_STDERR))
        else:
            def raw(b: bytes) -> None:
                stream.write(b.replace(b"\n", b"\r\n") if pty else b)

            out = Output(raw, raw)
        if cmd.strip():
            status = shell.run(cmd, out)
        else:
            status = self._interactive(stream, shell, out, v2, pty)
        if v2:
            stream.write(P.SHELL_V2_HEADER.pack(P.SHELL_EXIT, 1) + bytes([status & 0xFF]))

    def _interactive(self, stream: Stream, shell: Shell, out: Output, v2: bool, pty: bool) -> int:
        prompt = ("# " if self.phone.root_user else "$ ") if pty else ""
        out.write(prompt)
        pending = bytearray()
        lines = bytearray()
        while True:
            data = stream.read_some(timeout_s=1.0)
            if data is None:
                return shell.status
            if v2:
                pending += data
                while len(pending) >= 5:
                    kind, n = P.SHELL_V2_HEADER.unpack_from(pending)
                    if len(pending) < 5 + n:
                        break
                    body = bytes(pending[5:5 + n])
                    del pending[:5 + n]
                    if kind == P.SHELL_STDIN:
                        lines += body
                    elif kind == P.SHELL_CLOSE_STDIN:
                        lines += b"\nexit\n"
            else:
                lines += data.replace(b"\r", b"\n")
            while b"\n" in lines:
                line, _, rest = bytes(lines).partition(b"\n")
                lines = bytearray(rest)
                text = line.decode("utf-8", "replace").strip()
                if text in ("exit", "logout"):
                    return shell.status
                if text:
                    shell.run(text, out)
                    if text.split()[0] == "exit":
                        return shell.status
                out.write(prompt)

    def _reboot(self, stream: Stream) -> None:
        stream.drain()
        threading.Timer(0.05, self.phone.reboot, kwargs={"duration_s": self.server.reboot_s}).start()

    def _root(self, stream: Stream) -> None:
        if self.phone.root_user:
            stream.write(b"adbd is already running as root\n")
        else:
            stream.write(b"adbd cannot run as root in production builds\n")

    # --- file sync
    def _sync(self, stream: Stream) -> None:
        while True:
            sid, length = struct.unpack("<2I", stream.read_exact(8))
            if sid == P.S_QUIT:
                return
            if length > SYNC_PATH_MAX:
                stream.write(P.sync_header(P.S_FAIL, 22, b"path too long"))
                return
            path = stream.read_exact(length).decode("utf-8", "replace")
            if sid == P.S_STAT:
                stream.write(self._sync_stat(path))
            elif sid == P.S_LIST:
                self._sync_list(stream, path)
            elif sid == P.S_SEND:
                self._sync_send(stream, path)
            elif sid == P.S_RECV:
                self._sync_recv(stream, path)
            else:
                msg = f"unknown sync request 0x{sid:08x}".encode()
                stream.write(P.sync_header(P.S_FAIL, len(msg), msg))
                return

    def _sync_stat(self, path: str) -> bytes:
        try:
            st = self.phone.sandbox.host_path(path).stat()
            return struct.pack("<4I", P.S_STAT, st.st_mode, min(st.st_size, 0xFFFFFFFF), int(st.st_mtime))
        except (OSError, SandboxError):
            return struct.pack("<4I", P.S_STAT, 0, 0, 0)

    def _sync_list(self, stream: Stream, path: str) -> None:
        try:
            host = self.phone.sandbox.host_path(path)
            names = [".", ".."] + sorted(os.listdir(host)) if host.is_dir() else []
        except (OSError, SandboxError):
            names = []
        buf = bytearray()
        for name in names:
            try:
                st = (host / name).stat()
            except OSError:
                continue
            raw = name.encode()
            buf += struct.pack("<5I", P.S_DENT, st.st_mode, min(st.st_size, 0xFFFFFFFF), int(st.st_mtime), len(raw))
            buf += raw
        buf += struct.pack("<5I", P.S_DONE, 0, 0, 0, 0)
        stream.write(bytes(buf))

    def _sync_send(self, stream: Stream, spec: str) -> None:
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "33188"
        error = ""
        tmp = None
        fh = None
        try:
            mode = int(mode_text)
            if stat_mod.S_ISLNK(mode):
                raise SandboxError(1, "symlinks are not supported", path)
            host = self.phone.sandbox.check_writable(path)
            if host.is_dir():
                raise SandboxError(21, "Is a directory", path)
            host.parent.mkdir(parents=True, exist_ok=True)
            tmp = host.with_name(f".{host.name}.sync-{os.getpid()}-{id(stream)}")
            fh = open(tmp, "wb")  # noqa: SIM115
        except (OSError, SandboxError, ValueError) as exc:
            error = f"couldn't create file: {getattr(exc, 'strerror', None) or exc}"
        try:
            while True:
                sid, value = struct.unpack("<2I", stream.read_exact(8))
                if sid == P.S_DATA:
                    if value > P.SYNC_DATA_MAX_BYTES:
                        error = error or "data chunk too large"
                    chunk = stream.read_exact(value)
                    if self.phone.faults.corrupt_push and fh is not None and fh.tell() == 0 and chunk:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    if fh is not None and not error:
                        fh.write(chunk)
                elif sid == P.S_DONE:
                    if fh is not None:
                        fh.close()
                        fh = None
                    if not error and tmp is not None:
                        os.chmod(tmp, mode & 0o7777 or 0o644)
                        if value:
                            os.utime(tmp, (value, value))
                        os.replace(tmp, host)
                        tmp = None
                        stream.write(P.sync_header(P.S_OKAY, 0))
                    else:
                        msg = error.encode()
                        stream.write(P.sync_header(P.S_FAIL, len(msg), msg))
                    return
                else:
                    msg = b"invalid data message"
                    stream.write(P.sync_header(P.S_FAIL, len(msg), msg))
                    raise _Closed()
        finally:
            if fh is not None:
                fh.close()
            if tmp is not None:
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def _sync_recv(self, stream: Stream, path: str) -> None:
        try:
            host = self.phone.sandbox.host_path(path)
            fh = open(host, "rb")  # noqa: SIM115
        except (OSError, SandboxError) as exc:
            msg = f"open failed: {getattr(exc, 'strerror', None) or exc}".encode()
            stream.write(P.sync_header(P.S_FAIL, len(msg), msg))
            return
        with fh:
            for block in iter(lambda: fh.read(P.SYNC_DATA_MAX_BYTES), b""):
                stream.write(P.sync_header(P.S_DATA, len(block), block))
        stream.write(P.sync_header(P.S_DONE, 0))


class VirtualPhone:
    """A virtual phone serving ADB on ``127.0.0.1:port`` (port 0 picks a free one).

    Use as a context manager, or :meth:`start`/:meth:`stop`.  ``authorized_keys`` are ``adbkey.pub``
    paths accepted as if the user had allowed them; ``faults`` injects failures (see :class:`FaultConfig`).
    """

    def __init__(self, root: Path | str, profile: str | DeviceProfile = "virtual-nexus4", port: int = 0,
                 accept_new_keys: bool = False, authorized_keys: tuple[Path | str, ...] = (),
                 serial: str | None = None, reboot_s: float = 1.0):
        prof = load_profile(profile) if isinstance(profile, str) else profile
        self.state = PhoneState(prof, Path(root), accept_new_keys=accept_new_keys, serial=serial)
        for k in authorized_keys:
            self.state.authorize_key_file(Path(k))
        self.state.on_drop_all = self.drop_all
        self.reboot_s = reboot_s
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- public
    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("virtual phone not started")
        return self._sock.getsockname()[1]

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, what ``adb connect`` and :func:`device.adb.connect` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def root(self) -> Path:
        return self.state.root

    @property
    def timeline_path(self) -> Path:
        return self.state.timeline.path

    def set_faults(self, faults: FaultConfig) -> None:
        self.state.set_faults(faults)

    def start(self) -> VirtualPhone:
        """Bind and start serving in a background thread."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._requested_port))
        except OSError as exc:
            sock.close()
            from device.errors import InputError

            raise InputError(f"virtual phone: cannot listen on 127.0.0.1:{self._requested_port}: "
                             f"{exc.strerror or exc}") from None
        sock.listen(16)
        sock.settimeout(0.25)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="vphone-accept")
        self._thread.start()
        log.info("virtual phone %s (%s) on %s, root %s", self.state.serial, self.state.profile.name,
                 self.address, self.state.root)
        return self

    def stop(self) -> None:
        """Stop accepting, drop every link, join the server thread."""
        self._stopping.set()
        self.drop_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def wait(self) -> None:
        """Block until :meth:`stop` (for the CLI)."""
        while not self._stopping.wait(0.5):
            pass

    def drop_all(self) -> None:
        """Drop every live link (a pulled cable, or a reboot)."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.kill()

    def __enter__(self) -> VirtualPhone:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals
    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                client, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if time.monotonic() < self.state.rebooting_until_mono_s:
                client.close()  # rebooting: nobody home
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(None)
            conn = Connection(self, client, f"{addr[0]}:{addr[1]}")
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=conn.serve, daemon=True, name="vphone-conn").start()

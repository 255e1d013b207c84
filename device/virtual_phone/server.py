"""The virtual phone's adbd: the ADB wire protocol over TCP on 127.0.0.1.

:class:`VirtualPhone` listens and hands each client to a :class:`~.connection.Connection` (one thread
each, at most ``MAX_CONNECTIONS`` at once and ``MAX_UNAUTHENTICATED`` of them still in the handshake, the
oldest of which is dropped to make room; when every slot is authenticated, a new link is closed on accept).
Streams: ``OPEN``/``OKAY``/``WRTE``/``CLSE`` with one-packet-in-flight flow control both ways
(:mod:`.stream`).  Services: ``shell:`` (v1: stdout and stderr merged), ``shell,v2,...:`` (the shell
protocol with exit codes), ``exec:``, ``sync:`` (:mod:`.filesync`), ``reboot:``, ``root:`` (:mod:`.services`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from device.profiles import DeviceProfile, load_profile
from device.virtual_phone.connection import Connection
from device.virtual_phone.phone import FaultConfig, PhoneState

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
#: streams (service threads) open at once on one phone, over all links
MAX_SERVICES = 128
#: links still in the handshake (at most ``connection.AUTH_TIMEOUT_S`` each); a new link evicts the oldest
#: of them, so a client without a key cannot take the slots of those with one
MAX_UNAUTHENTICATED = 16


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
        self.services = threading.BoundedSemaphore(MAX_SERVICES)

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
        sock.listen(64)
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

    def _admit(self) -> bool:
        """Room for one more link?  The oldest link still in the handshake makes room when needed."""
        with self._lock:
            live = [c for c in self._conns if c.alive]  # a killed link may not have left the set yet
            pending = sorted((c for c in live if not c.authed), key=lambda c: c.opened_mono_s)
            full = len(live) >= MAX_CONNECTIONS
        if len(pending) >= MAX_UNAUTHENTICATED or (full and pending):
            pending[0].kill()  # a client without a key cannot hold the slots of those with one
            return True
        return not full

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
            if not self._admit():
                log.warning("virtual phone: %d connections open; refusing %s:%s", MAX_CONNECTIONS, *addr[:2])
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(None)
            conn = Connection(self, client, f"{addr[0]}:{addr[1]}")
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=conn.serve, daemon=True, name="vphone-conn").start()

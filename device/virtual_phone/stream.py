"""One ADB stream of the virtual phone, with adbd's flow control in both directions.

Input: a ``WRTE`` from the client is acknowledged with ``OKAY`` only once the service has taken it
(:meth:`Stream.read_exact`, :meth:`Stream.read_some`), so a client that writes into a service that does
not read (``shell:sleep 60``) is held back instead of filling the phone's memory; a client that sends
more than ``INBOX_MAX_PACKETS`` unacknowledged packets breaks the protocol and loses the link.
Output: packets of up to the peer's max payload, one in flight, each waiting for the client's ``OKAY``
(``WRTE_ACK_TIMEOUT_S`` at most, then the stream counts as gone).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

from device.virtual_phone import protocol as P

WRTE_ACK_TIMEOUT_S = 60.0
INBOX_MAX_PACKETS = 2


class Closed(Exception):
    """The stream or the link is gone."""


class Link(Protocol):
    """What a stream needs of its link (``connection.Connection``)."""

    alive: bool
    max_payload: int

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None: ...

    def forget(self, local_id: int) -> None: ...


class Stream:
    """One ADB stream: an input queue fed by ``WRTE`` and an output pump that respects flow control."""

    def __init__(self, conn: Link, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._inbox: collections.deque[bytes] = collections.deque()
        self._in_closed = False
        self._inbuf = bytearray()
        self.cancel = threading.Event()
        self._cv = threading.Condition()
        self._out = bytearray()
        self._ready = True
        self.closed_local = False

    # --- input
    def deliver(self, data: bytes) -> bool:
        """Queue a ``WRTE`` payload; False when the client ignored flow control (too many unacknowledged)."""
        with self._cv:
            if len(self._inbox) >= INBOX_MAX_PACKETS:
                return False
            self._inbox.append(data)
            self._cv.notify_all()
        return True

    def remote_closed(self) -> None:
        with self._cv:
            self.cancel.set()
            self._in_closed = True
            self._cv.notify_all()

    def _take(self, timeout_s: float | None) -> bytes | None:
        """The next input packet (acknowledged now that it is consumed); b"" on timeout, None once closed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while not self._inbox:
                if self._in_closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return b""
                self._cv.wait(timeout=0.5 if left is None else min(left, 0.5))
            chunk = self._inbox.popleft()
        self.conn.send(P.OKAY, self.local_id, self.remote_id)
        return chunk

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` input bytes (requests may span packets); raises :class:`Closed`."""
        while len(self._inbuf) < n:
            chunk = self._take(None)
            if chunk is None:
                raise Closed()
            self._inbuf += chunk
        data = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        return data

    def read_some(self, timeout_s: float | None = None) -> bytes | None:
        """Whatever input is available (b"" after ``timeout_s`` without any, None once closed)."""
        if self._inbuf:
            data = bytes(self._inbuf)
            self._inbuf.clear()
            return data
        return self._take(timeout_s)

    # --- output
    def okay(self) -> None:
        with self._cv:
            self._ready = True
            self._cv.notify_all()

    def write(self, data: bytes) -> None:
        """Send output in packets of up to the peer's max payload, one in flight (blocks on flow control)."""
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
                        raise Closed()
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
        if self.closed_local:
            return
        self.closed_local = True
        try:
            self.drain()
        except Closed:
            pass
        if self.conn.alive:
            self.conn.send(P.CLSE, self.local_id, self.remote_id)
        self.conn.forget(self.local_id)

"""One ADB client link of the virtual phone: the handshake, packet demultiplexing and opening services.

Handshake ``CNXN`` -> ``AUTH`` token -> signature check against the known keys (``<root>/adb_keys``)
-> ``CNXN`` with the device banner; unknown public keys are accepted only with ``accept_new_keys``.
A link that has not authenticated within ``AUTH_TIMEOUT_S`` is closed; a packet over
``protocol.MAX_PAYLOAD_BYTES`` or a client that ignores flow control ends the link; at most
``MAX_STREAMS`` streams are open on one link and ``server.MAX_SERVICES`` on the phone (more ``OPEN``s
are refused with ``CLSE``).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from typing import Any

from device.virtual_phone import protocol as P
from device.virtual_phone.cmdbase import Cancelled
from device.virtual_phone.filesync import serve_sync
from device.virtual_phone.phone import PhoneState
from device.virtual_phone.services import serve_reboot, serve_root, serve_shell
from device.virtual_phone.stream import Closed, Stream

log = logging.getLogger(__name__)

FEATURES = "shell_v2,cmd,fixed_push_mkdir"
AUTH_TIMEOUT_S = 10.0
MAX_STREAMS = 32


class Connection:
    """One ADB client link: the handshake, packet demultiplexing and the services."""

    def __init__(self, server: Any, sock: socket.socket, peer: str):
        """``server`` is the accepting ``VirtualPhone`` (its ``reboot_s`` and ``_forget``; typed loosely so that
        the server module, which imports this one, is not imported back)."""
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
        self.opened_mono_s = time.monotonic()
        self._auth_deadline_mono_s = self.opened_mono_s + AUTH_TIMEOUT_S

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
        if not self.authed:  # the whole handshake, not each read, has AUTH_TIMEOUT_S
            left = self._auth_deadline_mono_s - time.monotonic()
            if left <= 0:
                log.info("virtual phone: %s did not authenticate within %g s; closing", self.peer, AUTH_TIMEOUT_S)
                raise Closed()
            self.sock.settimeout(left)
        data = self._rx.read(n) if n else b""
        if len(data) < n:
            raise Closed()
        self._rx_bytes += n
        limit = self.phone.faults.drop_after_bytes
        if limit is not None and self._rx_bytes >= limit and self.phone.take_drop():
            log.info("fault: dropping %s after %d bytes", self.peer, self._rx_bytes)
            raise Closed()
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
                if hdr.length > P.MAX_PAYLOAD_BYTES:
                    raise P.ProtocolError(f"payload of {hdr.length} bytes is too large")
                data = self._read(hdr.length)
                if self.version < P.A_VERSION_SKIP_CHECKSUM and hdr.crc != P.checksum(data):
                    raise P.ProtocolError(f"{hdr.name}: payload checksum mismatch")
                self._dispatch(hdr, data)
        except (Closed, OSError):
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
            if s is not None and not s.deliver(data):  # acknowledged once the service takes it
                raise P.ProtocolError("WRTE without waiting for OKAY (flow control)")
        elif cmd == P.OKAY:
            s = self._streams.get(hdr.arg1)
            if s is not None:
                s.okay()
        elif cmd == P.CLSE:
            s = self._streams.pop(hdr.arg1, None)
            if s is not None:
                s.remote_closed()
                if not s.closed_local:
                    s.closed_local = True
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
        self.sock.settimeout(None)
        props = self.phone.props
        banner = (f"device::ro.product.name={props.get('ro.product.name', '')};"
                  f"ro.product.model={props.get('ro.product.model', '')};"
                  f"ro.product.device={props.get('ro.product.device', '')};features={FEATURES}")
        self.send(P.CNXN, self.version, P.MAX_PAYLOAD_BYTES, banner.encode())

    # --- services
    def _open(self, remote_id: int, service: str) -> None:
        phone = self.phone
        handler = None
        if service.startswith("shell"):
            head, _, cmd = service.partition(":")
            opts = head.split(",")[1:]
            handler = functools.partial(serve_shell, phone, cmd=cmd, v2="v2" in opts,
                                        pty=("raw" not in opts) and not cmd)
        elif service.startswith("exec:"):
            handler = functools.partial(serve_shell, phone, cmd=service[5:], v2=False, pty=False)
        elif service.startswith("sync:"):
            handler = functools.partial(serve_sync, phone)
        elif service.startswith("reboot:"):
            handler = functools.partial(serve_reboot, phone, reboot_s=self.server.reboot_s)
        elif service.startswith("root:") or service.startswith("unroot:"):
            handler = functools.partial(serve_root, phone)
        if handler is None or len(self._streams) >= MAX_STREAMS or not self.server.services.acquire(blocking=False):
            if handler is not None:
                log.info("virtual phone: %s: too many streams open; refusing another", self.peer)
            self.send(P.CLSE, 0, remote_id)
            return
        local_id = self._next_id
        self._next_id += 1
        stream = Stream(self, local_id, remote_id)
        self._streams[local_id] = stream
        self.send(P.OKAY, local_id, remote_id)
        threading.Thread(target=self._run_service, args=(handler, stream), daemon=True,
                         name=f"vphone-{service.split(':')[0][:16]}").start()

    def _run_service(self, handler, stream: Stream) -> None:
        try:
            handler(stream)
        except (Closed, Cancelled):
            pass
        except Exception:  # a bug in a service must not take the phone down
            log.exception("virtual phone: service failed")
        finally:
            try:
                stream.close()
            finally:
                self.server.services.release()

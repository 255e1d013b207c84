"""The virtual phone's ``sync:`` service: STAT, LIST, SEND, RECV, QUIT (requests may span packets).

Safe by construction: a path is at most ``SYNC_PATH_MAX`` bytes; a ``DATA`` chunk over 64 KiB
(``protocol.SYNC_DATA_MAX_BYTES``) is a protocol error answered with ``FAIL`` before its bytes are read;
a pushed file keeps only safe mode bits (:func:`sandbox.safe_mode`: no setuid/setgid/sticky, no
group/other write), since it is a host file of the user running the phone; ``FAIL`` texts name device
paths only.
"""

from __future__ import annotations

import os
import stat as stat_mod
import struct

from device.virtual_phone import protocol as P
from device.virtual_phone.phone import PhoneState
from device.virtual_phone.sandbox import SandboxError, safe_mode
from device.virtual_phone.stream import Closed, Stream

SYNC_PATH_MAX = 1024
DEFAULT_FILE_MODE = 0o644


def _fail(stream: Stream, phone: PhoneState, text: str) -> None:
    msg = phone.sandbox.scrub(text).encode()
    stream.write(P.sync_header(P.S_FAIL, len(msg), msg))


def serve_sync(phone: PhoneState, stream: Stream) -> None:
    """Answer sync requests until ``QUIT`` or the stream closes."""
    while True:
        sid, length = struct.unpack("<2I", stream.read_exact(8))
        if sid == P.S_QUIT:
            return
        if length > SYNC_PATH_MAX:
            _fail(stream, phone, "path too long")
            return
        path = stream.read_exact(length).decode("utf-8", "replace")
        handler = _REQUESTS.get(sid)
        if handler is None:
            _fail(stream, phone, f"unknown sync request 0x{sid:08x}")
            return
        handler(phone, stream, path)


def _stat(phone: PhoneState, stream: Stream, path: str) -> None:
    try:
        st = phone.sandbox.host_path(path).stat()
        stream.write(struct.pack("<4I", P.S_STAT, st.st_mode, min(st.st_size, 0xFFFFFFFF), int(st.st_mtime)))
    except (OSError, SandboxError):
        stream.write(struct.pack("<4I", P.S_STAT, 0, 0, 0))


def _list(phone: PhoneState, stream: Stream, path: str) -> None:
    try:
        host = phone.sandbox.host_path(path)
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
        if len(buf) >= P.SYNC_DATA_MAX_BYTES:  # bounded: a huge directory streams out in 64 KiB pieces
            stream.write(bytes(buf))
            buf.clear()
    buf += struct.pack("<5I", P.S_DONE, 0, 0, 0, 0)
    stream.write(bytes(buf))


def _send(phone: PhoneState, stream: Stream, spec: str) -> None:
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, str(stat_mod.S_IFREG | DEFAULT_FILE_MODE)
    error = ""
    tmp = host = None
    fh = None
    mode = DEFAULT_FILE_MODE
    try:
        mode = int(mode_text)
        if stat_mod.S_ISLNK(mode):
            raise SandboxError(1, "symlinks are not supported", path)
        host = phone.sandbox.check_writable(path)
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
                    _fail(stream, phone, f"data chunk of {value} bytes is over {P.SYNC_DATA_MAX_BYTES}")
                    raise Closed()
                chunk = stream.read_exact(value)
                if phone.faults.corrupt_push and fh is not None and fh.tell() == 0 and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if fh is not None and not error:
                    fh.write(chunk)
            elif sid == P.S_DONE:
                if fh is not None:
                    fh.close()
                    fh = None
                if not error and tmp is not None and host is not None:
                    os.chmod(tmp, safe_mode(mode & 0o7777) or DEFAULT_FILE_MODE)
                    if value:
                        os.utime(tmp, (value, value))
                    os.replace(tmp, host)
                    tmp = None
                    stream.write(P.sync_header(P.S_OKAY, 0))
                else:
                    _fail(stream, phone, error)
                return
            else:
                _fail(stream, phone, "invalid data message")
                raise Closed()
    finally:
        if fh is not None:
            fh.close()
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass


def _recv(phone: PhoneState, stream: Stream, path: str) -> None:
    try:
        host = phone.sandbox.host_path(path)
        fh = open(host, "rb")  # noqa: SIM115
    except (OSError, SandboxError) as exc:
        _fail(stream, phone, f"open failed: {getattr(exc, 'strerror', None) or exc}")
        return
    with fh:
        for block in iter(lambda: fh.read(P.SYNC_DATA_MAX_BYTES), b""):
            stream.write(P.sync_header(P.S_DATA, len(block), block))
    stream.write(P.sync_header(P.S_DONE, 0))


_REQUESTS = {P.S_STAT: _stat, P.S_LIST: _list, P.S_SEND: _send, P.S_RECV: _recv}

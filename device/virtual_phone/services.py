"""The virtual phone's stream services besides sync: ``shell:`` (v1 and v2), ``exec:``, ``reboot:``, ``root:``.

``shell:`` v1 merges stdout and stderr (``\\n`` -> ``\\r\\n`` on a pty); ``shell,v2`` frames them and ends
with the exit status.  The interactive shell reads lines of at most ``LINE_MAX_BYTES``; stderr is scrubbed
of the phone's host paths before it leaves.
"""

from __future__ import annotations

import threading

from device.virtual_phone import protocol as P
from device.virtual_phone.cmdbase import Output
from device.virtual_phone.phone import PhoneState
from device.virtual_phone.shell import Shell
from device.virtual_phone.stream import Closed, Stream

LINE_MAX_BYTES = 64 << 10


def serve_shell(phone: PhoneState, stream: Stream, cmd: str, v2: bool, pty: bool) -> None:
    """Run ``cmd`` (or an interactive session when empty) and send its output (and status with v2)."""
    shell = Shell(phone, stream.cancel)
    scrub = phone.sandbox.scrub
    if v2:
        def packet(kind: int):
            return lambda b: stream.write(P.SHELL_V2_HEADER.pack(kind, len(b)) + b) if b else None

        to_out, to_err = packet(P.SHELL_STDOUT), packet(P.SHELL_STDERR)
    else:
        def raw(b: bytes) -> None:
            stream.write(b.replace(b"\n", b"\r\n") if pty else b)

        to_out = to_err = raw
    out = Output(to_out, lambda b: to_err(scrub(b.decode("utf-8", "replace")).encode()))
    if cmd.strip():
        status = shell.run(cmd, out)
    else:
        status = _interactive(phone, stream, shell, out, v2, pty)
    if v2:
        stream.write(P.SHELL_V2_HEADER.pack(P.SHELL_EXIT, 1) + bytes([status & 0xFF]))


def _interactive(phone: PhoneState, stream: Stream, shell: Shell, out: Output, v2: bool, pty: bool) -> int:
    prompt = ("# " if phone.root_user else "$ ") if pty else ""
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
                if n > P.MAX_PAYLOAD_BYTES:
                    raise Closed()  # not the shell protocol
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
        if b"\n" not in lines and len(lines) > LINE_MAX_BYTES:
            lines.clear()
            out.error(f"/system/bin/sh: line over {LINE_MAX_BYTES} bytes ignored\n")
            out.write(prompt)
        while b"\n" in lines:
            line, _, rest = bytes(lines).partition(b"\n")
            lines = bytearray(rest)
            if len(line) > LINE_MAX_BYTES:
                out.error(f"/system/bin/sh: line over {LINE_MAX_BYTES} bytes ignored\n")
                out.write(prompt)
                continue
            text = line.decode("utf-8", "replace").strip()
            if text in ("exit", "logout"):
                return shell.status
            if text:
                shell.run(text, out)
                if text.split()[0] == "exit":
                    return shell.status
            out.write(prompt)


def serve_reboot(phone: PhoneState, stream: Stream, reboot_s: float) -> None:
    stream.drain()
    threading.Timer(0.05, phone.reboot, kwargs={"duration_s": reboot_s}).start()


def serve_root(phone: PhoneState, stream: Stream) -> None:
    if phone.root_user:
        stream.write(b"adbd is already running as root\n")
    else:
        stream.write(b"adbd cannot run as root in production builds\n")

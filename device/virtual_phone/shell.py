"""The virtual phone's ``/system/bin/sh``: runs parsed command lists over the sandbox.

Parsing is :mod:`.parser`; the commands are Python functions registered in :mod:`.cmdbase` by the
``cmd_*`` modules (never host processes); an unknown one answers ``sh: X: not found`` with status 127.
``*``/``?`` globbing stays inside the sandbox.  Everything is bounded: pipes (:class:`BoundedBuffer`),
files read into memory, background jobs (``PhoneState.jobs``), glob results; a command that fails in an
unexpected way ends with status 1 and an error line (device paths only), never a dropped session.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from device.virtual_phone import commands
from device.virtual_phone.cmdbase import (
    RUNNER_NAME,
    BoundedBuffer,
    Cancelled,
    Output,
    OutputLimit,
    ShellExit,
    read_limited,
)
from device.virtual_phone.parser import AndOr, ShellSyntaxError, Simple, Word, parse
from device.virtual_phone.sandbox import DEV_NULL, SandboxError

if TYPE_CHECKING:  # pragma: no cover
    from device.virtual_phone.phone import PhoneState

log = logging.getLogger(__name__)

GLOB_MAX_MATCHES = 10_000

__all__ = ["Shell", "Output", "Cancelled", "ShellExit", "ShellSyntaxError", "parse", "RUNNER_NAME"]


class Shell:
    """One shell session on the phone (cwd, ``$?``, environment, cancellation)."""

    def __init__(self, phone: PhoneState, cancel: threading.Event | None = None):
        self.phone = phone
        self.cwd = "/"
        self.status = 0
        self.env: dict[str, str] = {"PATH": "/sbin:/vendor/bin:/system/sbin:/system/bin:/system/xbin",
                                    "HOME": "/", "USER": "root" if phone.root_user else "shell"}
        self.cancel = cancel or threading.Event()

    # -- helpers used by commands
    def host(self, path: str):
        return self.phone.sandbox.host_path(path, self.cwd)

    def writable(self, path: str):
        return self.phone.sandbox.check_writable(path, self.cwd)

    def host_or_none(self, path: str):
        """The host path of ``path``, or None where it lies outside the sandbox."""
        try:
            return self.host(path)
        except SandboxError:
            return None

    def subshell(self, detached: bool = False) -> Shell:
        """A child shell with this one's cwd and environment; ``detached`` ones outlive the ADB session."""
        sub = Shell(self.phone, None if detached else self.cancel)
        sub.cwd, sub.env = self.cwd, dict(self.env)
        return sub

    def scrub(self, text: str) -> str:
        """Device-visible text: host paths of the phone replaced by device paths."""
        return self.phone.sandbox.scrub(text)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising :class:`Cancelled`) when the session is cancelled."""
        if self.cancel.wait(max(0.0, seconds)):
            raise Cancelled()

    def run(self, text: str, out: Output, stdin: bytes = b"") -> int:
        """Run command text; returns the exit status of the last command."""
        try:
            lists = parse(text)
        except ShellSyntaxError as exc:
            out.error(f"/system/bin/sh: syntax error: {exc}\n")
            self.status = 2
            return 2
        try:
            for ao in lists:
                if ao.background:
                    if not self.phone.jobs.acquire(blocking=False):
                        out.error("/system/bin/sh: can't fork: Try again\n")
                        self.status = 1
                        continue
                    job = self.subshell(detached=True)  # not tied to this session: survives the link dropping
                    sink = Output(_discard, _discard)
                    threading.Thread(target=job._run_background, args=(ao, sink), daemon=True,
                                     name="vphone-bg").start()
                    self.status = 0
                else:
                    self._run_andor(ao, out, stdin)
        except ShellExit as ex:
            self.status = ex.status
        return self.status

    def _run_background(self, ao: AndOr, sink: Output) -> None:
        try:
            self._run_andor(ao, sink, b"")
        except (ShellExit, Cancelled):
            pass
        except Exception:  # a background job must never take the phone down
            log.exception("virtual phone: background job failed")
        finally:
            self.phone.jobs.release()

    def _run_andor(self, ao: AndOr, out: Output, stdin: bytes) -> int:
        status = self._run_pipeline(ao.pipelines[0], out, stdin)
        for conn, pipe in zip(ao.connectors, ao.pipelines[1:], strict=True):
            if (conn == "&&" and status == 0) or (conn == "||" and status != 0):
                status = self._run_pipeline(pipe, out, stdin)
        self.status = status
        return status

    def _run_pipeline(self, pipe: list[Simple], out: Output, stdin: bytes) -> int:
        data = stdin
        status = 0
        for k, cmd in enumerate(pipe):
            if k == len(pipe) - 1:
                status = self._run_simple(cmd, out, data)
            else:
                buf = BoundedBuffer()
                status = self._run_simple(cmd, Output(buf.write, out.err), data)
                if buf.overflowed:  # the pipe broke: the pipeline fails here (the stage said why)
                    self.status = 1
                    return 1
                data = bytes(buf.data)
        self.status = status
        return status

    def expand(self, word: Word) -> list[str]:
        """Expand variables and globs; unquoted empty expansions vanish."""
        text, glob, quoted_any = [], False, False
        for kind, t, quoted in word.parts:
            quoted_any |= quoted
            if kind == "var":
                text.append(self._var(t))
            else:
                text.append(t)
                glob |= (not quoted) and any(ch in t for ch in "*?[")
        s = "".join(text)
        if glob:
            matches = self._glob(s)
            if matches:
                return matches
        if not s and not quoted_any:
            return []
        return [s]

    def _var(self, name: str) -> str:
        if name == "?":
            return str(self.status)
        if name == "$":
            return str(os.getpid())
        if name == "#":
            return "0"
        return self.env.get(name, "")

    def _glob(self, pattern: str) -> list[str]:
        base = pattern if pattern.startswith("/") else posixpath.join(self.cwd, pattern)
        parts = [p for p in base.split("/") if p]
        paths = ["/"]
        for part in parts:
            nxt = []
            for p in paths:
                if any(ch in part for ch in "*?["):
                    try:
                        names = sorted(os.listdir(self.phone.sandbox.host_path(p)))
                    except OSError:
                        continue
                    nxt += [posixpath.join(p, nm) for nm in names if fnmatch.fnmatchcase(nm, part)
                            and not nm.startswith(".")]
                else:
                    nxt.append(posixpath.join(p, part))
            paths = nxt[:GLOB_MAX_MATCHES]
        found = []
        for p in paths:
            try:
                if self.phone.sandbox.host_path(p).exists():
                    found.append(p if pattern.startswith("/") else posixpath.relpath(p, self.cwd))
            except SandboxError:
                pass
        return found

    def _run_simple(self, cmd: Simple, out: Output, stdin: bytes) -> int:
        if self.cancel.is_set():
            raise Cancelled()
        argv: list[str] = []
        for w in cmd.words:
            argv += self.expand(w)
        out_fn, err_fn = out.out, out.err
        files = []
        written: list[str] = []
        target = "?"
        try:
            for r in cmd.redirects:
                if r.mode == ">&":
                    if r.fd == 2 and r.target == 1:
                        err_fn = out_fn
                    elif r.fd == 1 and r.target == 2:
                        out_fn = err_fn
                    continue
                target = " ".join(self.expand(r.target))  # type: ignore[arg-type]
                if r.mode == "<":
                    if target == DEV_NULL:
                        stdin = b""
                    else:
                        stdin = read_limited(self.host(target))
                    continue
                if target == DEV_NULL:
                    fn = _discard
                else:
                    host = self.writable(target)
                    written.append(self.phone.sandbox.normalize(target, self.cwd))
                    if host.is_dir():
                        raise IsADirectoryError(21, "Is a directory", target)
                    fh = open(host, "ab" if r.mode == ">>" else "wb")  # noqa: SIM115
                    files.append(fh)
                    fn = _file_writer(fh)
                if r.fd == 2:
                    err_fn = fn
                else:
                    out_fn = fn
        except (OSError, SandboxError, OutputLimit) as exc:
            for fh in files:
                fh.close()
            name = getattr(exc, "filename", None) or target
            out.error(self.scrub(f"/system/bin/sh: can't create {name}: {getattr(exc, 'strerror', None) or exc}\n"))
            self.status = 1
            return 1
        try:
            if not argv:
                self.status = 0
                return 0
            io = Output(out_fn, err_fn)
            status = self.exec(argv, io, stdin)
        finally:
            for fh in files:
                fh.close()
            for path in written:
                self.phone.file_written(path)
        self.status = status
        return status

    def exec(self, argv: list[str], out: Output, stdin: bytes = b"") -> int:
        """Run one command (builtin or a sandbox file) with already-expanded arguments."""
        name = argv[0]
        fn = commands.lookup(self.phone, name)
        if "/" in name:
            host = self.host_or_none(name)
            if host is None or not host.is_file():
                out.error(f"/system/bin/sh: {name}: not found\n")
                return 127
            if not os.access(host, os.X_OK) or not (host.stat().st_mode & 0o111):
                out.error(f"/system/bin/sh: {name}: can't execute: Permission denied\n")
                return 126
            fn = commands.lookup(self.phone, RUNNER_NAME) if posixpath.basename(name) == RUNNER_NAME else None
            if fn is None:
                out.error(f"/system/bin/sh: {name}: can't execute: Exec format error\n")
                return 126
        if fn is None:
            out.error(f"/system/bin/sh: {name}: not found\n")
            return 127
        try:
            return int(fn(self, argv, stdin, out))
        except (Cancelled, ShellExit):
            raise
        except SandboxError as exc:
            out.error(f"{name}: {exc.filename}: {exc.strerror}\n")
            return 1
        except OSError as exc:
            fname = exc.filename if exc.filename else ""
            try:
                fname = self.phone.sandbox.device_path(fname) if fname and os.path.isabs(fname) else fname
            except ValueError:
                pass
            text = f"{name}: {fname}: {exc.strerror or exc}\n" if fname else f"{name}: {exc.strerror or exc}\n"
            out.error(self.scrub(text))
            return 1
        except OutputLimit as exc:
            out.error(f"{name}: {exc}\n")
            return 1
        except Exception as exc:  # noqa: BLE001 - a command's bug ends the command, never the session
            log.warning("virtual phone: %s failed: %s: %s", name, type(exc).__name__, exc)
            out.error(self.scrub(f"{name}: {type(exc).__name__}: {exc}\n"))
            return 1


def _discard(_b: bytes) -> None:
    return None


def _file_writer(fh) -> Callable[[bytes], None]:
    def write(b: bytes) -> None:
        fh.write(b)
        fh.flush()

    return write

"""The virtual phone's ``/system/bin/sh``: a small POSIX-like shell over the sandbox.

Grammar: lists separated by newline, ``;``, ``&&``, ``||`` and ``&`` (background, survives the ADB link);
pipelines with ``|``; redirections ``> >> < 2> 2>> 2>&1 >&2``; single/double quotes and backslashes;
``$?``, ``$VAR``, ``${VAR}`` expansion; ``*``/``?`` globbing inside the sandbox.  Commands are Python
functions (never host processes); an unknown one answers ``sh: X: not found`` with status 127.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from device.virtual_phone.sandbox import DEV_NULL, SandboxError

if TYPE_CHECKING:  # pragma: no cover
    from device.virtual_phone.phone import PhoneState

log = logging.getLogger(__name__)

OPERATORS = ("&&", "||", ";;", ";", "&", "|", "\n")
RUNNER_NAME = "executor_runner"


class ShellSyntaxError(Exception):
    """Unparsable command text (``sh: syntax error: ...``)."""


# ---------------------------------------------------------------- tokens and words


@dataclass
class Word:
    """A word as a list of segments: ``("lit", text, quoted)`` or ``("var", name, quoted)``."""

    parts: list[tuple[str, str, bool]] = field(default_factory=list)

    def add(self, kind: str, text: str, quoted: bool) -> None:
        self.parts.append((kind, text, quoted))

    @property
    def literal(self) -> str | None:
        """The text when the word has no expansions and no quotes (used for operator-like words)."""
        if all(k == "lit" and not q for k, _, q in self.parts):
            return "".join(t for _, t, _ in self.parts)
        return None


@dataclass
class Redirect:
    fd: int
    mode: str  # ">", ">>", "<", ">&"
    target: Word | int


@dataclass
class Simple:
    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class AndOr:
    """Pipelines joined by ``&&``/``||``; ``background`` when it ended with ``&``."""

    pipelines: list[list[Simple]]
    connectors: list[str]
    background: bool = False


_VAR_RE = re.compile(r"\?|[A-Za-z_][A-Za-z0-9_]*|[0-9#$!]")


def tokenize(text: str) -> list[Word | str]:
    """Words (as :class:`Word`) and operator strings (``;``, ``&&``, ``|``, ``>``, ``2>&1`` ...)."""
    out: list[Word | str] = []
    i, n = 0, len(text)
    word: Word | None = None

    def flush():
        nonlocal word
        if word is not None:
            out.append(word)
            word = None

    def var_at(j: int, quoted: bool) -> int:
        nonlocal word
        if word is None:
            word = Word()
        if j + 1 < n and text[j + 1] == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise ShellSyntaxError("bad substitution")
            word.add("var", text[j + 2:end], quoted)
            return end + 1
        m = _VAR_RE.match(text, j + 1)
        if not m:
            word.add("lit", "$", quoted)
            return j + 1
        word.add("var", m.group(0), quoted)
        return m.end()

    while i < n:
        c = text[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "#" and word is None:
            while i < n and text[i] != "\n":
                i += 1
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            word = word or Word()
            word.add("lit", text[i + 1:i + 2], True)
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            word = word or Word()
            word.add("lit", text[i + 1:end], True)
            i = end + 1
        elif c == '"':
            word = word or Word()
            word.add("lit", "", True)
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated quoted string")
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\$`\n':
                    buf.append(text[i + 1])
                    i += 2
                elif ch == "$":
                    word.add("lit", "".join(buf), True)
                    buf = []
                    i = var_at(i, True)
                else:
                    buf.append(ch)
                    i += 1
            word.add("lit", "".join(buf), True)
        elif c == "$":
            i = var_at(i, False)
        elif c in ";&|\n<>":
            # a lone digit word just before > or < is a file descriptor
            fd_prefix = ""
            if c in "<>" and word is not None and word.literal is not None and word.literal.isdigit():
                fd_prefix = word.literal
                word = None
            flush()
            for op in (">>", ">&", "&&", "||", ";;", ">", "<", ";", "&", "|", "\n"):
                if text.startswith(op, i):
                    i += len(op)
                    if op == ">&":
                        m = re.match(r"\s*([0-9])", text[i:])
                        if not m:
                            raise ShellSyntaxError("bad fd number")
                        i += m.end()
                        out.append(f"{fd_prefix or '1'}>&{m.group(1)}")
                    elif op in (">", ">>", "<"):
                        out.append(f"{fd_prefix}{op}")
                    else:
                        out.append(op)
                    break
        else:
            word = word or Word()
            j = i
            while j < n and text[j] not in " \t\\'\"$;&|\n<>":
                j += 1
            word.add("lit", text[i:j], False)
            i = j
    flush()
    return out


def parse(text: str) -> list[AndOr]:
    """Parse shell text into and-or lists."""
    tokens = tokenize(text)
    lists: list[AndOr] = []
    pipelines: list[list[Simple]] = []
    connectors: list[str] = []
    pipeline: list[Simple] = []
    cmd = Simple()
    i = 0

    def end_cmd():
        nonlocal cmd
        if not cmd.words and not cmd.redirects:
            raise ShellSyntaxError("unexpected operator")
        pipeline.append(cmd)
        cmd = Simple()

    def end_list(background: bool):
        nonlocal pipelines, connectors, pipeline
        if cmd.words or cmd.redirects:
            end_cmd()
        if pipeline:
            pipelines.append(pipeline)
        elif connectors or background:
            raise ShellSyntaxError(f"unexpected '{'&' if background else connectors[-1]}'")
        if pipelines:
            lists.append(AndOr(pipelines, connectors, background))
        pipelines, connectors, pipeline = [], [], []

    while i < len(tokens):
        t = tokens[i]
        if isinstance(t, Word):
            cmd.words.append(t)
        elif t in (";", "\n", "&"):
            end_list(background=(t == "&"))
        elif t in ("&&", "||"):
            end_cmd()
            pipelines.append(pipeline)
            pipeline = []
            connectors.append(t)
        elif t == "|":
            end_cmd()
        elif t == ";;":
            raise ShellSyntaxError("unexpected ';;'")
        elif ">&" in t:
            fd, target = t.split(">&")
            cmd.redirects.append(Redirect(int(fd), ">&", int(target)))
        else:  # > >> < with optional fd prefix
            m = re.fullmatch(r"([0-9]?)(>>|>|<)", t)
            if not m or i + 1 >= len(tokens) or not isinstance(tokens[i + 1], Word):
                raise ShellSyntaxError(f"unexpected {'newline' if i + 1 >= len(tokens) else tokens[i + 1]!r}")
            fd = int(m.group(1)) if m.group(1) else (0 if m.group(2) == "<" else 1)
            cmd.redirects.append(Redirect(fd, m.group(2), tokens[i + 1]))  # type: ignore[arg-type]
            i += 1
        i += 1
    if connectors and not (cmd.words or cmd.redirects) and not pipeline:
        raise ShellSyntaxError(f"unexpected end of file after '{connectors[-1]}'")
    end_list(background=False)
    return lists


# ---------------------------------------------------------------- execution


class Cancelled(Exception):
    """The session ended (link dropped or stream closed) while a foreground command ran."""


class ShellExit(Exception):
    """``exit N``: stop this shell (not its parent) with status N."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


@dataclass
class Output:
    """Where a command's stdout and stderr go (callables taking bytes)."""

    out: Callable[[bytes], None]
    err: Callable[[bytes], None]

    def write(self, text: str | bytes) -> None:
        self.out(text.encode() if isinstance(text, str) else text)

    def error(self, text: str) -> None:
        self.err(text.encode())


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
                    job = Shell(self.phone)  # not tied to this session: survives the link dropping
                    job.cwd, job.env = self.cwd, dict(self.env)
                    sink = Output(lambda b: None, lambda b: None)
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
                buf = bytearray()
                status = self._run_simple(cmd, Output(buf.extend, out.err), data)
                data = bytes(buf)
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
            paths = nxt
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
                        stdin = self.host(target).read_bytes()
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
        except (OSError, SandboxError) as exc:
            for fh in files:
                fh.close()
            name = getattr(exc, "filename", None) or "?"
            out.error(f"/system/bin/sh: can't create {name}: {exc.strerror or exc}\n")
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
        from device.virtual_phone import commands

        name = argv[0]
        if "/" in name:
            try:
                host = self.host(name)
            except SandboxError:
                host = None
            if host is None or not host.is_file():
                out.error(f"/system/bin/sh: {name}: not found\n")
                return 127
            if not os.access(host, os.X_OK) or not (host.stat().st_mode & 0o111):
                out.error(f"/system/bin/sh: {name}: can't execute: Permission denied\n")
                return 126
            if posixpath.basename(name) == RUNNER_NAME:
                return commands.executor_runner(self, argv, stdin, out)
            out.error(f"/system/bin/sh: {name}: can't execute: Exec format error\n")
            return 126
        fn = commands.lookup(self.phone, name)
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
            out.error(f"{name}: {fname}: {exc.strerror or exc}\n" if fname else f"{name}: {exc}\n")
            return 1


def _discard(_b: bytes) -> None:
    return None


def _file_writer(fh) -> Callable[[bytes], None]:
    def write(b: bytes) -> None:
        fh.write(b)
        fh.flush()

    return write

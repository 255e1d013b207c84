"""What every virtual-phone command shares: the registry, output sinks, control-flow exceptions and limits.

A command is ``fn(shell, argv, stdin, out) -> status``; ``@command("name")`` registers it and
:func:`lookup` finds it.  This module imports no command and no shell, so the shell and the command
modules both depend on it and never on each other.

Limits (the virtual phone is a safe neighbour on a shared host: every buffer is bounded):
``PIPE_MAX_BYTES`` bytes of one pipeline stage's output or of a file read whole into memory,
``IO_BLOCK_BYTES`` per streamed block, ``FIELD_WIDTH_MAX`` for ``printf`` widths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RUNNER_NAME = "executor_runner"
PIPE_MAX_BYTES = 4 << 20
IO_BLOCK_BYTES = 64 << 10
FIELD_WIDTH_MAX = 1 << 16
TOYBOX_ONLY = frozenset({"sha256sum", "sha1sum", "stat", "which", "timeout", "nproc", "seq"})

Command = Callable[[Any, list[str], bytes, "Output"], int]
_COMMANDS: dict[str, Command] = {}


class Cancelled(Exception):
    """The session ended (link dropped or stream closed) while a foreground command ran."""


class ShellExit(Exception):
    """``exit N``: stop this shell (not its parent) with status N."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class OutputLimit(Exception):
    """A pipe or an in-memory read went over :data:`PIPE_MAX_BYTES` (the command fails, the phone lives)."""


@dataclass
class Output:
    """Where a command's stdout and stderr go (callables taking bytes)."""

    out: Callable[[bytes], None]
    err: Callable[[bytes], None]

    def write(self, text: str | bytes) -> None:
        self.out(text.encode() if isinstance(text, str) else text)

    def error(self, text: str) -> None:
        self.err(text.encode())


class BoundedBuffer:
    """A pipe between two pipeline stages: at most ``limit`` bytes, then :class:`OutputLimit`."""

    def __init__(self, limit: int = PIPE_MAX_BYTES):
        self.data = bytearray()
        self.limit = limit
        self.overflowed = False

    def write(self, b: bytes) -> None:
        if len(self.data) + len(b) > self.limit:
            self.overflowed = True
            raise OutputLimit(f"pipe output over {self.limit >> 20} MiB")
        self.data += b


def command(*names: str):
    """Register a command under ``names``."""
    def deco(fn: Command) -> Command:
        for n in names:
            _COMMANDS[n] = fn
        return fn

    return deco


def exit_status(status: int) -> Command:
    """A command that does nothing and exits with ``status`` (``true``, ``false``, ``svc``)."""
    def run(sh, argv, stdin, out):
        return status

    return run


def lookup(phone, name: str) -> Command | None:
    """The command called ``name`` on this phone, or None (``not found``)."""
    if name in TOYBOX_ONLY and not phone.profile.toybox:
        return None
    return _COMMANDS.get(name)


def parse_flags(argv: list[str], known: str) -> tuple[set[str], list[str]]:
    """Leading single-letter flags out of ``known`` and the remaining arguments."""
    found, rest = set(), []
    for a in argv[1:]:
        if a.startswith("-") and len(a) > 1 and not rest and all(ch in known for ch in a[1:]):
            found.update(a[1:])
        else:
            rest.append(a)
    return found, rest


def not_found(out: Output, name: str) -> int:
    out.error(f"/system/bin/sh: {name}: not found\n")
    return 127


def read_limited(path, limit: int = PIPE_MAX_BYTES) -> bytes:
    """A whole file, refused with :class:`OutputLimit` when it is larger than ``limit``."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OutputLimit(f"file over {limit >> 20} MiB")
    return data


def wait_cancellable(lock: threading.Lock, cancel: threading.Event) -> None:
    """Acquire ``lock``, giving up with :class:`Cancelled` when the session ends meanwhile."""
    while not lock.acquire(timeout=0.1):
        if cancel.is_set():
            raise Cancelled()

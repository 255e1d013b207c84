"""One run per device: an exclusive lock file per phone (and per power monitor), with stale-owner takeover.

``with DeviceLock("192.168.1.7:5555"): ...`` holds ``flock`` on ``~/.cache/harness/locks/<name>.lock``
(or ``$HARNESS_LOCK_DIR``); a second harness process asking for the same device fails at once (or after
``timeout_s``) with the holder's pid.  The kernel drops the lock when the last descriptor of it closes, so
a crashed process normally leaves nothing behind.  Two cases still could, and both are detected from the
owner line the holder writes into the file (``pid serves_pid start_ticks``):

- **an orphan owner**: the lock is held by a helper process (the Monsoon sampler) whose parent, the process
  it serves, is gone (``kill -9`` of the harness).  The orphan is ended (SIGTERM, then SIGKILL; only when its
  pid still names the same process, by its start time) and the lock taken over, with a warning in the log;
- **a dead owner whose descriptor lives on** (a child forked while the lock was held inherited it): the
  lock file is replaced by a fresh one (under a guard lock, so two takers cannot both replace it).

An owner that is alive and whose parent is alive is never touched: that is the "busy" error; nor is a lock file
or an owner process of another user.
:func:`acquire_lock_file` is the one implementation; :class:`DeviceLock` and the virtual Monsoon use it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from device.errors import DeviceError

log = logging.getLogger(__name__)


def lock_dir() -> Path:
    """Where lock files live."""
    return Path(os.environ.get("HARNESS_LOCK_DIR", Path.home() / ".cache" / "harness" / "locks"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "device"


# --------------------------------------------------------------------------- owners


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` fields from field 3 (state) on; None if unknown or gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        return raw[raw.rindex(b")") + 2:].split()
    except ValueError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22); None if unknown/gone."""
    f = _stat_fields(pid)
    try:
        return int(f[19]) if f else None
    except (ValueError, IndexError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (and, when ``start_ticks`` is given and readable, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    f = _stat_fields(pid)
    if f is None:
        return not Path("/proc/self/stat").exists()  # gone between the two checks (or no /proc at all)
    if f[0] in (b"Z", b"X"):
        return False  # exited, not yet reaped
    if start_ticks is not None and len(f) > 19 and f[19] != str(start_ticks).encode():
        return False  # the pid was reused
    return True


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock file: ``pid`` (the holder), ``serves_pid`` (the process it works for; itself for the
    harness, the harness for its Monsoon sampler) and the holder's start time (guards against pid reuse)."""

    pid: int
    serves_pid: int
    start_ticks: int | None = None

    @classmethod
    def me(cls, serves_pid: int | None = None) -> LockOwner:
        pid = os.getpid()
        return cls(pid, serves_pid if serves_pid else pid, process_start_ticks(pid))

    def line(self) -> str:
        return f"{self.pid} {self.serves_pid} {self.start_ticks if self.start_ticks is not None else '-'}\n"

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        """The owner line (``pid serves start`` or the older bare ``pid``); None when empty or unreadable."""
        parts = text.split()
        try:
            pid = int(parts[0])
            serves = int(parts[1]) if len(parts) > 1 else pid
            start = int(parts[2]) if len(parts) > 2 and parts[2] != "-" else None
        except (ValueError, IndexError):
            return None
        return cls(pid, serves, start)

    def stale_reason(self) -> str | None:
        """Why this owner no longer counts (None: it does, the device is busy)."""
        if not pid_alive(self.pid, self.start_ticks):
            return f"its owner pid {self.pid} is gone"
        if self.serves_pid != self.pid and not pid_alive(self.serves_pid):
            return f"its owner pid {self.pid} is an orphan (the process it served, pid {self.serves_pid}, is gone)"
        return None


def end_process(owner: LockOwner, grace_s: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``, the owner's process if it is still that process; True when gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        if not pid_alive(owner.pid, owner.start_ticks):
            return True
        try:
            os.kill(owner.pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # not ours to end
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(owner.pid, owner.start_ticks):
                return True
            time.sleep(0.02)
    return not pid_alive(owner.pid, owner.start_ticks)


def read_owner(fd: int) -> LockOwner | None:
    return LockOwner.parse(os.pread(fd, 128, 0).decode(errors="replace"))


# --------------------------------------------------------------------------- the lock file


class LockBusy(Exception):
    """Raised by :func:`acquire_lock_file` when a live owner holds the lock (``owner`` may be None)."""

    def __init__(self, path: Path, owner: LockOwner | None):
        super().__init__(f"{path} is held by pid {owner.pid if owner else 'unknown'}")
        self.path = path
        self.owner = owner


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _ours(fd: int, owner: LockOwner) -> bool:
    """Only our own lock files and processes are ever taken over or ended (a lock file in a shared directory
    cannot make us signal someone else's process)."""
    uid = os.geteuid()
    if os.fstat(fd).st_uid != uid:
        return False
    if not Path("/proc/self").exists():  # no way to check the owner's identity: only a dead one is stale
        return not pid_alive(owner.pid)
    try:
        return Path(f"/proc/{owner.pid}").stat().st_uid == uid
    except FileNotFoundError:
        return True  # gone: nothing to signal, the file is ours
    except OSError:
        return False


def _replace_stale_file(path: Path, fd: int) -> None:
    """Unlink ``path`` if it is still the file of ``fd`` (under a guard lock: one taker at a time)."""
    guard = os.open(path.with_name(path.name + ".takeover"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _same_file(fd, path):
            path.unlink(missing_ok=True)
    finally:
        os.close(guard)


def acquire_lock_file(path: str | Path, what: str, *, timeout_s: float = 0.0,
                      serves_pid: int | None = None) -> int:
    """Take ``flock`` on ``path`` (created 0600) and write our owner line; return the descriptor.

    ``what`` names the device in log lines.  A stale owner (see the module docstring) is taken over with a
    warning; a live one makes this wait up to ``timeout_s`` and then raise :class:`LockBusy`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    takeovers = 0
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            owner = read_owner(fd)
            reason = owner.stale_reason() if owner is not None and _ours(fd, owner) else None
            if reason is not None and takeovers < 3:
                takeovers += 1
                if pid_alive(owner.pid, owner.start_ticks):
                    log.warning("%s: lock %s is stale (%s); ending pid %d and taking the lock over",
                                what, path, reason, owner.pid)
                    if not end_process(owner):
                        log.warning("%s: could not end pid %d", what, owner.pid)
                else:
                    log.warning("%s: lock %s is stale (%s, a descriptor it left is still open); "
                                "taking the lock over with a fresh lock file", what, path, reason)
                    _replace_stale_file(path, fd)
                os.close(fd)
                continue
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockBusy(path, owner) from None
            time.sleep(0.1)
            continue
        if not _same_file(fd, path):  # replaced by a taker between our open and our flock: use the new file
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, LockOwner.me(serves_pid).line().encode(), 0)
        return fd


def release_lock_file(fd: int) -> None:
    """Clear the owner line, unlock and close."""
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class DeviceLock:
    """An exclusive, process-wide lock on one device name."""

    def __init__(self, name: str, timeout_s: float = 0.0, directory: Path | None = None):
        self.name = name
        self.timeout_s = timeout_s
        self.path = Path(directory or lock_dir()) / f"{_safe(name)}.lock"
        self._fd: int | None = None

    def acquire(self) -> DeviceLock:
        """Take the lock (a stale one is taken over) or raise :class:`DeviceError` naming the holder."""
        try:
            self._fd = acquire_lock_file(self.path, self.name, timeout_s=self.timeout_s)
        except LockBusy as busy:
            holder = str(busy.owner.pid) if busy.owner else "another process"
            raise DeviceError(self.name, f"in use by pid {holder} (lock {self.path}); one harness "
                              "process per device") from None
        return self

    def release(self) -> None:
        """Let go (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            release_lock_file(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DeviceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

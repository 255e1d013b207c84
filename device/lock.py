"""One run per device: an exclusive lock file per phone (and per power monitor).

``with DeviceLock("192.168.1.7:5555"): ...`` holds ``flock`` on ``~/.cache/harness/locks/<name>.lock``
(or ``$HARNESS_LOCK_DIR``); a second harness process asking for the same device fails at once (or after
``timeout_s``) with the holder's pid.  The kernel drops the lock when the process dies, so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from device.errors import DeviceError


def lock_dir() -> Path:
    """Where lock files live."""
    return Path(os.environ.get("HARNESS_LOCK_DIR", Path.home() / ".cache" / "harness" / "locks"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "device"


class DeviceLock:
    """An exclusive, process-wide lock on one device name."""

    def __init__(self, name: str, timeout_s: float = 0.0, directory: Path | None = None):
        self.name = name
        self.timeout_s = timeout_s
        self.path = Path(directory or lock_dir()) / f"{_safe(name)}.lock"
        self._fd: int | None = None

    def acquire(self) -> DeviceLock:
        """Take the lock or raise :class:`DeviceError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise DeviceError(self.name, f"in use by pid {holder} (lock {self.path}); one harness "
                                      "process per device") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go (idempotent)."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DeviceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

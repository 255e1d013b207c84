"""The virtual phone's file system: device paths mapped into one host directory, never outside it.

Device path ``/data/local/tmp/x`` lives at ``<root>/fs/data/local/tmp/x``.  Paths are normalised
lexically (``..`` stops at ``/``), then the host path is resolved (symlinks followed) and must stay
inside ``<root>/fs``; anything else is refused as if the file did not exist.  Without root only
``/data/local/tmp`` and ``/sdcard`` are writable.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

WRITABLE_PREFIXES = ("/data/local/tmp", "/sdcard", "/storage/emulated/0")
#: mode bits a device file may carry on the host: no setuid/setgid/sticky, no group or other write
SAFE_MODE_MASK = 0o755
DEV_NULL = "/dev/null"
DEV_ZERO = "/dev/zero"


def safe_mode(mode: int) -> int:
    """``mode`` as the host file may carry it (see :data:`SAFE_MODE_MASK`)."""
    return mode & SAFE_MODE_MASK


class SandboxError(OSError):
    """A path that is outside the sandbox or not allowed; ``strerror`` is the phone's wording."""


class Sandbox:
    """Maps device paths to host paths under ``fs_root`` and enforces the write policy."""

    def __init__(self, fs_root: Path, root_user: bool):
        self.fs_root = Path(fs_root).resolve()
        self.fs_root.mkdir(parents=True, exist_ok=True)
        self.root_user = root_user

    @staticmethod
    def normalize(path: str, cwd: str = "/") -> str:
        """Absolute, lexically normalised device path."""
        if not path:
            raise SandboxError(2, "No such file or directory", path)
        joined = path if path.startswith("/") else posixpath.join(cwd, path)
        norm = posixpath.normpath("/" + joined.lstrip("/"))
        return "/" if norm in ("//", "") else norm

    def host_path(self, path: str, cwd: str = "/") -> Path:
        """The host path of a device path; raises :class:`SandboxError` when it would escape."""
        dev = self.normalize(path, cwd)
        host = self.fs_root / dev.lstrip("/")
        real = Path(os.path.realpath(host))
        if real != self.fs_root and self.fs_root not in real.parents:
            raise SandboxError(13, "Permission denied", path)
        return host

    def check_writable(self, path: str, cwd: str = "/") -> Path:
        """Host path of a device path that the shell user may create, change or remove."""
        dev = self.normalize(path, cwd)
        host = self.host_path(dev)
        if self.root_user:
            return host
        if any(dev == p or dev.startswith(p + "/") for p in WRITABLE_PREFIXES):
            return host
        raise SandboxError(30 if dev.startswith("/system") else 13,
                           "Read-only file system" if dev.startswith("/system") else "Permission denied", path)

    def device_path(self, host: Path) -> str:
        """Inverse of :meth:`host_path`."""
        rel = Path(host).resolve().relative_to(self.fs_root)
        return "/" + rel.as_posix() if rel.as_posix() != "." else "/"

    def scrub(self, text: str) -> str:
        """Device-visible text: host paths under the sandbox become device paths, other host roots vanish."""
        root = str(self.fs_root)
        text = text.replace(root + "/", "/").replace(root, "/")
        parent = str(self.fs_root.parent)
        if len(self.fs_root.parent.parts) > 1:
            text = text.replace(parent + "/", "").replace(parent, "")
        return text

    def write_text(self, path: str, text: str) -> None:
        """Seed a file (used when building the phone; bypasses the write policy)."""
        host = self.host_path(path)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text)

"""Checked pushes: a broken transfer never passes as a model or a runner.

The file goes to a temporary name next to its destination, its size (``stat``) and hash (``sha256sum``,
falling back to ``md5sum``/``md5`` on old toolbox phones such as the Nexus 4) are compared with the
host's, and only then is it renamed into place.  A failed attempt removes the temporary file and is
retried a bounded number of times.  An identical file already in place is not pushed again.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from device.base import Device
from device.errors import DeviceError, DevicePackageError, InputError
from device.files import file_hash

log = logging.getLogger(__name__)

# (device command, hashlib name), best first
HASH_TOOLS = (("sha256sum", "sha256"), ("md5sum", "md5"), ("md5", "md5"))
_HEX = re.compile(r"\b([0-9a-fA-F]{32,64})\b")


@dataclass(frozen=True)
class PushResult:
    """What a checked push did."""

    remote_path: str
    size_bytes: int
    hash_algo: str
    hash_hex: str
    attempts: int
    duration_s: float
    skipped: bool = False


_TOOL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def detect_hash_tool(device: Device) -> tuple[str, str] | None:
    """The best hashing command the phone has (``("sha256sum", "sha256")`` ...), None when none works."""
    if device in _TOOL_CACHE:
        return _TOOL_CACHE[device]
    found = None
    for cmd, algo in HASH_TOOLS:
        res = device.run([cmd, "/dev/null"], check=False, timeout_s=30)
        if res.ok and _HEX.search(res.output):
            found = (cmd, algo)
            break
    _TOOL_CACHE[device] = found
    if found is None:
        log.warning("%s: no sha256sum/md5sum/md5 on the phone; pushes are checked by size only", device.name)
    return found


def remote_hash(device: Device, remote: str, tool: tuple[str, str]) -> str | None:
    """Hex digest of a device file (None when it cannot be read)."""
    res = device.run([tool[0], remote], check=False, timeout_s=120)
    m = _HEX.search(res.output) if res.ok else None
    return m.group(1).lower() if m else None


def checked_push(device: Device, local: Path | str, remote: str, mode: int = 0o644, retries: int = 3,
                 skip_if_same: bool = True, timeout_s: float = 300.0) -> PushResult:
    """Push ``local`` to ``remote`` via a temporary name, verify size and hash, then rename into place."""
    local = Path(local)
    if not local.is_file():
        raise InputError(f"cannot push {local}: no such file")
    if not remote.startswith("/") or remote.endswith("/"):
        raise InputError(f"push destination {remote!r} must be an absolute device file path")
    t0 = time.monotonic()
    size = local.stat().st_size
    tool = detect_hash_tool(device)
    algo = tool[1] if tool else "size"
    want = file_hash(local, algo) if tool else ""
    if skip_if_same:
        st = device.stat(remote)
        if st.exists and not st.is_dir and st.size_bytes == size and tool and remote_hash(device, remote, tool) == want:
            log.info("%s: %s already in place (%s %s)", device.name, remote, algo, want[:12])
            return PushResult(remote, size, algo, want, 0, time.monotonic() - t0, skipped=True)
    folder = posixpath.dirname(remote)
    device.run(["mkdir", "-p", folder], timeout_s=30)
    problems: list[str] = []
    for attempt in range(1, retries + 2):
        tmp = posixpath.join(folder, f".{posixpath.basename(remote)}.part-{uuid.uuid4().hex[:8]}")
        try:
            device.push(local, tmp, mode=mode, timeout_s=timeout_s)
            st = device.stat(tmp)
            if st.size_bytes != size:
                raise DeviceError(device.name, f"size mismatch after push: {st.size_bytes} bytes on the phone, "
                                  f"{size} on the host")
            if tool:
                got = remote_hash(device, tmp, tool)
                if got != want:
                    raise DeviceError(device.name, f"{algo} mismatch after push: phone {got}, host {want}")
            device.run(["chmod", f"{mode:o}", tmp], timeout_s=30)
            device.run(["mv", tmp, remote], timeout_s=30)
            return PushResult(remote, size, algo, want, attempt, time.monotonic() - t0)
        except DevicePackageError as exc:
            problems.append(str(exc))
            log.warning("%s: push of %s failed (attempt %d/%d): %s", device.name, local.name, attempt,
                        retries + 1, exc)
            try:
                device.run(["rm", "-f", tmp], check=False, timeout_s=30)
            except DevicePackageError:
                pass  # the link may be down; the next attempt uses a fresh temporary name
    raise DeviceError(device.name, f"push of {local} to {remote} failed after {retries + 1} attempts; "
                      f"last error: {problems[-1]}")

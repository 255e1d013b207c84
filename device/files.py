"""Host-file helpers of the ``device`` package: atomic writes and streamed hashes.

``harness`` uses these too (``harness -> device`` is the allowed direction), so the project has one
atomic writer and one file hasher.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary name and rename, so nothing half-written is ever seen.

    The temporary file is removed when the write fails (disk full, permission denied).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_hash(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a host file (streamed in 1 MiB blocks)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""The results store's errors and how SQLite and OS errors become them (one clear line each)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from harness.errors import ArtifactError, HarnessError


class StoreError(HarnessError):
    """The results database is locked, full or unwritable (exit code 1; nothing is half-written)."""


class DuplicateError(StoreError):
    """A record with the same key is already stored (append-only store)."""


def os_error(exc: OSError, where: Path | str) -> HarnessError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {where}; free space and resume the run")
    return StoreError(f"cannot write {where}: {exc.strerror or exc}")


def db_error(exc: sqlite3.Error, path: Path) -> HarnessError:
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return StoreError(f"results database {path} is locked by another process; wait or use --db OTHER.db")
    if "full" in low:
        return StoreError(f"disk full while writing {path}; free space and resume the run")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return ArtifactError(f"results database {path} is corrupt ({text}); restore it or use --db OTHER.db")
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return StoreError(f"results database {path} cannot be opened for writing ({text})")
    return StoreError(f"results database {path}: {text}")

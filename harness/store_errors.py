"""The results store's errors and how database and OS errors become them (one clear line each).

Database errors come from SQLAlchemy (wrapping sqlite3 or psycopg) or from sqlite3 directly; their text is
passed through :func:`redact`, so no URL password ever reaches a message.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from harness.errors import ArtifactError, HarnessError

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@\s]*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|sslpassword)=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password (``user:PASSWORD@``, ``?password=``) replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", str(text))
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}***", text)



class StoreError(HarnessError):
    """The results database is locked, full, unreachable or unwritable (exit code 1; nothing is half-written)."""


class DuplicateError(StoreError):
    """A record with the same key is already stored (append-only store)."""


def os_error(exc: OSError, where: Path | str) -> HarnessError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {where}; free space and resume the run")
    return StoreError(f"cannot write {where}: {exc.strerror or exc}")


def error_text(exc: BaseException) -> str:
    """The driver's own message of a (SQLAlchemy-wrapped) database error, on one line, passwords masked."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return redact(text)


def is_duplicate(exc: BaseException) -> bool:
    """Whether a database error is a key/constraint violation (a record already stored)."""
    import sqlite3

    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError | sqlite3.IntegrityError)


def db_error(exc: BaseException, path: Path | str) -> HarnessError:
    """One clear error for a database error on the store at ``path`` (a file, or a redacted URL)."""
    text = error_text(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return StoreError(f"results database {path} is locked by another process; wait or use --db OTHER.db")
    if "permission denied" in low or "must be owner" in low or "read-only transaction" in low:
        return StoreError(f"results database {path}: not allowed ({text}); this role lacks the privilege "
                          "(lab hosts may only add and read, schema changes are the owner's: docs/lab.md)")
    if "connection" in low and ("failed" in low or "refused" in low or "timeout" in low or "closed" in low):
        return StoreError(f"cannot reach results database {path} ({text})")
    if "password" in low or "authentication" in low:
        return StoreError(f"results database {path}: authentication failed ({text}); set PGPASSWORD or ~/.pgpass")
    if "does not exist" in low and "database" in low:
        return StoreError(f"results database {path}: {text}; create it first (createdb)")
    if "full" in low:
        return StoreError(f"disk full while writing {path}; free space and resume the run")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return ArtifactError(f"results database {path} is corrupt ({text}); restore it or use --db OTHER.db")
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return StoreError(f"results database {path} cannot be opened for writing ({text})")
    return StoreError(f"results database {path}: {text}")

"""Where the results store lives: ``--db`` checked before anything is written, read-only connections.

A ``--db`` that is a directory, sits under a file, is not SQLite, or is another application's SQLite
file is refused with one line (exit 2); the file is only read, so a foreign database is neither given
tables nor switched to WAL.  Read-only commands (``runs``, ``show`` ...) open the store read-only, so a
database on read-only media can still be read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from harness.errors import ArtifactError, InputError
from harness.store_errors import db_error

#: Tables every harness results database has (its marker); any other application's SQLite file lacks them.
MARKER_TABLES = frozenset({"schema_version", "runs", "run_events", "models", "windows"})


def connect_ro(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``; ``immutable=1`` when even the WAL index cannot be opened)."""
    base = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(base, uri=True, timeout=timeout_s, isolation_level=None)
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
        return con
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc).lower():
            raise
    # a WAL database in a read-only or immutable directory: no -shm can be made; nobody can be writing it
    return sqlite3.connect(base + "&immutable=1", uri=True, timeout=timeout_s, isolation_level=None)


def check_db_path(path: str | Path, *, must_exist: bool = False, timeout_s: float = 10.0) -> Path:
    """Check a ``--db`` path before anything is written; InputError/ArtifactError (exit 2) with one line."""
    p = Path(path)
    if not str(path).strip():
        raise InputError("--db: give a file name, e.g. results/harness.db")
    if p.is_dir():
        raise InputError(f"--db {p}: is a directory; give a database file such as {p / 'harness.db'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--db {p}: {parent} is a file, not a directory")
            break
    if not p.exists():
        if must_exist:
            raise InputError(f"no results database at {p}; run 'harness run' first or give --db PATH")
        return p
    if not p.is_file():
        raise InputError(f"--db {p}: not a regular file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"--db {p}: cannot read ({exc.strerror or exc})") from None
    if not head:
        return p  # an empty file: SQLite makes a new database in it
    if head != b"SQLite format 3\x00":
        raise ArtifactError(f"--db {p}: not a SQLite database; give a harness results database or a new path")
    try:
        con = connect_ro(p, timeout_s)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            app_id = int(con.execute("PRAGMA application_id").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise db_error(exc, p) from None
    tables = {t for t in tables if not t.startswith("sqlite_")}
    if app_id or not (tables <= {"schema_version"} or MARKER_TABLES <= tables):  # (a new store starts so)
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise InputError(f"--db {p}: another application's SQLite database (tables: {shown or 'none'}), "
                         "not a harness results database; give another --db")
    return p

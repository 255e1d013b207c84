"""Where the results store lives: ``--db`` (a SQLite path or a server URL) checked before anything is written.

``--db`` (or, when it is not given, the ``HARNESS_DB`` environment variable, else ``results/harness.db``) is
either a SQLite file path (``sqlite:///PATH`` is accepted too) or a PostgreSQL URL
(``postgresql://[user@]host[:port]/dbname[?sslmode=require]``).  :func:`resolve_db` turns it into a
:class:`DbLocation`.  Credentials come from the environment (``PGPASSWORD``, ``PGSSLMODE`` ...) or ``~/.pgpass``
(libpq reads them when the URL has no password); a password written in a URL still works but is never shown:
:func:`redact` masks it in every message, log line and JSON output (``postgresql://user:***@host/db``).

A SQLite ``--db`` that is a directory, sits under a file, is not SQLite, or is another application's SQLite
file is refused with one line (exit 2); the file is only read, so a foreign database is neither given
tables nor switched to WAL.  Read-only commands (``runs``, ``show`` ...) open the store read-only, so a
database on read-only media can still be read.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from harness.errors import ArtifactError, InputError
from harness.store_errors import db_error, redact

#: The default results database (relative to the working directory).
DEFAULT_DB = Path("results") / "harness.db"
#: The environment variable that names the results database when ``--db`` is not given.
DB_ENV = "HARNESS_DB"

#: Tables every harness results database has (its marker); any other application's SQLite file lacks them.
MARKER_TABLES = frozenset({"schema_version", "runs", "run_events", "models", "windows"})
#: Tables a sweep's cell store may have put in the same file (harness/sweep/store.py) before any run.
SWEEP_TABLES = frozenset({"sweep_schema_version", "meta", "jobs", "epochs"})

#: URL schemes of the database servers the store speaks to, and the SQLAlchemy driver each maps to.
SERVER_SCHEMES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                  "postgresql+psycopg": "postgresql+psycopg"}

def is_url(value: str | Path) -> bool:
    return isinstance(value, str) and "://" in value


@dataclass(frozen=True)
class DbLocation:
    """A results database: a SQLite file (``path``) or a server (``url``, the full SQLAlchemy URL).

    ``display`` is the redacted form for messages; ``work_dir`` is the local folder for what is not in the
    database (the export cache, reports, plots; for SQLite also the trace files): the SQLite file's folder, or
    ``results`` (relative to the working directory) for a server.
    """

    display: str
    path: Path | None = None
    url: str = field(default="", repr=False)  # may hold a password: never shown

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    @property
    def work_dir(self) -> Path:
        return self.path.parent if self.path is not None else DEFAULT_DB.parent

    def __str__(self) -> str:
        return self.display


def _server_location(value: str) -> DbLocation:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise InputError(f"--db {redact(value)}: not a database URL ({redact(str(exc))})") from None
    driver = SERVER_SCHEMES.get(url.drivername)
    if driver is None:
        raise InputError(f"--db {redact(value)}: unsupported database {url.drivername!r}; give a SQLite file path "
                         "or postgresql://[user@]host[:port]/dbname")
    if not url.database:
        raise InputError(f"--db {redact(value)}: name the database, e.g. postgresql://user@host/harness")
    url = url.set(drivername=driver)
    return DbLocation(display=redact(value), url=url.render_as_string(hide_password=False))


def resolve_db(value: str | Path | DbLocation | None) -> DbLocation:
    """The database that ``--db VALUE`` names (None: ``$HARNESS_DB``, else ``results/harness.db``).

    Only the form is checked here (no file is read, no server contacted); InputError (exit 2) with one line.
    """
    if isinstance(value, DbLocation):
        return value
    if value is None:
        value = os.environ.get(DB_ENV) or DEFAULT_DB
    if isinstance(value, str) and value.startswith("sqlite:///"):
        value = value[len("sqlite:///"):] or " "
    if is_url(value):
        return _server_location(str(value))
    if not str(value).strip():
        raise InputError("--db: give a file name, e.g. results/harness.db, or a postgresql:// URL")
    p = Path(value)
    return DbLocation(display=str(p), path=p)


def connect_ro(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``; ``immutable=1`` when even the WAL index cannot be opened)."""
    base = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(base, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchall()
        return con
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc).lower():
            raise
    # a WAL database in a read-only or immutable directory: no -shm can be made; nobody can be writing it
    return sqlite3.connect(base + "&immutable=1", uri=True, timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)


def check_db_path(path: str | Path | DbLocation | None, *, must_exist: bool = False,
                  timeout_s: float = 10.0) -> DbLocation:
    """Check a ``--db`` before anything is written; InputError/ArtifactError (exit 2) with one line.

    A SQLite file is read (never written) to make sure it is a harness results database; a server URL is
    only checked for its form here (the server is contacted when the store opens).
    """
    loc = resolve_db(path)
    if loc.path is None:
        return loc
    p = loc.path
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
        return loc
    if not p.is_file():
        raise InputError(f"--db {p}: not a regular file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise InputError(f"--db {p}: cannot read ({exc.strerror or exc})") from None
    if not head:
        return loc  # an empty file: SQLite makes a new database in it
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
    if app_id or not (tables <= {"schema_version", *SWEEP_TABLES} or MARKER_TABLES <= tables):  # (a new store starts so)
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise InputError(f"--db {p}: another application's SQLite database (tables: {shown or 'none'}), "
                         "not a harness results database; give another --db")
    return loc

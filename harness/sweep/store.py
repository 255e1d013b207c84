"""The sweep's cell store: finished jobs in SQLite (``--out/sweep.sqlite``) or in the results database on a
server (``--db postgresql://...``), by the rules of the results store.

- Append-only: a job is written once with a plain ``INSERT``; writing the same job again is a
  :class:`~harness.store.DuplicateError` and leaves the stored one as it was.  ``--fresh`` does not
  delete: it opens a new *epoch* of a context, and only the latest epoch's jobs count.
- Versioned: a ``sweep_schema_version`` table holds the schema version (its own, so the cells can share a
  database with the results store).  :data:`MIGRATIONS` bring an older store up to date (in one transaction
  each, under the migration lock); a newer one is refused.  SQLite stores of older harnesses kept the version in
  ``PRAGMA user_version``, and the first ones in a ``meta`` table: both are read, and kept in step on SQLite,
  so that such older harnesses refuse a newer store instead of misreading it.
- SQLAlchemy Core only (harness/store_schema.py makes the engine); one writer per context.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import column, func, insert, inspect, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from harness.errors import ArtifactError
from harness.store import DuplicateError
from harness.store_errors import db_error, error_text
from harness.store_path import DB_ENV, DbLocation, resolve_db
from harness.store_schema import lock_for_migration, make_engine, read, run_migrations, transaction

log = logging.getLogger(__name__)

VERSION_TABLE = "sweep_schema_version"


@dataclass(frozen=True)
class JobRecord:
    """One finished job: a subset at a level (level 0: the unpruned "None" column)."""

    context: str
    subset: tuple[int, ...]
    level: float
    correct: int
    n: int
    flops: int
    flops_pruned_pct: float
    build_ms: float
    eval_s: float
    cpu_s: float = 0.0  # this job's share of its worker's CPU time (build + evaluation)

    @property
    def accuracy_pct(self) -> float:
        return 100.0 * self.correct / self.n if self.n else math.nan


_COLUMNS = tuple(f.name for f in fields(JobRecord))  # context, subset, level, correct, ..., cpu_s
_TYPES = {"context": "TEXT", "subset": "TEXT", "level": "DOUBLE PRECISION", "correct": "BIGINT", "n": "BIGINT",
          "flops": "BIGINT", "flops_pruned_pct": "DOUBLE PRECISION", "build_ms": "DOUBLE PRECISION",
          "eval_s": "DOUBLE PRECISION", "cpu_s": "DOUBLE PRECISION"}
JOBS = table("jobs", *(column(c) for c in (*_COLUMNS, "epoch", "finished_at")))
EPOCHS = table("epochs", column("context"), column("epoch"), column("started_at"))


def _create_v1(db: Connection) -> None:
    """Version 1: one row per job and context (the layout of the first sweeps)."""
    db.execute(text("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))
    db.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
    db.execute(text(
        "CREATE TABLE jobs (context TEXT NOT NULL, subset TEXT NOT NULL, level DOUBLE PRECISION NOT NULL, "
        "correct BIGINT NOT NULL, n BIGINT NOT NULL, flops BIGINT NOT NULL, "
        "flops_pruned_pct DOUBLE PRECISION NOT NULL, build_ms DOUBLE PRECISION NOT NULL, "
        "eval_s DOUBLE PRECISION NOT NULL, finished_at TEXT NOT NULL, "
        "cpu_s DOUBLE PRECISION NOT NULL DEFAULT 0, PRIMARY KEY (context, subset, level))"))


def _to_v2(db: Connection) -> None:
    """Version 2: epochs (``--fresh`` appends one instead of deleting jobs); CPU time always present
    (the first version-1 stores lack ``cpu_s``: their jobs get 0)."""
    has_cpu = "cpu_s" in {c["name"] for c in inspect(db).get_columns("jobs")}
    cols = ", ".join(f"{c} {_TYPES[c]} NOT NULL" for c in _COLUMNS)
    db.execute(text(f"CREATE TABLE jobs_v2 ({cols}, epoch INTEGER NOT NULL, finished_at TEXT NOT NULL, "
                    "PRIMARY KEY (context, epoch, subset, level))"))
    old = ", ".join(c if c != "cpu_s" or has_cpu else "0" for c in _COLUMNS)
    db.execute(text(f"INSERT INTO jobs_v2 ({', '.join(_COLUMNS)}, epoch, finished_at) "
                    f"SELECT {old}, 0, finished_at FROM jobs"))
    db.execute(text("DROP TABLE jobs"))
    db.execute(text("ALTER TABLE jobs_v2 RENAME TO jobs"))
    db.execute(text("CREATE TABLE epochs (context TEXT NOT NULL, epoch INTEGER NOT NULL, "
                    "started_at TEXT NOT NULL, PRIMARY KEY (context, epoch))"))


#: Ordered migrations: (version, step).  A store at version v gets every later step.
MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = ((1, _create_v1), (2, _to_v2))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def cells_location(out_dir: str | Path, db: str | Path | DbLocation | None = None) -> DbLocation:
    """Where a sweep keeps its cells: ``--db`` when given, else ``$HARNESS_DB`` when set, else
    ``OUT/sweep.sqlite``."""
    if db is None and not os.environ.get(DB_ENV):
        return resolve_db(Path(out_dir) / "sweep.sqlite")
    return resolve_db(db)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _subset_text(subset: Sequence[int]) -> str:
    return ",".join(str(int(c)) for c in subset)


def _version(db: Connection) -> int:
    """The store's version: its version table, and for stores of older harnesses ``user_version`` (SQLite)
    or the ``meta`` table, whichever is highest.  Call inside a transaction."""
    tables = set(inspect(db).get_table_names())
    version = 0
    if VERSION_TABLE in tables:
        version = int(db.execute(text(f"SELECT MAX(version) FROM {VERSION_TABLE}")).scalar() or 0)
    if db.dialect.name == "sqlite":
        version = max(version, int(db.exec_driver_sql("PRAGMA user_version").scalar() or 0))
    if "meta" in tables:
        row = db.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).fetchone()
        if row is not None:
            version = max(version, int(row[0]))
    return version


class CellStore:
    """The store of finished jobs (see the module docstring for its rules).

    ``path`` is a SQLite file or a server URL (``postgresql://...``), as ``--db`` takes it.
    """

    def __init__(self, path: str | Path | DbLocation,
                 migrations: Sequence[tuple[int, Callable[[Connection], None]]] = MIGRATIONS):
        self.location = resolve_db(path)
        self.path = self.location.path if self.location.path is not None else self.location.display
        self.where = f"sweep store {self.location.display}"
        if self.location.path is not None:
            self.location.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = make_engine(self.location, 30.0, readonly=False)
        self.db: Connection | None = None
        try:
            self.db = self._engine.connect()
            self._migrate(migrations)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self.close()
            if self.location.path is not None and ("not a database" in error_text(exc).lower()
                                                   or "malformed" in error_text(exc).lower()):
                raise ArtifactError(f"sweep store {self.path} is not a usable SQLite database "
                                    f"({error_text(exc)}); move it away or pass another --out") from None
            raise db_error(exc, self.where) from None
        except BaseException:
            self.close()
            raise

    def schema_version(self) -> int:
        """The version (see :func:`_version`)."""
        with self.db.begin():
            return _version(self.db)

    def _migrate(self, migrations: Sequence[tuple[int, Callable[[Connection], None]]]) -> None:
        def newer(current: int, latest: int) -> str:
            return (f"sweep store {self.location.display} has schema {current}, newer than this harness "
                    f"({latest}); upgrade the harness or use another --out")

        def apply(db: Connection, version: int, step: Callable[[Connection], None]) -> None:
            step(db)
            db.execute(text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                            "(version INTEGER NOT NULL PRIMARY KEY, applied_utc TEXT NOT NULL)"))
            db.execute(text(f"INSERT INTO {VERSION_TABLE} (version, applied_utc) VALUES (:v, :t)"),
                       {"v": version, "t": _now()})
            db.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(version)})
            if db.dialect.name == "sqlite":
                db.exec_driver_sql(f"PRAGMA user_version = {int(version)}")

        run_migrations(self.db, self.location.display, migrations, _version, apply, newer, what="sweep store ")
        self._adopt_legacy_version()

    def _adopt_legacy_version(self) -> None:
        """A store of an older harness (version in ``user_version``/``meta`` only) gets the version table."""
        def body(db: Connection) -> None:
            lock_for_migration(db)
            if VERSION_TABLE in inspect(db).get_table_names():
                return
            version = _version(db)
            log.info("sweep store %s: recording its schema version %d", self.location.display, version)
            db.execute(text(f"CREATE TABLE {VERSION_TABLE} "
                            "(version INTEGER NOT NULL PRIMARY KEY, applied_utc TEXT NOT NULL)"))
            db.execute(text(f"INSERT INTO {VERSION_TABLE} (version, applied_utc) VALUES (:v, :t)"),
                       {"v": version, "t": _now()})

        with self.db.begin():
            if VERSION_TABLE in inspect(self.db).get_table_names():
                return
        transaction(self.db, self.where, (), before=body)

    def _epoch(self, context: str) -> int:
        rows = read(self.db, self.where, select(func.max(EPOCHS.c.epoch)).where(EPOCHS.c.context == context))
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def load(self, context: str) -> dict[tuple[tuple[int, ...], float], JobRecord]:
        """Every finished job of a context's latest epoch, by ``(subset, level)``."""
        rows = read(self.db, self.where, select(*(JOBS.c[c] for c in _COLUMNS))
                    .where(JOBS.c.context == context, JOBS.c.epoch == self._epoch(context)))
        out = {}
        for ctx, subset, level, correct, n, flops, pct, build_ms, eval_s, cpu_s in rows:
            key = tuple(int(c) for c in subset.split(","))
            out[(key, float(level))] = JobRecord(ctx, key, float(level), int(correct), int(n), int(flops),
                                                 float(pct), float(build_ms), float(eval_s), float(cpu_s))
        return out

    def put(self, records: Sequence[JobRecord]) -> None:
        """Save finished jobs in one transaction (committed before returning).  A job already stored in its
        context's epoch raises :class:`DuplicateError` and nothing of this call is written."""
        now = _now()
        epochs = {r.context: self._epoch(r.context) for r in records}
        rows = []
        for r in records:
            row = dict(zip(_COLUMNS, astuple(r), strict=True))
            row["subset"] = _subset_text(r.subset)
            rows.append(insert(JOBS).values(**row, epoch=epochs[r.context], finished_at=now))
        try:
            transaction(self.db, self.where, rows)
        except DuplicateError as exc:
            raise DuplicateError(f"{self.where}: a job is already stored ({exc}); is another sweep "
                                 "writing to the same --out?") from None

    def forget(self, context: str) -> int:
        """Start a new epoch of a context (``--fresh``): its stored jobs no longer count (they stay in the
        store).  Returns how many jobs were set aside."""
        n = len(self.load(context))
        transaction(self.db, self.where, [insert(EPOCHS).values(context=context, epoch=self._epoch(context) + 1,
                                                                started_at=_now())])
        return n

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self._engine.dispose()

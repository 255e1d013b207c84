"""The results store's schema and its migrations, connecting (SQLite or PostgreSQL), and transactions.

``MIGRATIONS`` is the ordered list ``(version, statements)``; a database at version v gets every later entry,
each in one transaction, and a database newer than this harness is refused.  The version lives in a
``schema_version`` table on every database.  A statement is portable SQL text or a SQLAlchemy DDL construct
(rendered per dialect): use ``TEXT``, ``BIGINT`` and ``DOUBLE PRECISION`` (``REAL`` is single precision on
PostgreSQL), never SQLite-only syntax.  To extend the schema, append ``(SCHEMA_VERSION + 1, (...))``.

:func:`make_engine` is the one place that knows the drivers: SQLite through the standard ``sqlite3`` module
(WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` for writes), PostgreSQL through psycopg 3 (read-only
sessions for read-only stores).  :func:`transaction` runs statements all-or-nothing with SIGINT/SIGTERM held
(:func:`harness.signals.deferred_signals`), and rolls back only a transaction that is still open, so an
interrupt can neither cut a write in half nor turn a finished ``COMMIT`` into "cannot rollback".
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, LargeBinary, MetaData, Table, Text, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable

from harness.errors import ArtifactError
from harness.signals import deferred_signals
from harness.store_errors import DuplicateError, db_error, is_duplicate
from harness.store_path import DbLocation, connect_ro
from harness.store_records import utc_now

log = logging.getLogger(__name__)

#: Trace blobs by hash, for stores on a server (a SQLite store keeps them as files beside the database).
TRACES_TABLE = Table("traces", MetaData(), Column("trace_hash", Text, primary_key=True),
                     Column("data", LargeBinary, nullable=False), Column("created_utc", Text, nullable=False))

#: Ordered migrations: (version, statements).  A database at version v gets every later entry.
MIGRATIONS: tuple[tuple[int, tuple[Any, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE runs (
                run_id TEXT NOT NULL PRIMARY KEY,
                created_utc TEXT NOT NULL,
                device TEXT NOT NULL,
                device_fingerprint TEXT NOT NULL,
                fingerprint_json TEXT NOT NULL,
                virtual INTEGER NOT NULL,
                measures_energy INTEGER NOT NULL,
                instrument TEXT NOT NULL,
                code_version TEXT NOT NULL,
                plan_json TEXT NOT NULL
            )""",
            """CREATE TABLE run_events (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                event TEXT NOT NULL,
                detail TEXT NOT NULL,
                t_utc TEXT NOT NULL,
                PRIMARY KEY (run_id, seq)
            )""",
            """CREATE TABLE models (
                run_id TEXT NOT NULL,
                model_key TEXT NOT NULL,
                level_pct INTEGER NOT NULL,
                classes TEXT NOT NULL,
                method TEXT NOT NULL,
                flops BIGINT NOT NULL,
                flops_pruned_pct DOUBLE PRECISION NOT NULL,
                model_hash TEXT NOT NULL,
                artifact_hash TEXT NOT NULL,
                artifact_path TEXT NOT NULL,
                accuracy_pct DOUBLE PRECISION,
                PRIMARY KEY (run_id, model_key)
            )""",
            """CREATE TABLE windows (
                run_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                round_idx INTEGER NOT NULL,
                kind TEXT NOT NULL,
                model_key TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT NOT NULL,
                t_start_mono_s DOUBLE PRECISION,
                duration_s DOUBLE PRECISION,
                n_inferences BIGINT NOT NULL,
                busy_s DOUBLE PRECISION,
                time_ms DOUBLE PRECISION,
                energy_j DOUBLE PRECISION,
                mean_power_w DOUBLE PRECISION,
                temperature_c DOUBLE PRECISION,
                trace_hash TEXT NOT NULL,
                latencies_hash TEXT NOT NULL,
                model_hash TEXT NOT NULL,
                artifact_hash TEXT NOT NULL,
                device_fingerprint TEXT NOT NULL,
                instrument TEXT NOT NULL,
                code_version TEXT NOT NULL,
                settings_json TEXT NOT NULL,
                created_utc TEXT NOT NULL,
                PRIMARY KEY (run_id, seq)
            )""",
        ),
    ),
    (
        2,
        (
            "CREATE INDEX windows_by_model ON windows (run_id, model_key, kind)",
            "CREATE INDEX runs_by_fingerprint ON runs (device_fingerprint, created_utc)",
        ),
    ),
    (3, (CreateTable(TRACES_TABLE),)),
    (
        4,  # latency distribution and phases of each inference window (NULL in windows stored before)
        tuple(f"ALTER TABLE windows ADD COLUMN {col} DOUBLE PRECISION" for col in (
            "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "load_ms", "first_inference_ms", "warmup_ms")),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: The advisory lock key that serialises migrations of one PostgreSQL database (any fixed 64-bit number).
_PG_MIGRATION_LOCK = 0x68_61_72_6E_65_73_73


def connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A writable SQLite connection (autocommit at the driver; transactions are begun explicitly)."""
    con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA foreign_keys=ON")
    try:
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # read-only media: stay with the default journal
        pass
    con.execute("PRAGMA synchronous=FULL")
    return con


def _sqlite_begin(conn: Connection) -> None:
    """SQLAlchemy's ``begin``: a real ``BEGIN`` (``BEGIN IMMEDIATE`` for writes, so a locked database fails
    at the start, after the busy timeout, not half-way)."""
    conn.exec_driver_sql(conn.info.get("begin", "BEGIN"))


def make_engine(loc: DbLocation, timeout_s: float, readonly: bool) -> Engine:
    """The SQLAlchemy engine of a store (one connection at a time, closed when released)."""
    if loc.path is not None:
        path = loc.path

        def creator() -> sqlite3.Connection:
            return connect_ro(path, timeout_s) if readonly else connect(path, timeout_s)

        engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    args: dict[str, Any] = {"connect_timeout": max(1, int(round(timeout_s)))}
    if readonly:
        args["options"] = "-c default_transaction_read_only=on"
    return create_engine(loc.url, poolclass=NullPool, connect_args=args, hide_parameters=True)


def _statement(sql: Any) -> Any:
    return text(sql) if isinstance(sql, str) else sql


def _rollback(trans) -> None:
    """Roll back if the transaction is still open (a COMMIT that went through leaves nothing to roll back)."""
    if not trans.is_active:
        return
    try:
        trans.rollback()
    except SQLAlchemyError as exc:  # the original error is the one to report
        log.warning("rollback failed: %s", db_error(exc, "(rollback)"))


def transaction(conn: Connection, where: Path | str, statements: Iterable[Any],
                begin: str = "BEGIN IMMEDIATE", before: Callable[[Connection], None] | None = None) -> None:
    """Run statements (SQLAlchemy executables, or ``(statement, params)`` pairs) in one transaction, all or
    nothing, with stop signals held until it is over.  ``before`` runs first inside the transaction."""
    with deferred_signals():
        try:
            conn.info["begin"] = begin
            try:
                trans = conn.begin()
            finally:
                conn.info["begin"] = "BEGIN"
            try:
                if before is not None:
                    before(conn)
                for item in statements:
                    if isinstance(item, tuple):
                        conn.execute(_statement(item[0]), item[1])
                    else:
                        conn.execute(_statement(item))
                trans.commit()
            except BaseException:
                _rollback(trans)
                raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            if is_duplicate(exc):
                raise DuplicateError(f"{where}: already stored ({_short(exc)})") from None
            raise db_error(exc, where) from None


def _short(exc: BaseException) -> str:
    from harness.store_errors import error_text

    return error_text(exc)[:300]


def read(conn: Connection, where: Path | str, statement: Any, params: Any = None) -> list[tuple]:
    """Rows of one query, in its own short transaction (no snapshot or lock is held between calls)."""
    try:
        with conn.begin():
            result = conn.execute(_statement(statement), params) if params is not None else \
                conn.execute(_statement(statement))
            return [tuple(r) for r in result.fetchall()]
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise db_error(exc, where) from None


def version_in(conn: Connection, table: str = "schema_version") -> int:
    """The highest version recorded in ``table`` (0 when it does not exist); call inside a transaction."""
    if not inspect(conn).has_table(table):
        return 0
    got = conn.execute(text(f"SELECT MAX(version) FROM {table}")).fetchone()
    return int(got[0] or 0)


def schema_version(conn: Connection) -> int:
    """The database's schema version (0: a new database)."""
    with conn.begin():
        return version_in(conn)


def results_db_newer(path: Path | str) -> Callable[[int, int], str]:
    """The error text (for :func:`pending_migrations`) of a results database newer than this harness."""
    return lambda current, latest: (f"results database {path} has schema version {current}, newer than this "
                                    f"harness ({latest}); upgrade the harness")


def pending_migrations(current: int, migrations: Sequence[tuple[int, Any]],
                       newer: Callable[[int, int], str]) -> list[tuple[int, Any]]:
    """The ``(version, step)`` of ``migrations`` after version ``current``, in order.

    A database newer than the last migration is an :class:`ArtifactError` saying ``newer(current, latest)``.
    """
    latest = migrations[-1][0] if migrations else 0
    if current > latest:
        raise ArtifactError(newer(current, latest))
    return [(version, step) for version, step in migrations if version > current]


def lock_for_migration(conn: Connection) -> None:
    """Serialise migrations: on PostgreSQL a transaction advisory lock (SQLite's ``BEGIN IMMEDIATE`` does it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})


def run_migrations(conn: Connection, where: Path | str, migrations: Sequence[tuple[int, Any]],
                   current: Callable[[Connection], int], apply: Callable[[Connection, int, Any], None],
                   newer: Callable[[int, int], str], what: str = "") -> None:
    """Apply each pending migration in its own transaction, under the migration lock.

    ``current(conn)`` reads the version inside that transaction (another process may have migrated meanwhile);
    ``apply(conn, version, step)`` runs the step and records the version.
    """
    pending_migrations(schema_now := _read_version(conn, current, where), migrations, newer)
    for version, step in migrations:
        if version <= schema_now:
            continue

        def body(c: Connection, version=version, step=step) -> None:
            lock_for_migration(c)
            now = current(c)
            pending_migrations(now, migrations, newer)
            if now >= version:  # another process got there first
                return
            log.info("migrating %s%s to schema version %d", what, where, version)
            apply(c, version, step)

        transaction(conn, where, (), before=body)
        schema_now = version


def _read_version(conn: Connection, current: Callable[[Connection], int], where: Path | str) -> int:
    try:
        with conn.begin():
            return current(conn)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise db_error(exc, where) from None


def migrate(conn: Connection, where: Path | str, migrations: Sequence[tuple[int, Sequence[Any]]]) -> None:
    """Bring the database to the last version of ``migrations``; ArtifactError if it is newer."""

    def apply(c: Connection, version: int, statements: Sequence[Any]) -> None:
        c.execute(text("CREATE TABLE IF NOT EXISTS schema_version "
                       "(version INTEGER NOT NULL PRIMARY KEY, applied_utc TEXT NOT NULL)"))
        for sql in statements:
            c.execute(_statement(sql))
        c.execute(text("INSERT INTO schema_version (version, applied_utc) VALUES (:v, :t)"),
                  {"v": version, "t": utc_now()})

    run_migrations(conn, where, migrations, version_in, apply, results_db_newer(where))

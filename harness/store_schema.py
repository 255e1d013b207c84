"""The results store's SQLite side: the schema and its migrations, connecting, and transactions.

``MIGRATIONS`` is the ordered list ``(version, statements)``; a database at version v gets every later entry,
each in one transaction, and a database newer than this harness is refused.  Only :func:`connect` and its
pragmas are SQLite-specific.  :func:`transaction` runs statements all-or-nothing with SIGINT/SIGTERM held
(:func:`harness.signals.deferred_signals`), and rolls back only a transaction that is still open, so an
interrupt can neither cut a write in half nor turn a finished ``COMMIT`` into "cannot rollback".
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import ArtifactError
from harness.signals import deferred_signals
from harness.store_errors import DuplicateError, db_error
from harness.store_records import utc_now

log = logging.getLogger(__name__)

#: Ordered migrations: (version, statements).  A database at version v gets every later entry.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
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
                flops INTEGER NOT NULL,
                flops_pruned_pct REAL NOT NULL,
                model_hash TEXT NOT NULL,
                artifact_hash TEXT NOT NULL,
                artifact_path TEXT NOT NULL,
                accuracy_pct REAL,
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
                t_start_mono_s REAL,
                duration_s REAL,
                n_inferences INTEGER NOT NULL,
                busy_s REAL,
                time_ms REAL,
                energy_j REAL,
                mean_power_w REAL,
                temperature_c REAL,
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
    (
        3,  # latency distribution and phases of each inference window (NULL in windows stored before)
        tuple(f"ALTER TABLE windows ADD COLUMN {col} REAL" for col in (
            "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "load_ms", "first_inference_ms", "warmup_ms")),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
    con.execute("PRAGMA foreign_keys=ON")
    try:
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # read-only media: stay with the default journal
        pass
    con.execute("PRAGMA synchronous=FULL")
    return con



def _rollback(con: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (a COMMIT that went through leaves nothing to roll back)."""
    if not con.in_transaction:
        return
    try:
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:  # the original error is the one to report
        log.warning("rollback failed: %s", exc)


def transaction(con: sqlite3.Connection, path: Path, statements: Iterable[tuple[str, Sequence[Any]]],
                begin: str = "BEGIN") -> None:
    """Run statements in one transaction, all or nothing, with stop signals held until it is over."""
    with deferred_signals():
        try:
            con.execute(begin)
            try:
                for sql, params in statements:
                    con.execute(sql, tuple(params))
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(str(exc)) from None
        except sqlite3.Error as exc:
            raise db_error(exc, path) from None


def schema_version(con: sqlite3.Connection) -> int:
    """The database's schema version (0: a new database)."""
    rows = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchall()
    if not rows:
        return 0
    got = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(got[0] or 0)


def results_db_newer(path: Path) -> Callable[[int, int], str]:
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


def migrate(con: sqlite3.Connection, path: Path, migrations: Sequence[tuple[int, Sequence[str]]]) -> None:
    """Bring the database to the last version of ``migrations``; ArtifactError if it is newer."""
    current = schema_version(con)
    if current == 0:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version "
                    "(version INTEGER NOT NULL PRIMARY KEY, applied_utc TEXT NOT NULL)")
    for version, statements in pending_migrations(current, migrations, results_db_newer(path)):
        log.info("migrating %s to schema version %d", path, version)
        transaction(con, path, [*((sql, ()) for sql in statements),
                                ("INSERT INTO schema_version (version, applied_utc) VALUES (?, ?)",
                                 (version, utc_now()))], begin="BEGIN IMMEDIATE")

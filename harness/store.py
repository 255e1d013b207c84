"""The results store: a SQLite file by default or a PostgreSQL server, schema versioned with migrations,
append-only.

One database (``results/harness.db`` unless ``--db`` or ``$HARNESS_DB``; a ``postgresql://`` URL names a server,
harness/store_path.py) holds runs, their models, an append-only event log per run and one record per
measurement window.  Raw traces are compressed ``.npz`` arrays named by the sha256 of their content and
referenced from windows by that hash: files beside a SQLite database, rows of the ``traces`` table on a server.
Nothing is ever updated or deleted: a run's status is its latest event; a window is written once, in one
transaction, after its trace is safely stored, and ``(run_id, seq)`` is its primary key, so a resumed run can
neither lose nor duplicate a window.  Transactions hold SIGINT and SIGTERM until they are over
(harness/signals.py), so an interrupt never leaves one half-done.

All SQL goes through SQLAlchemy Core (statements built from :data:`RUNS`, :data:`WINDOWS` ...; the schema is
portable DDL in harness/store_schema.py), so the same code and the same migrations serve SQLite and
PostgreSQL; only :func:`harness.store_schema.make_engine` knows the drivers.

The parts live in single-purpose modules, all re-exported here (``from harness.store import ...``):
``store_path`` (where the store is, ``--db`` checks), ``store_schema`` (migrations, connection, transactions),
``store_records`` (records, ids, code version, fingerprints), ``store_traces`` (the traces), ``store_errors``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import column, func, insert, select, table
from sqlalchemy.exc import SQLAlchemyError

from device.closing import Closing
from harness.errors import ArtifactError, InputError
from harness.signals import deferred_signals
from harness.store_errors import DuplicateError, StoreError, db_error, os_error
from harness.store_path import DB_ENV, DEFAULT_DB, DbLocation, check_db_path, redact, resolve_db
from harness.store_records import (
    ModelRecord,
    RunRecord,
    RunSummary,
    WindowRecord,
    code_version,
    fingerprint_id,
    new_run_id,
    record_dict,
    run_from_row,
    utc_now,
)
from harness.store_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    make_engine,
    migrate,
    pending_migrations,
    read,
    results_db_newer,
    schema_version,
    transaction,
)
from harness.store_traces import DbTraceStore, TraceStore

__all__ = [
    "DB_ENV", "DEFAULT_DB", "EVENTS", "MIGRATIONS", "MODELS", "RUNS", "WINDOWS", "SCHEMA_VERSION", "DbLocation", "DuplicateError", "ModelRecord",
    "RunRecord", "RunSummary", "Store", "StoreError", "TraceStore", "WindowRecord", "code_version",
    "fingerprint_id", "new_run_id", "check_db_path", "record_dict", "redact", "resolve_db", "utc_now",
]

log = logging.getLogger(__name__)


def _table(name: str, cols: Iterable[str]):
    return table(name, *(column(c) for c in cols))


RUNS = _table("runs", [f.name for f in fields(RunRecord)])
EVENTS = _table("run_events", ["run_id", "seq", "event", "detail", "t_utc"])
MODELS = _table("models", [f.name for f in fields(ModelRecord)])
WINDOWS = _table("windows", [f.name for f in fields(WindowRecord)])
TRACES = _table("traces", ["trace_hash", "data", "created_utc"])


def _row(rec: Any) -> dict[str, Any]:
    """A record's column values (booleans as integers, as the schema stores them)."""
    return {f.name: (int(v) if isinstance(v := getattr(rec, f.name), bool) else v) for f in fields(rec)}


class Store(Closing):
    """The results database plus its traces (``<db dir>/traces`` for SQLite; the ``traces`` table on a server).

    ``path`` is a SQLite file path or a server URL (``postgresql://...``), None for ``$HARNESS_DB`` or the
    default.  Use as a context manager.  Every public method raises :class:`StoreError` (locked, full,
    unreachable) or :class:`ArtifactError` (corrupt, newer schema) with one clear line, never a password.
    ``where`` is the store's name for messages (a redacted URL for a server); ``work_dir`` the local folder for
    reports and caches; ``path`` the SQLite file (None on a server).
    """

    def __init__(self, path: str | Path | DbLocation | None = None, *, create: bool = True,
                 timeout_s: float = 10.0, migrations: Sequence[tuple[int, Sequence[Any]]] = MIGRATIONS,
                 traces_dir: str | Path | None = None, readonly: bool = False):
        self.location = check_db_path(path, must_exist=not create or readonly, timeout_s=timeout_s)
        self.path: Path | None = self.location.path
        self.where = self.location.display
        self.readonly = readonly
        if self.path is not None and not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(exc, self.path.parent) from None
        if self.path is not None or traces_dir is not None:
            self.traces: TraceStore = TraceStore(traces_dir if traces_dir is not None else self.path.parent / "traces")
        else:
            self.traces = DbTraceStore(self._put_trace, self._get_trace, self.where)
        self._migrations = tuple((int(v), tuple(s)) for v, s in migrations)
        self._engine = make_engine(self.location, timeout_s, readonly)
        self._con = None
        try:
            self._con = self._engine.connect()
            if readonly:  # read what is there; a store that needs migrating is migrated by the next writer
                self._check_version()
            else:
                migrate(self._con, self.where, self._migrations)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self.close()
            raise db_error(exc, self.where) from None
        except BaseException:
            self.close()
            raise

    @property
    def work_dir(self) -> Path:
        """The local folder for what is not in the database (export cache, reports, plots)."""
        return self.location.work_dir

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def _check_version(self) -> None:
        current = schema_version(self._con)
        pending_migrations(current, self._migrations, results_db_newer(self.where))
        if current == 0 and self._migrations:
            raise InputError(f"no results in {self.where} yet; run 'harness run' first or give --db PATH")

    # -- plumbing
    def close(self) -> None:
        with deferred_signals():  # an interrupt during the driver's close is delivered after it, not inside it
            if self._con is not None:
                self._con.close()
                self._con = None
            self._engine.dispose()

    def _exec(self, statement: Any, params: Any = None) -> list[tuple]:
        """Rows of one query (a SQLAlchemy statement, or SQL text with ``:name`` parameters)."""
        return read(self._con, self.where, statement, params)

    def _tx(self, statements: Iterable[Any]) -> None:
        """Run statements in one transaction: all or nothing, stop signals held until it is over."""
        transaction(self._con, self.where, statements)

    def schema_version(self) -> int:
        try:
            return schema_version(self._con)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise db_error(exc, self.where) from None

    # -- traces on a server
    def _put_trace(self, digest: str, data: bytes) -> None:
        if self._exec(select(TRACES.c.trace_hash).where(TRACES.c.trace_hash == digest)):
            return
        try:
            self._tx([insert(TRACES).values(trace_hash=digest, data=data, created_utc=utc_now())])
        except DuplicateError:  # another host stored the same content meanwhile
            pass

    def _get_trace(self, digest: str) -> bytes | None:
        rows = self._exec(select(TRACES.c.data).where(TRACES.c.trace_hash == digest))
        return bytes(rows[0][0]) if rows else None

    # -- runs
    def create_run(self, run: RunRecord) -> None:
        """Insert a run and its ``created`` event."""
        self._tx([
            insert(RUNS).values(**_row(run)),
            insert(EVENTS).values(run_id=run.run_id, seq=0, event="created", detail="", t_utc=utc_now()),
        ])

    def add_event(self, run_id: str, event: str, detail: str = "") -> None:
        """Append an event (``started``, ``resumed``, ``interrupted``, ``complete``, ``failed``).

        Stop signals are held from reading the next sequence number to the commit: an event is recorded
        whole, even when Ctrl-C comes again while the ``interrupted`` event is being written.
        """
        with deferred_signals():
            for _ in range(5):
                got = self._exec(select(func.max(EVENTS.c.seq)).where(EVENTS.c.run_id == run_id))
                seq = (got[0][0] if got and got[0][0] is not None else -1) + 1
                try:
                    self._tx([insert(EVENTS).values(run_id=run_id, seq=seq, event=event, detail=detail,
                                                    t_utc=utc_now())])
                    return
                except DuplicateError:  # another writer took that seq; take the next
                    continue
        raise StoreError(f"could not append event {event!r} to run {run_id}")

    def events(self, run_id: str) -> list[tuple[str, str, str]]:
        """``(event, detail, t_utc)`` in order."""
        return [(e, d, t) for e, d, t in self._exec(
            select(EVENTS.c.event, EVENTS.c.detail, EVENTS.c.t_utc).where(EVENTS.c.run_id == run_id)
            .order_by(EVENTS.c.seq))]

    def run_status(self, run_id: str) -> str:
        ev = self.events(run_id)
        return ev[-1][0] if ev else "unknown"

    def get_run(self, run_id: str) -> RunRecord:
        """The run; InputError listing the closest ids when unknown.  A unique prefix is accepted."""
        cols = [f.name for f in fields(RunRecord)]
        query = select(*(RUNS.c[c] for c in cols))
        rows = self._exec(query.where(RUNS.c.run_id == run_id))
        if not rows:
            prefix = run_id.replace("%", "").replace("_", "").replace("\\", "") + "%"
            rows = self._exec(query.where(RUNS.c.run_id.like(prefix)).order_by(RUNS.c.run_id))
            if len(rows) != 1:
                known = [r[0] for r in self._exec(select(RUNS.c.run_id).order_by(RUNS.c.created_utc.desc()))][:5]
                hint = f"; recent runs: {', '.join(known)}" if known else "; the store has no runs yet"
                what = "is ambiguous" if rows else "not found"
                raise InputError(f"run {run_id!r} {what} in {self.where}{hint}")
        return run_from_row(cols, rows[0])

    def list_runs(self, device: str | None = None) -> list[RunSummary]:
        """Runs, oldest first; ``device`` matches the device name or fingerprint."""
        cols = [f.name for f in fields(RunRecord)]
        query = select(*(RUNS.c[c] for c in cols))
        if device:
            query = query.where((RUNS.c.device == device) | (RUNS.c.device_fingerprint == device))
        out = []
        for row in self._exec(query.order_by(RUNS.c.created_utc, RUNS.c.run_id)):
            run = run_from_row(cols, row)
            counts = dict(self._exec(
                select(WINDOWS.c.status, func.count()).where(WINDOWS.c.run_id == run.run_id,
                                                             WINDOWS.c.kind == "inference")
                .group_by(WINDOWS.c.status)))
            n_models = self._exec(select(func.count()).select_from(MODELS).where(MODELS.c.run_id == run.run_id))[0][0]
            out.append(RunSummary(run, self.run_status(run.run_id), int(n_models),
                                  int(counts.get("valid", 0)), int(sum(v for k, v in counts.items() if k != "valid"))))
        return out

    def import_runs(self, runs: Sequence[tuple[RunRecord, Sequence[ModelRecord], Sequence[tuple[str, str, str]],
                                               Sequence[WindowRecord]]]) -> None:
        """Store whole runs exported from another store (``harness import-results``): each run with its models,
        events ``(event, detail, t_utc)`` in order, and windows, all in one transaction.  A run already stored
        is a :class:`DuplicateError` and nothing is written."""
        statements: list[Any] = []
        for run, models, events, windows in runs:
            statements.append(insert(RUNS).values(**_row(run)))
            statements += [insert(MODELS).values(**_row(m)) for m in models]
            statements += [insert(EVENTS).values(run_id=run.run_id, seq=i, event=e, detail=d, t_utc=t)
                           for i, (e, d, t) in enumerate(events)]
            statements += [insert(WINDOWS).values(**_row(w)) for w in windows]
        self._tx(statements)

    # -- models
    def add_model(self, model: ModelRecord) -> None:
        """Insert a model once; re-adding the identical record (resume) is a no-op."""
        existing = {m.model_key: m for m in self.models(model.run_id)}
        old = existing.get(model.model_key)
        if old is not None:
            if old.model_hash != model.model_hash:
                raise ArtifactError(f"run {model.run_id}: model {model.model_key} now has hash "
                                    f"{model.model_hash[:12]}, the run used {old.model_hash[:12]}")
            return
        self._tx([insert(MODELS).values(**_row(model))])

    def models(self, run_id: str) -> list[ModelRecord]:
        cols = [f.name for f in fields(ModelRecord)]
        rows = self._exec(select(*(MODELS.c[c] for c in cols)).where(MODELS.c.run_id == run_id)
                          .order_by(MODELS.c.level_pct, MODELS.c.model_key))
        return [ModelRecord(**dict(zip(cols, r, strict=True))) for r in rows]

    # -- windows
    def add_window(self, w: WindowRecord) -> None:
        """Append one window in one transaction; DuplicateError if ``(run_id, seq)`` is already recorded."""
        self._tx([insert(WINDOWS).values(**_row(w))])

    def windows(self, run_id: str, kind: str | None = None) -> list[WindowRecord]:
        cols = [f.name for f in fields(WindowRecord)]
        query = select(*(WINDOWS.c[c] for c in cols)).where(WINDOWS.c.run_id == run_id)
        if kind:
            query = query.where(WINDOWS.c.kind == kind)
        rows = self._exec(query.order_by(WINDOWS.c.seq))
        return [WindowRecord(**dict(zip(cols, r, strict=True))) for r in rows]

    def window_seqs(self, run_id: str) -> set[int]:
        return {int(r[0]) for r in self._exec(select(WINDOWS.c.seq).where(WINDOWS.c.run_id == run_id))}

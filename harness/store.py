"""The results store: SQLite by default, schema versioned with migrations, append-only.

One database (``results/harness.db`` unless ``--db``) holds runs, their models, an append-only
event log per run and one record per measurement window.  Raw traces live beside the database as
compressed ``.npz`` files named by the sha256 of their content and referenced from windows by that
hash.  Nothing is ever updated or deleted: a run's status is its latest event; a window is written
once, in one transaction, after its trace file is safely on disk, and ``(run_id, seq)`` is its
primary key, so a resumed run can neither lose nor duplicate a window.  Transactions hold SIGINT and
SIGTERM until they are over (harness/signals.py), so an interrupt never leaves one half-done.

SQL is kept portable (standard types, no AUTOINCREMENT, no ``INSERT OR ...``, no SQLite-only
functions; parameters only through :meth:`Store._exec`) so another DB-API database can take its
place: only :func:`harness.store_schema.connect` and the pragmas in it are SQLite-specific.

The parts live in single-purpose modules, all re-exported here (``from harness.store import ...``):
``store_schema`` (migrations, connection, transactions), ``store_records`` (records, ids, code
version, fingerprints), ``store_traces`` (the trace files), ``store_errors``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from device.closing import Closing
from harness.errors import ArtifactError, InputError
from harness.signals import deferred_signals
from harness.store_errors import DuplicateError, StoreError, db_error, os_error
from harness.store_path import check_db_path, connect_ro
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
    connect,
    migrate,
    pending_migrations,
    results_db_newer,
    schema_version,
    transaction,
)
from harness.store_traces import TraceStore

__all__ = [
    "DEFAULT_DB", "MIGRATIONS", "SCHEMA_VERSION", "DuplicateError", "ModelRecord", "RunRecord", "RunSummary",
    "Store", "StoreError", "TraceStore", "WindowRecord", "code_version", "fingerprint_id", "new_run_id",
    "check_db_path", "record_dict", "utc_now",
]

log = logging.getLogger(__name__)

DEFAULT_DB = Path("results") / "harness.db"


class Store(Closing):
    """The results database plus its trace directory (``<db dir>/traces``).

    Use as a context manager.  Every public method raises :class:`StoreError` (locked, full) or
    :class:`ArtifactError` (corrupt, newer schema) with one clear line.
    """

    def __init__(self, path: str | Path = DEFAULT_DB, *, create: bool = True, timeout_s: float = 10.0,
                 migrations: Sequence[tuple[int, Sequence[str]]] = MIGRATIONS,
                 traces_dir: str | Path | None = None, readonly: bool = False):
        self.path = check_db_path(path, must_exist=not create or readonly, timeout_s=timeout_s)
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise os_error(exc, self.path.parent) from None
        self.traces = TraceStore(traces_dir if traces_dir is not None else self.path.parent / "traces")
        self._migrations = tuple((int(v), tuple(s)) for v, s in migrations)
        try:
            if readonly:  # read what is there; a store that needs migrating is migrated by the next writer
                self._con = connect_ro(self.path, timeout_s)
                self._check_version()
            else:
                self._con = connect(self.path, timeout_s)
                migrate(self._con, self.path, self._migrations)
        except sqlite3.Error as exc:
            raise db_error(exc, self.path) from None

    def _check_version(self) -> None:
        current = schema_version(self._con)
        pending_migrations(current, self._migrations, results_db_newer(self.path))
        if current == 0 and self._migrations:
            raise InputError(f"no results in {self.path} yet; run 'harness run' first or give --db PATH")

    # -- plumbing
    def close(self) -> None:
        self._con.close()


    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self._con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise db_error(exc, self.path) from None

    def _tx(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run statements in one transaction: all or nothing, stop signals held until it is over."""
        transaction(self._con, self.path, statements)

    def schema_version(self) -> int:
        return schema_version(self._con)

    # -- runs
    def create_run(self, run: RunRecord) -> None:
        """Insert a run and its ``created`` event."""
        cols = [f.name for f in fields(RunRecord)]
        vals = [getattr(run, c) for c in cols]
        vals = [int(v) if isinstance(v, bool) else v for v in vals]
        self._tx([
            (f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals),
            ("INSERT INTO run_events (run_id, seq, event, detail, t_utc) VALUES (?, ?, ?, ?, ?)",
             (run.run_id, 0, "created", "", utc_now())),
        ])

    def add_event(self, run_id: str, event: str, detail: str = "") -> None:
        """Append an event (``started``, ``resumed``, ``interrupted``, ``complete``, ``failed``).

        Stop signals are held from reading the next sequence number to the commit: an event is recorded
        whole, even when Ctrl-C comes again while the ``interrupted`` event is being written.
        """
        with deferred_signals():
            for _ in range(5):
                got = self._exec("SELECT MAX(seq) FROM run_events WHERE run_id = ?", (run_id,))
                seq = (got[0][0] if got and got[0][0] is not None else -1) + 1
                try:
                    self._tx([("INSERT INTO run_events (run_id, seq, event, detail, t_utc) VALUES (?, ?, ?, ?, ?)",
                               (run_id, seq, event, detail, utc_now()))])
                    return
                except DuplicateError:  # another writer took that seq; take the next
                    continue
        raise StoreError(f"could not append event {event!r} to run {run_id}")

    def events(self, run_id: str) -> list[tuple[str, str, str]]:
        """``(event, detail, t_utc)`` in order."""
        return [(e, d, t) for e, d, t in self._exec(
            "SELECT event, detail, t_utc FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,))]

    def run_status(self, run_id: str) -> str:
        ev = self.events(run_id)
        return ev[-1][0] if ev else "unknown"

    def get_run(self, run_id: str) -> RunRecord:
        """The run; InputError listing the closest ids when unknown.  A unique prefix is accepted."""
        cols = [f.name for f in fields(RunRecord)]
        rows = self._exec(f"SELECT {', '.join(cols)} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            rows = self._exec(f"SELECT {', '.join(cols)} FROM runs WHERE run_id LIKE ? ORDER BY run_id",
                              (run_id.replace("%", "").replace("_", "") + "%",))
            if len(rows) != 1:
                known = [r[0] for r in self._exec("SELECT run_id FROM runs ORDER BY created_utc DESC")][:5]
                hint = f"; recent runs: {', '.join(known)}" if known else "; the store has no runs yet"
                what = "is ambiguous" if rows else "not found"
                raise InputError(f"run {run_id!r} {what} in {self.path}{hint}")
        return run_from_row(cols, rows[0])

    def list_runs(self, device: str | None = None) -> list[RunSummary]:
        """Runs, oldest first; ``device`` matches the device name or fingerprint."""
        cols = [f.name for f in fields(RunRecord)]
        sql = f"SELECT {', '.join(cols)} FROM runs"
        params: list[Any] = []
        if device:
            sql += " WHERE device = ? OR device_fingerprint = ?"
            params = [device, device]
        out = []
        for row in self._exec(sql + " ORDER BY created_utc, run_id", params):
            run = run_from_row(cols, row)
            counts = dict(self._exec("SELECT status, COUNT(*) FROM windows WHERE run_id = ? AND kind = ? "
                                     "GROUP BY status", (run.run_id, "inference")))
            n_models = self._exec("SELECT COUNT(*) FROM models WHERE run_id = ?", (run.run_id,))[0][0]
            out.append(RunSummary(run, self.run_status(run.run_id), int(n_models),
                                  int(counts.get("valid", 0)), int(sum(v for k, v in counts.items() if k != "valid"))))
        return out

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
        cols = [f.name for f in fields(ModelRecord)]
        self._tx([(f"INSERT INTO models ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   [getattr(model, c) for c in cols])])

    def models(self, run_id: str) -> list[ModelRecord]:
        cols = [f.name for f in fields(ModelRecord)]
        rows = self._exec(f"SELECT {', '.join(cols)} FROM models WHERE run_id = ? ORDER BY level_pct", (run_id,))
        return [ModelRecord(**dict(zip(cols, r, strict=True))) for r in rows]

    # -- windows
    def add_window(self, w: WindowRecord) -> None:
        """Append one window; DuplicateError if ``(run_id, seq)`` is already recorded."""
        cols = [f.name for f in fields(WindowRecord)]
        self._tx([(f"INSERT INTO windows ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                   [getattr(w, c) for c in cols])])

    def windows(self, run_id: str, kind: str | None = None) -> list[WindowRecord]:
        cols = [f.name for f in fields(WindowRecord)]
        sql = f"SELECT {', '.join(cols)} FROM windows WHERE run_id = ?"
        params: list[Any] = [run_id]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self._exec(sql + " ORDER BY seq", params)
        return [WindowRecord(**dict(zip(cols, r, strict=True))) for r in rows]

    def window_seqs(self, run_id: str) -> set[int]:
        return {int(r[0]) for r in self._exec("SELECT seq FROM windows WHERE run_id = ?", (run_id,))}

"""The results store: SQLite by default, schema versioned with migrations, append-only.

One database (``results/harness.db`` unless ``--db``) holds runs, their models, an append-only
event log per run and one record per measurement window.  Raw traces live beside the database as
compressed ``.npz`` files named by the sha256 of their content and referenced from windows by that
hash.  Nothing is ever updated or deleted: a run's status is its latest event; a window is written
once, in one transaction, after its trace file is safely on disk, and ``(run_id, seq)`` is its
primary key, so a resumed run can neither lose nor duplicate a window.

SQL is kept portable (standard types, no AUTOINCREMENT, no ``INSERT OR ...``, no SQLite-only
functions; parameters only through :meth:`Store._exec`) so another DB-API database can take its
place: only :func:`_connect` and the pragmas in it are SQLite-specific.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import sqlite3
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.errors import ArtifactError, HarnessError, InputError

log = logging.getLogger(__name__)

DEFAULT_DB = Path("results") / "harness.db"

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
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class StoreError(HarnessError):
    """The results database is locked, full or unwritable (exit code 1; nothing is half-written)."""


def utc_now() -> str:
    """ISO-8601 UTC time with microseconds (sortable as text)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC time plus 24 random bits): sortable and unique."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


_CODE_VERSION: str | None = None


def code_version() -> str:
    """``harness <version>`` plus the git commit when run from a checkout."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        ver = f"harness {__version__}"
        root = Path(__file__).resolve().parent.parent
        if (root / ".git").exists():
            try:
                head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                      capture_output=True, text=True, timeout=5, check=False).stdout.strip()
                if head:
                    ver += f" {head}"
            except (OSError, subprocess.SubprocessError):
                pass
        _CODE_VERSION = ver
    return _CODE_VERSION


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """One run: where, with what, how (the plan as JSON)."""

    run_id: str
    device: str
    device_fingerprint: str
    fingerprint_json: str
    virtual: bool
    measures_energy: bool
    instrument: str
    plan_json: str
    code_version: str = field(default_factory=code_version)
    created_utc: str = field(default_factory=utc_now)


@dataclass(frozen=True)
class ModelRecord:
    """One model of a run: the base model (``level_pct`` 0) or a specialist."""

    run_id: str
    model_key: str
    level_pct: int
    classes: str
    method: str
    flops: int
    flops_pruned_pct: float
    model_hash: str
    artifact_hash: str
    artifact_path: str
    accuracy_pct: float | None = None


@dataclass(frozen=True)
class WindowRecord:
    """One measurement window (``kind`` ``inference`` or ``idle``), valid or invalid with a reason.

    ``time_ms`` is the mean wall-clock time per inference inside the window; ``energy_j`` the
    energy measured over the busy part (``busy_s``) of an inference window or the whole of an idle
    window; ``mean_power_w`` the mean power over that same span.  Energy keys are None where
    nothing measures energy.
    """

    run_id: str
    seq: int
    round_idx: int
    kind: str
    model_key: str
    status: str
    reason: str = ""
    t_start_mono_s: float | None = None
    duration_s: float | None = None
    n_inferences: int = 0
    busy_s: float | None = None
    time_ms: float | None = None
    energy_j: float | None = None
    mean_power_w: float | None = None
    temperature_c: float | None = None
    trace_hash: str = ""
    latencies_hash: str = ""
    model_hash: str = ""
    artifact_hash: str = ""
    device_fingerprint: str = ""
    instrument: str = ""
    code_version: str = field(default_factory=code_version)
    settings_json: str = "{}"
    created_utc: str = field(default_factory=utc_now)

    @property
    def valid(self) -> bool:
        return self.status == "valid"


@dataclass(frozen=True)
class RunSummary:
    """A run with its latest status and window counts (for ``harness runs``)."""

    run: RunRecord
    status: str
    n_models: int
    valid_windows: int
    invalid_windows: int


# --------------------------------------------------------------------------- traces


def _canonical_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class TraceStore:
    """Content-addressed compressed array files: ``<root>/<h[:2]>/<h>.npz``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npz"

    def put(self, arrays: dict[str, np.ndarray]) -> str:
        """Write (once) and return the sha256 of the arrays' canonical content."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        digest = _canonical_hash(arrays)
        p = self.path(digest)
        if p.is_file():
            return digest
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _os_error(exc, p) from None
        return digest

    def get(self, digest: str) -> dict[str, np.ndarray]:
        """Read a trace back and check its hash; ArtifactError if missing or altered."""
        p = self.path(digest)
        if not p.is_file():
            raise ArtifactError(f"trace {digest[:12]} not found at {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/ValueError/OSError: a damaged file
            raise ArtifactError(f"trace file {p} is damaged ({exc})") from None
        if _canonical_hash(arrays) != digest:
            raise ArtifactError(f"trace file {p} does not match its hash (altered or damaged)")
        return arrays


def _os_error(exc: OSError, where: Path | str) -> HarnessError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing {where}; free space and resume the run")
    return StoreError(f"cannot write {where}: {exc.strerror or exc}")


# --------------------------------------------------------------------------- the store


#: Tables every harness results database has (its marker); any other application's SQLite file lacks them.
_MARKER_TABLES = frozenset({"schema_version", "runs", "run_events", "models", "windows"})


def _connect_ro(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``; ``immutable=1`` when even the WAL index cannot be opened)."""
    from urllib.parse import quote

    base = f"file:{quote(str(path.resolve()))}?mode=ro"
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
    """Check a ``--db`` path before anything is written; InputError/ArtifactError (exit 2) with one line.

    Refused: a directory, a path under a file, a file that is not SQLite, and another application's
    SQLite file (it has tables but not the harness's marker tables).  The existing file is only read
    (read-only connection), so a foreign database is neither given tables nor switched to WAL.
    """
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
        con = _connect_ro(p, timeout_s)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            app_id = int(con.execute("PRAGMA application_id").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _db_error(exc, p) from None
    tables = {t for t in tables if not t.startswith("sqlite_")}
    if app_id or not (tables <= {"schema_version"} or _MARKER_TABLES <= tables):  # (a new store starts so)
        shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        raise InputError(f"--db {p}: another application's SQLite database (tables: {shown or 'none'}), "
                         "not a harness results database; give another --db")
    return p


def _connect(path: Path, timeout_s: float, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return _connect_ro(path, timeout_s)
    con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
    con.execute("PRAGMA foreign_keys=ON")
    try:
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # read-only media: stay with the default journal
        pass
    con.execute("PRAGMA synchronous=FULL")
    return con


def _db_error(exc: sqlite3.Error, path: Path) -> HarnessError:
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


class Store:
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
                raise _os_error(exc, self.path.parent) from None
        self.traces = TraceStore(traces_dir if traces_dir is not None else self.path.parent / "traces")
        self._migrations = tuple((int(v), tuple(s)) for v, s in migrations)
        try:
            self._con = _connect(self.path, timeout_s, readonly)
            if readonly:  # read what is there; a store that needs migrating is migrated by the next writer
                self._check_version()
            else:
                self._migrate()
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None

    # -- plumbing
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self._con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None

    def _tx(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run statements in one transaction: all or nothing."""
        try:
            self._con.execute("BEGIN")
            try:
                for sql, params in statements:
                    self._con.execute(sql, tuple(params))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(str(exc)) from None
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path) from None

    def schema_version(self) -> int:
        rows = self._con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchall()
        if not rows:
            return 0
        got = self._con.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(got[0] or 0)

    def _check_version(self) -> None:
        current = self.schema_version()
        latest = self._migrations[-1][0] if self._migrations else 0
        if current > latest:
            raise ArtifactError(f"results database {self.path} has schema version {current}, newer than this "
                                f"harness ({latest}); upgrade the harness")
        if current == 0 and self._migrations:
            raise InputError(f"no results in {self.path} yet; run 'harness run' first or give --db PATH")

    def _migrate(self) -> None:
        current = self.schema_version()
        if current == 0:
            self._con.execute("CREATE TABLE IF NOT EXISTS schema_version "
                              "(version INTEGER NOT NULL PRIMARY KEY, applied_utc TEXT NOT NULL)")
        latest = self._migrations[-1][0] if self._migrations else 0
        if current > latest:
            raise ArtifactError(f"results database {self.path} has schema version {current}, newer than this "
                                f"harness ({latest}); upgrade the harness")
        for version, statements in self._migrations:
            if version <= current:
                continue
            log.info("migrating %s to schema version %d", self.path, version)
            self._con.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    self._con.execute(sql)
                self._con.execute("INSERT INTO schema_version (version, applied_utc) VALUES (?, ?)",
                                  (version, utc_now()))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

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
        """Append an event (``started``, ``resumed``, ``interrupted``, ``complete``, ``failed``)."""
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
        return _run_from_row(cols, rows[0])

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
            run = _run_from_row(cols, row)
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


class DuplicateError(StoreError):
    """A record with the same key is already stored (append-only store)."""


def _run_from_row(cols: list[str], row: tuple) -> RunRecord:
    d = dict(zip(cols, row, strict=True))
    d["virtual"] = bool(d["virtual"])
    d["measures_energy"] = bool(d["measures_energy"])
    return RunRecord(**d)


def record_dict(rec: Any) -> dict[str, Any]:
    """A record as a plain dict (JSON-ready)."""
    return asdict(rec)


def fingerprint_id(fingerprint: dict[str, Any]) -> tuple[str, str]:
    """``(short id, canonical JSON)`` of a device fingerprint dict."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], text

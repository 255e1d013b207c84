"""The sweep's cell store: finished jobs in SQLite, by the rules of the results store.

- Append-only: a job is written once with a plain ``INSERT``; writing the same job again is a
  :class:`~harness.store.DuplicateError` and leaves the stored one as it was.  ``--fresh`` does not
  delete: it opens a new *epoch* of a context, and only the latest epoch's jobs count.
- Versioned: ``PRAGMA user_version`` holds the schema version.  :data:`MIGRATIONS` bring an older store up
  to date (in one transaction each); a newer one is refused.  Stores written before the version lived in
  ``user_version`` (a ``meta`` table with ``schema_version`` 1) are version 1; ``meta`` is kept in step so
  that such older harnesses refuse a newer store instead of misreading it.
- Parameterised SQL only; one writer (the sweep's parent process).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from harness.errors import ArtifactError
from harness.store import DuplicateError, StoreError
from harness.store_schema import pending_migrations

log = logging.getLogger(__name__)


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
_TYPES = {"context": "TEXT", "subset": "TEXT", "level": "REAL", "correct": "INTEGER", "n": "INTEGER",
          "flops": "INTEGER", "flops_pruned_pct": "REAL", "build_ms": "REAL", "eval_s": "REAL", "cpu_s": "REAL"}


def _create_v1(db: sqlite3.Connection) -> None:
    """Version 1: one row per job and context (the layout of the first sweeps)."""
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", "1"))
    db.execute(
        "CREATE TABLE jobs (context TEXT NOT NULL, subset TEXT NOT NULL, level REAL NOT NULL, "
        "correct INTEGER NOT NULL, n INTEGER NOT NULL, flops INTEGER NOT NULL, flops_pruned_pct REAL NOT NULL, "
        "build_ms REAL NOT NULL, eval_s REAL NOT NULL, finished_at TEXT NOT NULL, "
        "cpu_s REAL NOT NULL DEFAULT 0, PRIMARY KEY (context, subset, level))")


def _to_v2(db: sqlite3.Connection) -> None:
    """Version 2: epochs (``--fresh`` appends one instead of deleting jobs); CPU time always present
    (the first version-1 stores lack ``cpu_s``: their jobs get 0)."""
    has_cpu = "cpu_s" in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    cols = ", ".join(f"{c} {_TYPES[c]} NOT NULL" for c in _COLUMNS)
    db.execute(f"CREATE TABLE jobs_v2 ({cols}, epoch INTEGER NOT NULL, finished_at TEXT NOT NULL, "
               "PRIMARY KEY (context, epoch, subset, level))")
    old = ", ".join(c if c != "cpu_s" or has_cpu else "0" for c in _COLUMNS)
    db.execute(f"INSERT INTO jobs_v2 ({', '.join(_COLUMNS)}, epoch, finished_at) "
               f"SELECT {old}, 0, finished_at FROM jobs")
    db.execute("DROP TABLE jobs")
    db.execute("ALTER TABLE jobs_v2 RENAME TO jobs")
    db.execute("CREATE TABLE epochs (context TEXT NOT NULL, epoch INTEGER NOT NULL, started_at TEXT NOT NULL, "
               "PRIMARY KEY (context, epoch))")


#: Ordered migrations: (version, step).  A store at version v gets every later step.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = ((1, _create_v1), (2, _to_v2))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _subset_text(subset: Sequence[int]) -> str:
    return ",".join(str(int(c)) for c in subset)


class CellStore:
    """SQLite store of finished jobs (see the module docstring for its rules)."""

    def __init__(self, path: str | Path,
                 migrations: Sequence[tuple[int, Callable[[sqlite3.Connection], None]]] = MIGRATIONS):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"sweep store {self.path} is not a usable SQLite database ({exc}); "
                                "move it away or pass another --out") from None

    def schema_version(self) -> int:
        """``user_version``, or for stores from before it was kept there, the ``meta`` table's version."""
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", ("schema_version",)).fetchone()
            if row is not None:
                version = max(version, int(row[0]))
        return version

    def _migrate(self, migrations: Sequence[tuple[int, Callable[[sqlite3.Connection], None]]]) -> None:
        def newer(current: int, latest: int) -> str:
            return (f"sweep store {self.path} has schema {current}, newer than this harness ({latest}); "
                    "upgrade the harness or use another --out")

        for version, step in pending_migrations(self.schema_version(), migrations, newer):
            log.info("migrating sweep store %s to schema version %d", self.path, version)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                step(self.db)
                self.db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(version), "schema_version"))
                self.db.execute(f"PRAGMA user_version = {int(version)}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _epoch(self, context: str) -> int:
        row = self.db.execute("SELECT MAX(epoch) FROM epochs WHERE context = ?", (context,)).fetchone()
        return int(row[0]) if row[0] is not None else 0

    def load(self, context: str) -> dict[tuple[tuple[int, ...], float], JobRecord]:
        """Every finished job of a context's latest epoch, by ``(subset, level)``."""
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE context = ? AND epoch = ?",
                               (context, self._epoch(context))).fetchall()
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
        sql = (f"INSERT INTO jobs ({', '.join(_COLUMNS)}, epoch, finished_at) "
               f"VALUES ({', '.join('?' * (len(_COLUMNS) + 2))})")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                epochs: dict[str, int] = {}
                for r in records:
                    if r.context not in epochs:
                        epochs[r.context] = self._epoch(r.context)
                    row = list(astuple(r))
                    row[1] = _subset_text(r.subset)
                    self.db.execute(sql, (*row, epochs[r.context], now))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(f"sweep store {self.path}: a job is already stored ({exc}); is another sweep "
                                 "writing to the same --out?") from None
        except sqlite3.Error as exc:
            raise StoreError(f"sweep store {self.path}: {exc}") from None

    def forget(self, context: str) -> int:
        """Start a new epoch of a context (``--fresh``): its stored jobs no longer count (they stay in the
        file).  Returns how many jobs were set aside."""
        n = len(self.load(context))
        try:
            self.db.execute("INSERT INTO epochs (context, epoch, started_at) VALUES (?, ?, ?)",
                            (context, self._epoch(context) + 1, _now()))
        except sqlite3.Error as exc:
            raise StoreError(f"sweep store {self.path}: {exc}") from None
        return n

    def close(self) -> None:
        self.db.close()

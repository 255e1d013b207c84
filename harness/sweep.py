"""The accuracy sweep (issue 3): the paper's Table 2 for any method, with 95% confidence intervals.

For each subset size, ``subsets`` seeded random class subsets; for each level, a specialist built by
:func:`specialist.build.build_specialist` and its accuracy on the test images of its classes; plus the
"None" column (the base model with non-target outputs removed).  Cells are mean and 95% CI half-width
(Student t) over the subsets, exactly in the layout of Table 2.

Work is cut into tasks (a few subsets of one size, all their levels); worker processes build the
specialists of a task and evaluate them with :mod:`specialist.evaluate` (shared CONV1/CCCP1 prefix per image
chunk).  Every finished task's results go to a SQLite store at once, keyed by everything they depend on
(base model, statistics artifact, method definition, builder code, test images), so an interrupted sweep
continues where it stopped and a changed input never reuses stale numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from harness.cliutil import atomic_write_bytes
from harness.errors import ArtifactError, UsageError
from harness.options import options_from_mapping, read_toml_table

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
N_CLASSES = 10
SIZES_RANGE = (2, 10)
DEFAULT_SIZES: tuple[int, ...] = tuple(range(2, 11))
DEFAULT_LEVELS: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0, 50.0)
QUICK_SUBSETS = 3
QUICK_PER_CLASS = 200

#: The paper's Table 2 (Guo & Potkonjak 2017; ``../shared/paper/table2_accuracy.csv``): per subset size,
#: per level (% channels removed) ``(mean %, 95% CI half-width %)``; level 0 is the "None" column.
#: Levels 10..50 are the paper's 14.3/27.9/38.9/48.6/57.8% FLOPs pruned.
PAPER_LEVEL_FLOPS_PCT: dict[float, float] = {50.0: 57.8, 40.0: 48.6, 30.0: 38.9, 20.0: 27.9, 10.0: 14.3}
_PAPER_ROWS = """\
2,84.1,6.7,90.8,4.0,95.2,2.4,96.1,3.1,97.7,1.5,98.5,0.6
3,72.7,7.0,84.0,4.5,91.1,2.6,93.9,1.9,95.4,1.9,96.4,1.2
4,62.0,9.0,76.0,7.6,85.8,4.4,90.8,2.7,93.3,2.1,95.1,1.0
5,59.8,2.5,74.9,3.2,83.8,2.6,89.3,1.7,92.4,1.2,94.2,0.8
6,55.1,3.4,72.5,2.9,82.7,1.6,88.7,0.8,92.0,0.7,92.9,0.9
7,47.0,5.6,68.9,2.5,79.5,1.8,86.0,1.5,89.6,1.2,91.8,0.8
8,47.4,2.9,67.7,1.2,78.7,1.3,86.3,0.7,89.8,0.7,90.7,0.6
9,36.3,2.2,65.8,1.5,75.4,1.2,83.7,0.7,88.0,0.5,90.3,0.6
10,28.7,,62.6,,74.3,,82.7,,87.2,,89.6,
"""
_PAPER_CSV_LEVELS = (50.0, 40.0, 30.0, 20.0, 10.0, 0.0)


def _parse_paper_rows(text: str) -> dict[int, dict[float, tuple[float, float]]]:
    out: dict[int, dict[float, tuple[float, float]]] = {}
    for line in text.strip().splitlines():
        parts = line.split(",")
        row = {}
        for i, lvl in enumerate(_PAPER_CSV_LEVELS):
            m, c = parts[1 + 2 * i], parts[2 + 2 * i]
            row[lvl] = (float(m), float(c) if c.strip() else math.nan)
        out[int(parts[0])] = row
    return out


PAPER_TABLE2: dict[int, dict[float, tuple[float, float]]] = _parse_paper_rows(_PAPER_ROWS)


def load_paper_table(path: str | Path) -> dict[int, dict[float, tuple[float, float]]]:
    """Read a Table 2 CSV in the paper's layout (``classes,p57.8_mean,p57.8_ci,...,none_mean,none_ci``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"paper table {p}: cannot read ({exc})") from None
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("classes,"):
        raise UsageError(f"paper table {p}: expected a header 'classes,p57.8_mean,...' as in table2_accuracy.csv")
    try:
        return _parse_paper_rows("\n".join(lines[1:]))
    except (ValueError, IndexError):
        raise UsageError(f"paper table {p}: rows are not classes + 12 numbers as in table2_accuracy.csv") from None


# --------------------------------------------------------------------------- options


def _default_method() -> str:
    from specialist.methods import DEFAULT_METHOD

    return DEFAULT_METHOD


def _parse_levels(text: str) -> tuple[float, ...]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"--levels: {part!r} is not a number (in {text!r}); give levels like 10,20,30") from None
        if not 0 < v < 100 or not math.isfinite(v):
            raise UsageError(f"--levels: {part} is out of range; levels are percent of channels removed, "
                             "above 0 and below 100 (the unpruned column is always included)")
        out.append(v)
    return tuple(sorted(set(out)))


def parse_levels(text: str) -> tuple[float, ...]:
    """``"10,20,30"`` -> ``(10.0, 20.0, 30.0)`` (sorted, unique, each in (0, 100)); UsageError otherwise."""
    if text is None or not str(text).strip():
        raise UsageError("--levels: empty list; give levels like 10,20,30,40,50")
    return _parse_levels(text)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"2-10"`` or ``"2,5,10"`` -> sorted unique subset sizes in 2..10; UsageError otherwise."""
    from harness.cliutil import parse_int_list

    return tuple(sorted(set(parse_int_list(text, "--sizes", *SIZES_RANGE))))


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep and how.  Loadable from TOML (a ``[sweep]`` table with these field names)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    levels: tuple[float, ...] = DEFAULT_LEVELS
    subsets: int = 10
    seed: int = 0
    methods: tuple[str, ...] = field(default_factory=lambda: (_default_method(),))
    per_class: int | None = None  # test images per class (None: all)
    exact_only: bool = False
    engine: str = "torch-cl"
    workers: int = 2  # worker processes (1: evaluate in this process)
    threads: int = 0  # torch threads per worker (0: 1 with several workers, torch's default with one)
    chunk_images: int = 32
    task_jobs: int = 30  # pruned jobs (subset x level) per task: the unit of work and of resumption

    def __post_init__(self) -> None:
        from specialist.evaluate import ENGINES

        sizes = tuple(int(s) for s in self.sizes)
        if not sizes or any(not SIZES_RANGE[0] <= s <= SIZES_RANGE[1] for s in sizes):
            raise UsageError(f"sizes {list(sizes)}: subset sizes must be within {SIZES_RANGE[0]}-{SIZES_RANGE[1]}")
        object.__setattr__(self, "sizes", tuple(sorted(set(sizes))))
        levels = tuple(float(v) for v in self.levels)
        if not levels or any(not 0 < v < 100 for v in levels):
            raise UsageError(f"levels {list(levels)}: each level must be above 0 and below 100 (percent removed)")
        object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        if isinstance(self.methods, str):
            object.__setattr__(self, "methods", tuple(m.strip() for m in self.methods.split(",") if m.strip()))
        if not self.methods:
            raise UsageError("methods: give at least one method name")
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"methods {list(self.methods)}: a method is named twice")
        for name, lo in (("subsets", 1), ("workers", 1), ("chunk_images", 1), ("task_jobs", 1), ("threads", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= {lo}, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        if self.per_class is not None and (isinstance(self.per_class, bool) or not isinstance(self.per_class, int)
                                           or self.per_class < 1):
            raise UsageError(f"--per-class must be a whole number >= 1, got {self.per_class!r}")
        if self.engine not in ENGINES:
            raise UsageError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")

    def replace(self, **changes: Any) -> SweepOptions:
        """A copy with the given fields changed (``None`` values are ignored)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **clean) if clean else self

    def quick(self) -> SweepOptions:
        """The ``--quick`` variant: 3 subsets, 200 test images per class."""
        return dataclasses.replace(self, subsets=QUICK_SUBSETS, per_class=QUICK_PER_CLASS)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepOptions:
        """Options from a TOML file: ``[sweep]`` with any of the field names (``sizes`` may be "2-10")."""
        table = read_toml_table(path, "sweep", "sweep options", UsageError)
        if isinstance(table.get("sizes"), str):
            table["sizes"] = parse_sizes(table["sizes"])
        if isinstance(table.get("levels"), str):
            table["levels"] = parse_levels(table["levels"])
        return options_from_mapping(cls, table, f"sweep options {path}", UsageError)


# --------------------------------------------------------------------------- subsets and statistics


def draw_subsets(size: int, count: int, seed: int, n_classes: int = N_CLASSES) -> tuple[list[tuple[int, ...]], str]:
    """``count`` distinct random class subsets of ``size`` (sorted tuples), reproducible from ``seed``.

    A permutation of all ``C(n_classes, size)`` subsets, seeded by ``(seed, size)``, cut to ``count``: so the
    first subsets do not change when more are asked for, and sizes are independent of each other.  Asking
    for more than exist returns them all and a note saying so (else the note is empty).
    """
    if not 1 <= size <= n_classes:
        raise UsageError(f"subset size {size} is outside 1-{n_classes}")
    combos = np.asarray(list(itertools.combinations(range(n_classes), size)), dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(size)])
    order = rng.permutation(len(combos))
    note = ""
    if count > len(combos):
        note = (f"size {size}: only {len(combos)} distinct subset{'s' if len(combos) != 1 else ''} of "
                f"{n_classes} classes exist; using {'them all' if len(combos) > 1 else 'it'} instead of {count}")
        count = len(combos)
    return [tuple(int(c) for c in combos[i]) for i in order[:count]], note


def mean_ci(values: np.ndarray, axis: int = -1, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, Student-t confidence half-width and count along ``axis``, ignoring NaN.

    Half-width = t_{(1+confidence)/2, n-1} * s / sqrt(n) with the sample standard deviation s; NaN where
    fewer than two values (no interval from one subset: Table 2's 10-class row).
    """
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    n = ok.sum(axis=axis)
    total = np.where(ok, v, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(ok, v - np.expand_dims(mean, axis), 0.0)
        var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
        tq = student_t.ppf(0.5 + confidence / 2.0, np.maximum(n - 1, 1))
        half = np.where(n >= 2, tq * np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, half, n


# --------------------------------------------------------------------------- store


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def builder_code_hash() -> str:
    """sha256 of the builder's sources (every ``specialist/*.py`` the build can depend on): stored results
    are reused only while the code that made them is unchanged."""
    import specialist

    root = Path(specialist.__file__).resolve().parent
    skip = {"evaluate.py", "export.py", "manifest.py", "specialist_io.py", "accuracy.py", "data.py"}
    h = hashlib.sha256()
    for f in sorted(root.glob("*.py")):
        if f.name in skip:
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the exact test images and labels a sweep evaluates on."""
    h = hashlib.sha256()
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


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


class CellStore:
    """SQLite store of finished jobs (parameterised SQL; one writer: the sweep's parent process)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", ("schema_version",)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"sweep store {self.path} is not a usable SQLite database ({exc}); "
                                "move it away or pass another --out") from None
        if row is None:
            self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("schema_version", str(SCHEMA_VERSION)))
        elif int(row[0]) > SCHEMA_VERSION:
            raise ArtifactError(f"sweep store {self.path} has schema {row[0]}, newer than this harness "
                                f"({SCHEMA_VERSION}); upgrade the harness or use another --out")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (context TEXT NOT NULL, subset TEXT NOT NULL, level REAL NOT NULL, "
            "correct INTEGER NOT NULL, n INTEGER NOT NULL, flops INTEGER NOT NULL, flops_pruned_pct REAL NOT NULL, "
            "build_ms REAL NOT NULL, eval_s REAL NOT NULL, finished_at TEXT NOT NULL, "
            "cpu_s REAL NOT NULL DEFAULT 0, PRIMARY KEY (context, subset, level))")
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")}
        if "cpu_s" not in cols:  # stores written before CPU time was recorded
            self.db.execute("ALTER TABLE jobs ADD COLUMN cpu_s REAL NOT NULL DEFAULT 0")
        self.db.commit()

    @staticmethod
    def _subset_text(subset: Sequence[int]) -> str:
        return ",".join(str(int(c)) for c in subset)

    def load(self, context: str) -> dict[tuple[tuple[int, ...], float], JobRecord]:
        """Every finished job of a context, by ``(subset, level)``."""
        rows = self.db.execute(
            "SELECT subset, level, correct, n, flops, flops_pruned_pct, build_ms, eval_s, cpu_s FROM jobs "
            "WHERE context = ?", (context,)).fetchall()
        out = {}
        for subset, level, correct, n, flops, pct, build_ms, eval_s, cpu_s in rows:
            key = tuple(int(c) for c in subset.split(","))
            out[(key, float(level))] = JobRecord(context, key, float(level), int(correct), int(n), int(flops),
                                                 float(pct), float(build_ms), float(eval_s), float(cpu_s))
        return out

    def put(self, records: Sequence[JobRecord]) -> None:
        """Save finished jobs at once (committed before returning)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.db.executemany(
            "INSERT OR REPLACE INTO jobs (context, subset, level, correct, n, flops, flops_pruned_pct, build_ms, "
            "eval_s, finished_at, cpu_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.context, self._subset_text(r.subset), float(r.level), int(r.correct), int(r.n), int(r.flops),
              float(r.flops_pruned_pct), float(r.build_ms), float(r.eval_s), now, float(r.cpu_s))
             for r in records])
        self.db.commit()

    def forget(self, context: str) -> int:
        """Delete a context's jobs (``--fresh``); returns how many."""
        cur = self.db.execute("DELETE FROM jobs WHERE context = ?", (context,))
        self.db.commit()
        return int(cur.rowcount)

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- jobs and workers


@dataclass(frozen=True)
class Job:
    """Build (unless level 0) and evaluate one specialist: ``method`` (None for level 0) on ``subset``."""

    context: str
    subset: tuple[int, ...]
    level: float
    method: Any = None  # specialist.methods.Method (picklable)

    def cost(self, per_class_images: int) -> float:
        """Relative work: images x the suffix's share of FLOPs (about (1 - level)^2)."""
        return len(self.subset) * per_class_images * (1.0 - self.level / 100.0) ** 2


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker loads once: base model, statistics artifact, test images."""

    model_path: str | None
    stats_path: str | None
    data_dir: str
    per_class: int | None
    exact_only: bool
    engine: str
    threads: int
    chunk_images: int


_WORKER_STATE: dict[str, Any] = {}


def _worker_state(setup: WorkerSetup) -> dict[str, Any]:
    key = repr(setup)
    if _WORKER_STATE.get("key") != key:
        from specialist.build import load_default_stats
        from specialist.model import load_weights
        from specialist.stats import load_stats

        base = load_weights(setup.model_path)
        stats = (load_stats(setup.stats_path, expect_model_hash=base.content_hash()) if setup.stats_path
                 else load_default_stats(base))
        _WORKER_STATE.clear()
        _WORKER_STATE.update(key=key, base=base, stats=stats, test=load_test_images(setup))
    return _WORKER_STATE


def load_test_images(setup: WorkerSetup):
    """The test images a sweep evaluates on (per-class limit and exact-only applied)."""
    from specialist.data import load_split

    test = load_split("test", setup.data_dir)
    return test.select(range(N_CLASSES), per_class=setup.per_class, exact_only=setup.exact_only)


def _init_worker(threads: int) -> None:
    import signal

    import torch

    # Ctrl-C goes to the whole process group: the parent handles it (and stops the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(max(1, threads))


def run_task(setup: WorkerSetup, jobs: Sequence[Job]) -> list[JobRecord]:
    """Build and evaluate one task's jobs (in a worker process or in this one)."""
    from specialist.build import build_specialist
    from specialist.evaluate import EvalModel, EvalOptions, evaluate_models
    from specialist.flops import BASE_FLOPS

    cpu0 = time.process_time()
    st = _worker_state(setup)
    base, stats, test = st["base"], st["stats"], st["test"]
    models, meta = [], []
    for job in jobs:
        cls = list(job.subset)
        if job.level == 0:
            models.append(EvalModel(base, cls, columns=cls, outputs=cls))
            flops = BASE_FLOPS - _cccp6_flops(N_CLASSES - len(cls))
            meta.append((flops, 0.0))
        else:
            spec = build_specialist(cls, job.level, job.method, stats=stats, base=base)
            models.append(EvalModel(spec.weights, spec.classes))
            meta.append((int(spec.flops), float(spec.build_ms)))
    res = evaluate_models(base, models, test, EvalOptions(engine=setup.engine, chunk_images=setup.chunk_images))
    share = res.seconds / max(len(jobs), 1)
    cpu_share = (time.process_time() - cpu0) / max(len(jobs), 1)
    out = []
    for j, job in enumerate(jobs):
        flops, build_ms = meta[j]
        out.append(JobRecord(job.context, job.subset, job.level, int(res.correct[j].sum()), int(res.n[j].sum()),
                             flops, 100.0 * (1.0 - flops / BASE_FLOPS), build_ms, share, cpu_share))
    return out


def _cccp6_flops(removed_outputs: int) -> int:
    """FLOPs of CCCP6 outputs not computed when non-target outputs are removed (the None column)."""
    from specialist.model import NIN_LAYERS

    spec = NIN_LAYERS[-1]
    return 2 * spec.kernel * spec.kernel * spec.in_ch * removed_outputs * spec.in_hw * spec.in_hw


def make_tasks(jobs: Sequence[Job], task_jobs: int, per_class_images: int) -> list[list[Job]]:
    """Cut jobs into tasks, largest first: every unpruned (level 0) job in one task, since they all share one
    forward pass per image; the others per size, whole subsets (all their levels) up to ``task_jobs`` jobs."""
    by_size: dict[int, dict[tuple[int, ...], list[Job]]] = {}
    tasks: list[list[Job]] = []
    unpruned = [j for j in jobs if j.level == 0]
    if unpruned:
        tasks.append(unpruned)
    for job in jobs:
        if job.level != 0:
            by_size.setdefault(len(job.subset), {}).setdefault(job.subset, []).append(job)
    for size in sorted(by_size):
        cur: list[Job] = []
        for subset_jobs in by_size[size].values():
            if cur and len(cur) + len(subset_jobs) > task_jobs:
                tasks.append(cur)
                cur = []
            cur.extend(subset_jobs)
        if cur:
            tasks.append(cur)
    tasks.sort(key=lambda t: -_task_cost(t, per_class_images))
    return tasks


def _task_cost(task: Sequence[Job], per_class_images: int) -> float:
    if all(j.level == 0 for j in task):  # one forward pass per image of the classes involved
        return len({c for j in task for c in j.subset}) * per_class_images
    return sum(j.cost(per_class_images) for j in task)


# --------------------------------------------------------------------------- the sweep


@dataclass
class MethodTable:
    """One method's Table 2: arrays over ``[sizes, levels, subsets]`` (NaN where a subset does not exist)."""

    method: str
    description: str
    definition: dict[str, Any]
    sizes: tuple[int, ...]
    levels: tuple[float, ...]
    acc_pct: np.ndarray  # [S, L, K] accuracy per subset
    none_pct: np.ndarray  # [S, K] unpruned column per subset
    flops_pruned_pct: np.ndarray  # [S, L, K]
    flops: np.ndarray  # [S, L, K]
    n_images: np.ndarray  # [S, L, K]
    build_ms: np.ndarray  # [S, L, K]

    def cells(self) -> dict[str, np.ndarray]:
        """Vectorised cell statistics: mean/ci/n of accuracy, of the drop vs None (paired), FLOPs."""
        mean, ci, n = mean_ci(self.acc_pct)
        drop_mean, drop_ci, _ = mean_ci(self.none_pct[:, None, :] - self.acc_pct)
        none_mean, none_ci, none_n = mean_ci(self.none_pct)
        with np.errstate(invalid="ignore"):
            flops_pct = np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.flops_pruned_pct), axis=-1)
            build = np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.build_ms), axis=-1)
        return {"mean": mean, "ci": ci, "n": n, "drop_mean": drop_mean, "drop_ci": drop_ci,
                "none_mean": none_mean, "none_ci": none_ci, "none_n": none_n,
                "flops_pruned_pct": flops_pct, "build_ms": build}

    def level_flops_pct(self) -> np.ndarray:
        """Mean FLOPs pruned per level over every cell of the table."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.flops_pruned_pct), axis=(0, 2))


@dataclass
class SweepResult:
    """Everything a sweep measured, plus how long it took and what it reused."""

    options: SweepOptions
    subsets: dict[int, list[tuple[int, ...]]]
    tables: list[MethodTable]
    notes: list[str]
    wall_s: float
    jobs_total: int
    jobs_run: int
    jobs_resumed: int
    image_evals: int
    eval_s: float
    cpu_s: float
    build_ms_total: float
    data: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]


def run_sweep(options: SweepOptions, *, model_path: str | None = None, stats_path: str | None = None,
              data_dir: str | None = None, out_dir: str | Path = "results/sweep", fresh: bool = False,
              progress: ProgressFn | None = None) -> SweepResult:
    """Run (or resume) a sweep; results are saved per task in ``out_dir/sweep.sqlite``.

    Everything is checked before any work starts (unknown methods, missing data or artifact: one clear
    error); files other than the store are written by :func:`write_outputs`.
    """
    from specialist.build import load_default_stats
    from specialist.data import resolve_data_dir
    from specialist.methods import get_method
    from specialist.model import load_weights
    from specialist.stats import load_stats

    t0 = time.perf_counter()
    methods = [get_method(name) for name in options.methods]
    base = load_weights(model_path)
    stats = (load_stats(stats_path, expect_model_hash=base.content_hash()) if stats_path
             else load_default_stats(base))
    data_path = str(resolve_data_dir(data_dir))
    setup = WorkerSetup(model_path, stats_path, data_path, options.per_class, options.exact_only, options.engine,
                        options.threads, options.chunk_images)
    test = load_test_images(setup)
    counts = np.bincount(test.y, minlength=N_CLASSES)
    if counts.min() == 0:
        raise UsageError(f"the test images hold no image of class {int(np.argmin(counts))} "
                         f"(per-class {options.per_class}, exact-only {options.exact_only})")
    data_fp = data_fingerprint(test.x, test.y)
    model_hash = base.content_hash()
    stats_hash = str(stats.meta.get("sha256", "")) or _sha(stats.model_hash, stats.counts.tolist())
    code_hash = builder_code_hash()
    ctx_none = _sha("none", model_hash, data_fp)
    ctx_method = [_sha("method", model_hash, data_fp, stats_hash, m.as_dict(), code_hash) for m in methods]
    names = [m.name for m in methods]
    labels = [m.name if names.count(m.name) == 1 else Path(opt).stem for m, opt in zip(methods, options.methods,
                                                                                         strict=True)]

    notes: list[str] = []
    subsets: dict[int, list[tuple[int, ...]]] = {}
    for size in options.sizes:
        subsets[size], note = draw_subsets(size, options.subsets, options.seed)
        if note:
            notes.append(note)
            log.warning("%s", note)

    store = CellStore(Path(out_dir) / "sweep.sqlite")
    try:
        if fresh:
            for ctx in [ctx_none, *ctx_method]:
                store.forget(ctx)
        done: dict[str, dict] = {ctx: store.load(ctx) for ctx in [ctx_none, *ctx_method]}
        jobs: list[Job] = []
        for size in options.sizes:
            for subset in subsets[size]:
                jobs.append(Job(ctx_none, subset, 0.0))
                for mi, m in enumerate(methods):
                    for level in options.levels:
                        jobs.append(Job(ctx_method[mi], subset, float(level), m))
        pending = [j for j in jobs if (j.subset, j.level) not in done[j.context]]
        resumed = len(jobs) - len(pending)
        if resumed:
            log.info("resuming: %d of %d jobs already in %s", resumed, len(jobs), store.path)
        per_class_images = int(counts.mean())
        tasks = make_tasks(pending, options.task_jobs, per_class_images)
        image_evals = 0
        eval_s = cpu_s = 0.0
        finished = 0

        def accept(records: list[JobRecord]) -> None:
            nonlocal image_evals, eval_s, cpu_s, finished
            store.put(records)
            for r in records:
                done[r.context][(r.subset, r.level)] = r
                eval_s += r.eval_s
                cpu_s += r.cpu_s
                image_evals += r.n
            finished += 1
            if progress is not None:
                progress(finished, len(tasks))

        if tasks:
            if options.workers == 1 or len(tasks) == 1:
                import torch

                if options.threads:
                    torch.set_num_threads(options.threads)
                _WORKER_STATE.update(key=repr(setup), base=base, stats=stats, test=test)
                for task in tasks:
                    accept(run_task(setup, task))
            else:
                threads = options.threads or 1
                ctx = multiprocessing.get_context("spawn")
                pool = ProcessPoolExecutor(max_workers=min(options.workers, len(tasks)), mp_context=ctx,
                                           initializer=_init_worker, initargs=(threads,))
                try:
                    futures = {pool.submit(run_task, setup, task) for task in tasks}
                    while futures:
                        finished_now, futures = wait(futures, return_when=FIRST_COMPLETED)
                        for fut in finished_now:
                            accept(fut.result())
                except BaseException:
                    # Interrupted or failed: stop the workers now (finished tasks are already stored).
                    for proc in list((getattr(pool, "_processes", None) or {}).values()):
                        proc.terminate()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
    finally:
        store.close()

    tables = [_method_table(m, labels[mi], options, subsets, done[ctx_none], done[ctx_method[mi]])
              for mi, m in enumerate(methods)]
    build_ms_total = float(sum(np.nansum(t.build_ms) for t in tables))
    return SweepResult(
        options=options, subsets=subsets, tables=tables, notes=notes, wall_s=time.perf_counter() - t0,
        jobs_total=len(jobs), jobs_run=len(pending), jobs_resumed=resumed, image_evals=image_evals,
        eval_s=eval_s, cpu_s=cpu_s, build_ms_total=build_ms_total,
        data={"dir": data_path, "images": int(len(test)), "per_class_images": counts.tolist(),
              "exact_only": options.exact_only},
        hashes={"base_model": model_hash, "stats": stats_hash, "data": data_fp, "builder_code": code_hash},
    )


def _method_table(method, label: str, options: SweepOptions, subsets: dict[int, list[tuple[int, ...]]],
                  none_done: dict, done: dict) -> MethodTable:
    S, L = len(options.sizes), len(options.levels)
    K = max(len(v) for v in subsets.values())
    shape = (S, L, K)
    acc = np.full(shape, np.nan)
    flops_pct = np.full(shape, np.nan)
    flops = np.full(shape, np.nan)
    n_img = np.full(shape, np.nan)
    build = np.full(shape, np.nan)
    none = np.full((S, K), np.nan)
    for si, size in enumerate(options.sizes):
        for k, subset in enumerate(subsets[size]):
            r0 = none_done.get((subset, 0.0))
            if r0 is not None:
                none[si, k] = r0.accuracy_pct
            for li, level in enumerate(options.levels):
                r = done.get((subset, float(level)))
                if r is None:
                    continue
                acc[si, li, k] = r.accuracy_pct
                flops_pct[si, li, k] = r.flops_pruned_pct
                flops[si, li, k] = r.flops
                n_img[si, li, k] = r.n
                build[si, li, k] = r.build_ms
    return MethodTable(label, method.description, method.as_dict(), options.sizes, options.levels,
                       acc, none, flops_pct, flops, n_img, build)


# --------------------------------------------------------------------------- layout and writers


def _fmt(mean: float, ci: float, digits: int = 1) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    if ci is None or not np.isfinite(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def _num(v: Any, digits: int = 3) -> float | None:
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def _level_label(level: float) -> str:
    return f"{level:g}"


def table2_markdown(t: MethodTable) -> str:
    """Table 2 layout: one row per subset size, levels from the most pruned, then the None column."""
    c = t.cells()
    lf = t.level_flops_pct()
    order = list(range(len(t.levels)))[::-1]
    head = ["classes"] + [f"{lf[i]:.1f}% FLOPs (L{_level_label(t.levels[i])})" for i in order] + ["None"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for si, size in enumerate(t.sizes):
        row = [str(size)] + [_fmt(c["mean"][si, i], c["ci"][si, i]) for i in order]
        row.append(_fmt(c["none_mean"][si], c["none_ci"][si]))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("FLOPs pruned % per cell (mean over subsets):")
    lines.append("")
    head2 = ["classes"] + [f"L{_level_label(t.levels[i])}" for i in order]
    lines += ["| " + " | ".join(head2) + " |", "|" + "---:|" * len(head2)]
    for si, size in enumerate(t.sizes):
        row = [str(size)] + [("–" if not np.isfinite(c["flops_pruned_pct"][si, i])
                              else f"{c['flops_pruned_pct'][si, i]:.2f}") for i in order]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def table2_csv(t: MethodTable) -> str:
    """Wide CSV in the paper's layout: ``classes``, per level (most pruned first) ``L<l>_mean,L<l>_ci,
    L<l>_flops_pruned_pct``, then ``none_mean,none_ci`` (accuracy in percent, CI = 95% half-width)."""
    c = t.cells()
    order = list(range(len(t.levels)))[::-1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["classes"]
    for i in order:
        lab = _level_label(t.levels[i])
        head += [f"L{lab}_mean", f"L{lab}_ci", f"L{lab}_flops_pruned_pct"]
    w.writerow(head + ["none_mean", "none_ci"])

    def f(v: float, d: int = 2) -> str:
        return "" if not np.isfinite(v) else f"{v:.{d}f}"

    for si, size in enumerate(t.sizes):
        row = [str(size)]
        for i in order:
            row += [f(c["mean"][si, i]), f(c["ci"][si, i]), f(c["flops_pruned_pct"][si, i], 3)]
        w.writerow(row + [f(c["none_mean"][si]), f(c["none_ci"][si])])
    return buf.getvalue()


def cells_json(t: MethodTable, subsets: dict[int, list[tuple[int, ...]]],
               paper: dict[int, dict[float, tuple[float, float]]] | None = None) -> list[dict[str, Any]]:
    """Every cell (levels and the None column) with mean, ci, n, per-subset values and FLOPs."""
    c = t.cells()
    out = []
    for si, size in enumerate(t.sizes):
        subs = [list(s) for s in subsets[size]]
        k = len(subs)
        for li, level in enumerate(t.levels):
            cell = {
                "size": size, "level": level, "mean_pct": _num(c["mean"][si, li]), "ci_pct": _num(c["ci"][si, li]),
                "n": int(c["n"][si, li]), "values_pct": [_num(v) for v in t.acc_pct[si, li, :k]],
                "drop_mean_pct": _num(c["drop_mean"][si, li]), "drop_ci_pct": _num(c["drop_ci"][si, li]),
                "flops_pruned_pct": _num(c["flops_pruned_pct"][si, li]),
                "flops": [None if not np.isfinite(v) else int(v) for v in t.flops[si, li, :k]],
                "images": [None if not np.isfinite(v) else int(v) for v in t.n_images[si, li, :k]],
                "build_ms_mean": _num(c["build_ms"][si, li], 1), "subsets": subs,
            }
            if paper is not None:
                pm, pc = paper.get(size, {}).get(float(level), (math.nan, math.nan))
                cell.update(paper_mean_pct=_num(pm), paper_ci_pct=_num(pc),
                            delta_vs_paper_pct=_num(c["mean"][si, li] - pm))
            out.append(cell)
        cell = {"size": size, "level": 0.0, "column": "None", "mean_pct": _num(c["none_mean"][si]),
                "ci_pct": _num(c["none_ci"][si]), "n": int(c["none_n"][si]),
                "values_pct": [_num(v) for v in t.none_pct[si, :k]], "flops_pruned_pct": 0.0, "subsets": subs}
        if paper is not None:
            pm, pc = paper.get(size, {}).get(0.0, (math.nan, math.nan))
            cell.update(paper_mean_pct=_num(pm), paper_ci_pct=_num(pc),
                        delta_vs_paper_pct=_num(c["none_mean"][si] - pm))
        out.append(cell)
    return out


def compare_paper_markdown(t: MethodTable, paper: dict[int, dict[float, tuple[float, float]]]) -> str:
    """Our cells beside the paper's: ``ours ± ci / paper ± ci (Δ)`` per cell, levels most pruned first."""
    c = t.cells()
    order = list(range(len(t.levels)))[::-1]
    head = ["classes"] + [f"L{_level_label(t.levels[i])} ({PAPER_LEVEL_FLOPS_PCT.get(t.levels[i], math.nan):.1f}% "
                          "paper FLOPs)" for i in order] + ["None"]
    lines = [f"Ours ({t.method}) / paper, accuracy % (mean ± 95% CI half-width), Δ = ours − paper", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def cell(m: float, ci: float, pm: float, pc: float) -> str:
        ours = _fmt(m, ci)
        if not np.isfinite(pm):
            return f"{ours} / –"
        delta = "" if not np.isfinite(m) else f" ({m - pm:+.1f})"
        return f"{ours} / {_fmt(pm, pc)}{delta}"

    for si, size in enumerate(t.sizes):
        prow = paper.get(size, {})
        row = [str(size)]
        for i in order:
            pm, pc = prow.get(float(t.levels[i]), (math.nan, math.nan))
            row.append(cell(c["mean"][si, i], c["ci"][si, i], pm, pc))
        pm, pc = prow.get(0.0, (math.nan, math.nan))
        row.append(cell(c["none_mean"][si], c["none_ci"][si], pm, pc))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def methods_markdown(tables: Sequence[MethodTable]) -> str:
    """Every method's mean per cell, and each later method's paired difference to the first (mean ± CI)."""
    first = tables[0]
    order = list(range(len(first.levels)))[::-1]
    head = ["classes", "method"] + [f"L{_level_label(first.levels[i])}" for i in order] + ["None"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for si, size in enumerate(first.sizes):
        for t in tables:
            c = t.cells()
            row = [str(size), t.method] + [_fmt(c["mean"][si, i], c["ci"][si, i]) for i in order]
            row.append(_fmt(c["none_mean"][si], c["none_ci"][si]))
            lines.append("| " + " | ".join(row) + " |")
        for t in tables[1:]:
            dm, dc, _ = mean_ci(t.acc_pct[si] - first.acc_pct[si])
            row = [str(size), f"{t.method} − {first.method}"] + [
                ("–" if not np.isfinite(dm[i]) else f"{dm[i]:+.1f}" + ("" if not np.isfinite(dc[i])
                                                                        else f" ± {dc[i]:.1f}")) for i in order]
            lines.append("| " + " | ".join(row + [""]) + " |")
    return "\n".join(lines) + "\n"


def methods_comparison(tables: Sequence[MethodTable]) -> list[dict[str, Any]]:
    """Paired per-cell differences of each later method to the first (same subsets): mean, ci, wins."""
    first = tables[0]
    out = []
    for t in tables[1:]:
        diff = t.acc_pct - first.acc_pct
        dm, dc, dn = mean_ci(diff)
        cells = []
        for si, size in enumerate(first.sizes):
            for li, level in enumerate(first.levels):
                cells.append({"size": size, "level": level, "delta_mean_pct": _num(dm[si, li]),
                              "delta_ci_pct": _num(dc[si, li]), "n": int(dn[si, li])})
        with np.errstate(invalid="ignore"):
            worse = int(np.sum(dm < 0))
        out.append({"method": t.method, "versus": first.method, "cells": cells,
                    "cells_worse": worse, "cells_not_worse": int(np.sum(np.isfinite(dm))) - worse})
    return out


def plot_png(t: MethodTable) -> bytes:
    """Accuracy against FLOPs pruned: one line per subset size (the None column at its FLOPs), CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = t.cells()
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    cmap = plt.get_cmap("viridis")
    for si, size in enumerate(t.sizes):
        x = np.concatenate([[0.0], c["flops_pruned_pct"][si]])
        y = np.concatenate([[c["none_mean"][si]], c["mean"][si]])
        e = np.nan_to_num(np.concatenate([[c["none_ci"][si]], c["ci"][si]]), nan=0.0)
        ok = np.isfinite(x) & np.isfinite(y)
        color = cmap(si / max(len(t.sizes) - 1, 1))
        ax.errorbar(x[ok], y[ok], yerr=e[ok], marker="o", ms=3, capsize=2, lw=1.2, color=color,
                    label=f"{size} classes")
    means = np.concatenate([c["none_mean"].ravel(), c["mean"].ravel()])
    lo = float(np.nanmin(means)) if np.isfinite(means).any() else 0.0
    ax.set_ylim(max(0.0, lo - 10.0), 101.0)  # accuracy is a percentage: CI bars beyond it are clipped
    ax.set_xlabel("FLOPs pruned (%)")
    ax.set_ylabel("accuracy on the target classes' test images (%)")
    ax.set_title(f"Specialist accuracy vs FLOPs pruned — method {t.method}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def safe_name(name: str) -> str:
    """A method name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem if name.endswith(".toml") else name) or "method"


def result_json(res: SweepResult, paper: dict | None = None, files: dict | None = None) -> dict[str, Any]:
    """The one JSON object of ``harness sweep --json``."""
    evals_per_s = res.image_evals / res.eval_s if res.eval_s > 0 else None
    methods = []
    for t in res.tables:
        c = t.cells()
        methods.append({"method": t.method, "description": t.description, "definition": t.definition,
                        "level_flops_pruned_pct": [_num(v) for v in t.level_flops_pct()],
                        "build_ms_mean": _num(np.nanmean(t.build_ms) if np.isfinite(t.build_ms).any() else math.nan, 1),
                        "cells_missing": int(np.sum(np.isnan(c["mean"]))),
                        "cells": cells_json(t, res.subsets, paper)})
    return {
        "schema_version": SCHEMA_VERSION,
        "options": res.options.as_dict(),
        "sizes": list(res.options.sizes), "levels": list(res.options.levels),
        "subsets": {str(k): [list(s) for s in v] for k, v in res.subsets.items()},
        "notes": res.notes,
        "methods": methods,
        "comparison": methods_comparison(res.tables) if len(res.tables) > 1 else [],
        "timing": {"wall_s": round(res.wall_s, 2), "jobs_total": res.jobs_total, "jobs_run": res.jobs_run,
                   "jobs_resumed": res.jobs_resumed, "image_evals": res.image_evals,
                   "eval_worker_s": round(res.eval_s, 2), "worker_cpu_s": round(res.cpu_s, 2),
                   "image_evals_per_worker_s": None if evals_per_s is None else round(evals_per_s, 1),
                   "build_ms_total": round(res.build_ms_total, 1)},
        "data": res.data, "hashes": res.hashes, "files": files or {},
    }


def write_outputs(res: SweepResult, out_dir: str | Path, paper: dict | None = None) -> dict[str, str]:
    """Write Markdown, CSV, PNG and JSON for every method (atomically); returns kind -> path."""
    out = Path(out_dir)
    files: dict[str, str] = {}
    for t in res.tables:
        name = safe_name(t.method)
        items = {
            f"table2_{name}.md": (f"# Table 2 — method {t.method}\n\n{t.description}\n\n" + table2_markdown(t)
                                  + _footer(res, t)).encode(),
            f"table2_{name}.csv": table2_csv(t).encode(),
            f"accuracy_vs_flops_{name}.png": plot_png(t),
        }
        if paper is not None:
            items[f"compare_paper_{name}.md"] = compare_paper_markdown(t, paper).encode()
        for fname, blob in items.items():
            atomic_write_bytes(out / fname, blob)
            files[fname] = str(out / fname)
    if len(res.tables) > 1:
        atomic_write_bytes(out / "methods.md", methods_markdown(res.tables).encode())
        files["methods.md"] = str(out / "methods.md")
    files["sweep.json"] = str(out / "sweep.json")
    blob = json.dumps(_clean_json(result_json(res, paper, files)), indent=1).encode()
    atomic_write_bytes(out / "sweep.json", blob)
    return files


def _clean_json(obj: Any) -> Any:
    from harness.cliutil import _clean

    return _clean(obj)


def _footer(res: SweepResult, t: MethodTable) -> str:
    o = res.options
    per = "all" if o.per_class is None else str(o.per_class)
    build = (f"{np.nanmean(t.build_ms):.0f} ms" if np.isfinite(t.build_ms).any() else "–")
    return (f"\nMean build time per specialist ({t.method}): {build}.\n"
            f"\nMean ± 95% CI half-width (Student t) over {o.subsets} random subsets per size (seed {o.seed}); "
            f"test images per class: {per}{' (bit-exact only)' if o.exact_only else ''}; "
            f"{res.data.get('images', '?')} images.  Wall time {res.wall_s:.1f} s "
            f"({res.jobs_run} jobs run, {res.jobs_resumed} resumed).\n"
            + "".join(f"\nNote: {n}\n" for n in res.notes))

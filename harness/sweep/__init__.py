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

One module per part:

- :mod:`~harness.sweep.paper` the paper's Table 2;  :mod:`~harness.sweep.options` :class:`SweepOptions`;
- :mod:`~harness.sweep.jobs` subsets, jobs and tasks;  :mod:`~harness.sweep.keys` the resume keys (hashes);
- :mod:`~harness.sweep.store` the cell store;  :mod:`~harness.sweep.worker` what a worker process does;
- :mod:`~harness.sweep.run` :func:`run_sweep`;  :mod:`~harness.sweep.tables` the measured tables;
- writers: :mod:`~harness.sweep.text` (Markdown, CSV), :mod:`~harness.sweep.plot` (PNG),
  :mod:`~harness.sweep.report` (JSON), :mod:`~harness.sweep.writers` (the files).

Statistics (:func:`harness.verdict.mean_ci_along`) and the worker pool (:class:`harness.pool.WorkerPool`)
are the harness's own, shared with the other commands.
"""

from __future__ import annotations

from harness.sweep.jobs import Job, draw_subsets, make_tasks, task_cost
from harness.sweep.keys import builder_code_hash, data_fingerprint
from harness.sweep.options import (
    DEFAULT_LEVELS,
    DEFAULT_SIZES,
    QUICK_PER_CLASS,
    QUICK_SUBSETS,
    SIZES_RANGE,
    SweepOptions,
    parse_levels,
    parse_sizes,
)
from harness.sweep.paper import PAPER_LEVEL_FLOPS_PCT, PAPER_TABLE2, load_paper_table
from harness.sweep.plot import plot_png
from harness.sweep.report import JSON_SCHEMA_VERSION, cells_json, methods_comparison, result_json
from harness.sweep.run import run_sweep
from harness.sweep.store import SCHEMA_VERSION, CellStore, JobRecord
from harness.sweep.tables import MethodTable, SweepResult
from harness.sweep.text import compare_paper_markdown, methods_markdown, table2_csv, table2_markdown
from harness.sweep.worker import WorkerSetup, load_test_images, run_task
from harness.sweep.writers import safe_name, write_outputs
from harness.verdict import mean_ci_along

#: The vectorised mean and CI under the name this module has always exported (``benchmarks/``).
mean_ci = mean_ci_along

__all__ = [
    "DEFAULT_LEVELS", "DEFAULT_SIZES", "JSON_SCHEMA_VERSION", "PAPER_LEVEL_FLOPS_PCT", "PAPER_TABLE2",
    "QUICK_PER_CLASS", "QUICK_SUBSETS", "SCHEMA_VERSION", "SIZES_RANGE", "CellStore", "Job", "JobRecord",
    "MethodTable", "SweepOptions", "SweepResult", "WorkerSetup", "builder_code_hash", "cells_json",
    "compare_paper_markdown", "data_fingerprint", "draw_subsets", "load_paper_table", "load_test_images",
    "make_tasks", "mean_ci", "mean_ci_along", "methods_comparison", "methods_markdown", "parse_levels",
    "parse_sizes", "plot_png", "result_json", "run_sweep", "run_task", "safe_name", "table2_csv",
    "table2_markdown", "task_cost", "write_outputs",
]

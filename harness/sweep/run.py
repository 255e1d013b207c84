"""Run (or resume) a sweep: check inputs, draw subsets, skip stored jobs, run the rest in tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import numpy as np

from harness.errors import UsageError
from harness.pool import WorkerPool
from harness.sweep.jobs import Job, draw_subsets, make_tasks
from harness.sweep.keys import builder_code_hash, context_keys, data_fingerprint, sha
from harness.sweep.options import SweepOptions
from harness.sweep.store import CellStore, JobRecord, cells_location
from harness.sweep.tables import Subsets, SweepResult, method_table
from harness.sweep.worker import WorkerSetup, init_worker, load_test_images, run_task, worker_state
from specialist.model import N_CLASSES

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
Accept = Callable[[list[JobRecord]], None]
Executor = Callable[[list[list[Job]], WorkerSetup, SweepOptions, Accept], None]


def _draw_all(options: SweepOptions) -> tuple[Subsets, list[str]]:
    notes: list[str] = []
    subsets: Subsets = {}
    for size in options.sizes:
        subsets[size], note = draw_subsets(size, options.subsets, options.seed)
        if note:
            notes.append(note)
            log.warning("%s", note)
    return subsets, notes


def _all_jobs(options: SweepOptions, subsets: Subsets, ctx_none: str, ctx_method: Sequence[str],
              methods: Sequence) -> list[Job]:
    jobs: list[Job] = []
    for size in options.sizes:
        for subset in subsets[size]:
            jobs.append(Job(ctx_none, subset, 0.0))
            for ctx, m in zip(ctx_method, methods, strict=True):
                jobs.extend(Job(ctx, subset, float(level), m) for level in options.levels)
    return jobs


def nin_methods(options: SweepOptions) -> list:
    """The named NIN methods; ``calib_per_class`` (``--calib-per-class``) replaces the calibration image count of
    those that reconstruct from calibration images (``recon``, a TOML method with ``calib_per_class``), and is a
    one-line usage error when none of them does (graph models: :func:`harness.sweep.graph.graph_methods`)."""
    from specialist.build import with_overrides
    from specialist.methods import get_method

    methods = [get_method(name) for name in options.methods]
    n = options.calib_per_class
    if n is None:
        return methods
    if not any(m.calib_per_class for m in methods):
        raise UsageError(f"--calib-per-class {n}: none of the methods ({', '.join(options.methods)}) reconstructs "
                         "from calibration images; it applies to recon or a TOML method with calib_per_class")
    return [with_overrides(m, {"calib_per_class": n}) if m.calib_per_class else m for m in methods]


def _execute(tasks: list[list[Job]], setup: WorkerSetup, options: SweepOptions, accept: Accept) -> None:
    """Run the tasks here (one worker, or one task) or in worker processes; every result goes to
    ``accept`` as it arrives.  An interrupt or failure stops the workers at once."""
    if options.workers == 1 or len(tasks) == 1:
        import torch

        if options.threads:
            torch.set_num_threads(options.threads)
        for task in tasks:
            accept(run_task(setup, task))
        return
    with WorkerPool(min(options.workers, len(tasks)), initializer=init_worker,
                    initargs=(options.threads or 1,)) as pool:
        futures = {pool.submit(run_task, setup, task) for task in tasks}
        while futures:
            finished_now, futures = wait(futures, return_when=FIRST_COMPLETED)
            for fut in finished_now:
                accept(fut.result())


def _graph_inputs(options: SweepOptions, model: str, weights: str | None, stats_path: str | None, data_path: str,
                  out_dir: str | Path):
    """(methods, setup, test images, model hash, stats hash, code hash) of a graph model (harness.sweep.graph)."""
    from harness.sweep.graph import graph_code_hash, graph_methods, graph_state, load_model, sweep_stats
    from specialist.graph.artifact import model_hash

    methods = graph_methods(options.methods, options.calib_per_class)
    loaded = load_model(model, weights)
    stats_file, stats_hash = sweep_stats(loaded, model, stats_path, methods, data_path, out_dir)
    setup = WorkerSetup(model, stats_file, data_path, options.per_class, options.exact_only, options.engine,
                        options.threads, options.chunk_images, weights=weights, graph=True)
    test = load_test_images(setup)
    if test.y.size and np.bincount(test.y, minlength=N_CLASSES).min() > 0:
        graph_state(setup)  # the in-process path reuses what is loaded here
    return methods, setup, test, model_hash(loaded.module, loaded.description), stats_hash, graph_code_hash()


def run_sweep(options: SweepOptions, *, model_path: str | None = None, stats_path: str | None = None,
              data_dir: str | None = None, out_dir: str | Path = "results/sweep", fresh: bool = False,
              progress: ProgressFn | None = None, weights: str | None = None, db: str | Path | None = None,
              executor: Executor | None = None) -> SweepResult:
    """Run (or resume) a sweep; results are saved per task in ``out_dir/sweep.sqlite`` (or in ``db``, a SQLite
    file or server URL, when given or set in ``$HARNESS_DB``: harness/sweep/store.py ``cells_location``).

    Everything is checked before any work starts (unknown methods, missing data or artifact: one clear
    error); files other than the store are written by :func:`harness.sweep.writers.write_outputs`.
    ``executor(tasks, setup, options, accept)`` runs the tasks elsewhere (``harness sweep --lab``:
    :func:`harness.lab.sweep.lab_executor`); by default they run here or in worker processes.
    """
    from harness.graphargs import is_graph_spec
    from specialist.build import load_default_stats
    from specialist.data import resolve_data_dir
    from specialist.evaluate import resolve_engine
    from specialist.model import load_weights

    t0 = time.perf_counter()
    graph = is_graph_spec(model_path)
    data_path = str(resolve_data_dir(data_dir))
    engine = "float32 (graph model)" if graph else resolve_engine(options.engine)
    if graph:
        methods, setup, test, model_hash, stats_hash, code_hash = _graph_inputs(
            options, str(model_path), weights, stats_path, data_path, out_dir)
    else:
        methods = nin_methods(options)
        base = load_weights(model_path)
        stats = load_default_stats(base, stats_path)
        setup = WorkerSetup(model_path, stats_path, data_path, options.per_class, options.exact_only,
                            options.engine, options.threads, options.chunk_images)
        test = load_test_images(setup)
    counts = np.bincount(test.y, minlength=N_CLASSES)
    if counts.min() == 0:
        raise UsageError(f"the test images hold no image of class {int(np.argmin(counts))} "
                         f"(per-class {options.per_class}, exact-only {options.exact_only})")
    if not setup.graph:
        worker_state(setup, base=base, test=test)  # the in-process path reuses what is loaded here
        model_hash = base.content_hash()
        stats_hash = str(stats.meta.get("sha256", "")) or sha(stats.model_hash, stats.counts.tolist())
        code_hash = builder_code_hash()
    data_fp = data_fingerprint(test.x, test.y)
    ctx_none, ctx_method = context_keys(model_hash, data_fp, stats_hash, methods, code_hash)
    names = [m.name for m in methods]
    labels = [m.name if names.count(m.name) == 1 else Path(opt).stem
              for m, opt in zip(methods, options.methods, strict=True)]
    subsets, notes = _draw_all(options)

    store = CellStore(cells_location(out_dir, db))
    try:
        if fresh:
            for ctx in [ctx_none, *ctx_method]:
                store.forget(ctx)
        done = {ctx: store.load(ctx) for ctx in [ctx_none, *ctx_method]}
        jobs = _all_jobs(options, subsets, ctx_none, ctx_method, methods)
        pending = [j for j in jobs if (j.subset, j.level) not in done[j.context]]
        resumed = len(jobs) - len(pending)
        if resumed:
            log.info("resuming: %d of %d jobs already in %s", resumed, len(jobs), store.path)
        tasks = make_tasks(pending, options.task_jobs, int(counts.mean()))
        totals = {"image_evals": 0, "eval_s": 0.0, "cpu_s": 0.0, "tasks": 0}

        def accept(records: list[JobRecord]) -> None:
            store.put(records)
            for r in records:
                done[r.context][(r.subset, r.level)] = r
                totals["eval_s"] += r.eval_s
                totals["cpu_s"] += r.cpu_s
                totals["image_evals"] += r.n
            totals["tasks"] += 1
            if progress is not None:
                progress(totals["tasks"], len(tasks))

        if tasks:
            log.info("evaluation engine %s (option %s)%s", engine, options.engine,
                     "; lab workers resolve it on their own machines" if executor is not None else "")
            (executor or _execute)(tasks, setup, options, accept)
    finally:
        store.close()

    tables = [method_table(m, labels[mi], options, subsets, done[ctx_none], done[ctx_method[mi]])
              for mi, m in enumerate(methods)]
    return SweepResult(
        options=options, subsets=subsets, tables=tables, notes=notes, wall_s=time.perf_counter() - t0,
        jobs_total=len(jobs), jobs_run=len(pending), jobs_resumed=resumed, image_evals=int(totals["image_evals"]),
        eval_s=float(totals["eval_s"]), cpu_s=float(totals["cpu_s"]),
        build_ms_total=float(sum(np.nansum(t.build_ms) for t in tables)),
        engine=engine,
        data={"dir": data_path, "images": int(len(test)), "per_class_images": counts.tolist(),
              "exact_only": options.exact_only},
        hashes={"base_model": model_hash, "stats": stats_hash, "data": data_fp, "builder_code": code_hash},
    )

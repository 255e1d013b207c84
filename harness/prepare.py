"""Model preparation for ``harness run``: the base model and its specialists, exported to ``.pte`` in a cache.

:class:`ModelPreparation` builds every specialist in this process and hands each uncached model to the
export pool (:class:`_Exporter`, :func:`export_workers` worker processes) as soon as it exists, so the
caller can start the lab meanwhile; the cache is ``<cache_dir>/<model hash[:24]>.pte``.
:func:`stored_models` gives a stored run's models back for ``--resume`` when every artifact is intact.
The backends (``harness.backend_*``) only run what this prepared.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from device.closing import Closing
from device.files import file_hash
from harness.cliutil import progress
from harness.errors import DATA_ERRORS, HarnessError, InputError
from harness.graphargs import is_graph_spec
from harness.plan import RunPlan
from harness.runloop import PreparedModel

log = logging.getLogger(__name__)


def model_key(level_pct: int) -> str:
    return f"L{level_pct}"


def export_workers(n_exports: int) -> int:
    """Worker processes for ``n_exports`` uncached exports: one per core but one, at least 1 and at most 4,
    so the harness's own process keeps a core to build and to start the lab while they export.
    ``HARNESS_EXPORT_WORKERS=N`` overrides; 0 exports in the harness's own process."""
    env = os.environ.get("HARNESS_EXPORT_WORKERS", "").strip()
    if env:
        if not env.isdigit():
            raise InputError(f"HARNESS_EXPORT_WORKERS must be a whole number >= 0, got {env!r}")
        if int(env) == 0:
            return 0
        cap = int(env)
    else:
        cap = min(max(1, (os.cpu_count() or 1) - 1), 4)
    return max(1, min(cap, n_exports))


def _init_export_worker() -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _export_job(weights, pte: str) -> tuple[str, float]:
    """Export one model to the cache path ``pte`` (in a worker process or this one); the exporter verifies
    the program and writes it atomically."""
    t0 = time.perf_counter()
    pte_path = Path(pte)
    pte_path.parent.mkdir(parents=True, exist_ok=True)  # fail before the export, not after it
    if hasattr(weights, "export_to"):  # a graph model (harness.graphexport.GraphExportJob): program + manifest
        weights.export_to(pte_path)
    else:
        from harness.exportcheck import export_pte  # torch and the exporter load only where exports run

        export_pte(weights, pte_path)
    return pte, time.perf_counter() - t0


class _Exporter:
    """Exports models to the cache while the caller goes on: a pool of ``n_workers`` worker processes
    (spawned, one torch thread each) started on the first export; with 0 workers, in this process at once."""

    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self._pool = None
        self._futures: list = []
        self.export_s: list[float] = []

    def submit(self, weights, pte: Path) -> None:
        if self.n_workers == 0:
            self.export_s.append(_export_job(weights, str(pte))[1])
            return
        if self._pool is None:
            from harness.pool import WorkerPool  # spawned workers that leave Ctrl-C to the parent

            self._pool = WorkerPool(self.n_workers, initializer=_init_export_worker)
        self._futures.append(self._pool.submit(_export_job, weights, str(pte)))

    def wait(self) -> None:
        """Wait for every export; the first failure is raised (the others are cancelled)."""
        try:
            for fut in progress(self._futures, total=len(self._futures), desc="exporting", unit="model"):
                try:
                    self.export_s.append(fut.result()[1])
                except BrokenProcessPool as exc:
                    raise HarnessError(f"an export worker process died ({exc}); run again, or set "
                                       "HARNESS_EXPORT_WORKERS=0 to export in this process") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ModelPreparation(Closing):
    """Builds the base model's specialists now and exports the uncached ones in the background.

    ``ModelPreparation(plan, cache_dir)`` builds every specialist in this process, handing each uncached
    model to the exporter (:func:`export_workers` processes) as soon as it exists; the caller can then do
    other work (``harness run`` starts the lab) before :meth:`finish` waits for the exports and returns
    the prepared models.  :meth:`close` (or leaving a ``with`` block) stops unfinished exports.
    """

    def __init__(self, plan: RunPlan, cache_dir: Path, accuracy: bool = False):
        from specialist import build, methods
        from specialist import flops as flops_mod
        from specialist.model import load_weights

        self.plan = plan
        self.cache_dir = Path(cache_dir)
        self._t0 = time.perf_counter()
        self._submitted: set[str] = set()
        if is_graph_spec(plan.model):
            self._init_graph(plan, accuracy)
            return
        self.method = str(plan.method or methods.DEFAULT_METHOD)
        base = load_weights(plan.model or None)
        self.entries: list[tuple[int, Any, int, float]] = [(0, base, int(flops_mod.BASE_FLOPS), 0.0)]
        self.exporter = _Exporter(export_workers(1 + len(plan.levels)))  # workers start on the first export
        try:
            self._hand_over(base)
            for level in progress(plan.levels, total=len(plan.levels), desc="building", unit="model"):
                spec = build.build_specialist(list(plan.classes), float(level), self.method, base=base,
                                              stats_path=plan.stats or None)
                self.entries.append((int(level), spec.weights, int(spec.flops), float(spec.flops_pruned_pct)))
                self._hand_over(spec.weights)
            self.accuracies: dict[int, float] = _accuracies(self.entries, plan) if accuracy else {}
        except BaseException:
            self.close()
            raise

    def _init_graph(self, plan: RunPlan, accuracy: bool) -> None:
        """Graph models (``harness.graphrun``): every specialist built here, then handed to the exporter."""
        from harness.graphrun import graph_accuracies, graph_entries

        self.method, loaded, self.entries = graph_entries(plan, self.cache_dir)
        self.exporter = _Exporter(export_workers(len(self.entries)))
        try:
            for _, job, _, _ in self.entries:
                self._hand_over(job)
            self.accuracies = graph_accuracies(self.entries, plan, loaded) if accuracy else {}
        except BaseException:
            self.close()
            raise

    def _pte(self, weights) -> Path:
        return self.cache_dir / f"{weights.content_hash()[:24]}.pte"

    def _hand_over(self, weights) -> None:
        pte = self._pte(weights)
        if not pte.is_file() and str(pte) not in self._submitted:
            self._submitted.add(str(pte))
            self.exporter.submit(weights, pte)

    def finish(self) -> list[PreparedModel]:
        """Wait for the exports; the prepared models (base first, then the levels in plan order)."""
        self.exporter.wait()  # closes the pool, also when an export failed
        if self._submitted:
            log.info("exported %d model(s) in %.1f s wall (%d worker(s), %.1f s each on average)",
                     len(self._submitted), time.perf_counter() - self._t0, self.exporter.n_workers,
                     sum(self.exporter.export_s) / max(len(self.exporter.export_s), 1))
        out = []
        for level, weights, flops, pruned in self.entries:
            pte = self._pte(weights)
            out.append(PreparedModel(model_key(level), level, tuple(self.plan.classes), self.method, flops, pruned,
                                     weights.content_hash(), file_hash(pte), str(pte),
                                     self.accuracies.get(level)))
        return out

    def close(self) -> None:
        self.exporter.close()



def prepare_models(plan: RunPlan, cache_dir: Path, accuracy: bool = False) -> list[PreparedModel]:
    """The base model and one specialist per level, each exported to ``.pte`` (cached by model hash).

    Exports not in the cache run in worker processes (:func:`export_workers`) while the remaining
    specialists are built, so a cold start costs about one export per core instead of one per model.
    """
    with ModelPreparation(plan, cache_dir, accuracy) as prep:
        return prep.finish()


def stored_models(records, plan: RunPlan, check_hash: bool = True) -> list[PreparedModel] | None:
    """The models of a stored run when all of the plan's are stored and every artifact is still on disk with
    its hash (for --resume); else None (build them again)."""
    if {m.model_key for m in records} != {model_key(lv) for lv in (0, *plan.levels)}:
        return None
    out = []
    for m in records:
        p = Path(m.artifact_path)
        if not p.is_file() or (check_hash and file_hash(p) != m.artifact_hash):
            return None
        out.append(PreparedModel(m.model_key, m.level_pct, tuple(int(c) for c in m.classes.split(",") if c),
                                 m.method, m.flops, m.flops_pruned_pct, m.model_hash, m.artifact_hash,
                                 m.artifact_path, m.accuracy_pct))
    return out or None


ACCURACY_IMAGES_PER_CLASS = 200


def _accuracies(entries, plan: RunPlan) -> dict[int, float]:
    """Top-1 accuracy (%) on the first 200 test images of each target class (``specialist.accuracy``)."""
    from specialist.accuracy import subset_accuracy
    from specialist.data import load_split

    cls = sorted(plan.classes)
    try:
        test = load_split("test", plan.data or None).select(cls, per_class=ACCURACY_IMAGES_PER_CLASS)
    except DATA_ERRORS as exc:
        log.warning("accuracy skipped: %s", exc)
        return {}
    return {level: 100.0 * float(subset_accuracy(weights, cls, test, None if level == 0 else cls).accuracy)
            for level, weights, _, _ in entries}

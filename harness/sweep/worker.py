"""What a sweep worker does: build a task's specialists and evaluate them on the test images.

Runs in a worker process of a :class:`harness.pool.WorkerPool` or in the sweep's own process.  Each process
loads the base model, the statistics artifact and the test images once (:func:`worker_state`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.sweep.jobs import Job
from harness.sweep.store import JobRecord
from specialist.model import N_CLASSES

log = logging.getLogger(__name__)


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
    weights: str | None = None  # graph models: the state_dict of ``model_path``
    graph: bool = False  # ``model_path`` is a graph model (harness.sweep.graph), not NIN


_WORKER_STATE: dict[str, Any] = {}


def worker_state(setup: WorkerSetup, **loaded: Any) -> dict[str, Any]:
    """This process's base model and test images for ``setup`` (loaded on first use, or given as ``base``
    and ``test`` by a caller that has them already)."""
    key = repr(setup)
    if _WORKER_STATE.get("key") != key:
        from specialist.model import load_weights

        base = loaded["base"] if loaded.get("base") is not None else load_weights(setup.model_path)
        test = loaded["test"] if loaded.get("test") is not None else load_test_images(setup)
        _WORKER_STATE.clear()
        _WORKER_STATE.update(key=key, base=base, test=test)
    return _WORKER_STATE


def load_test_images(setup: WorkerSetup):
    """The test images a sweep evaluates on (per-class limit and exact-only applied)."""
    from specialist.data import load_split

    test = load_split("test", setup.data_dir)
    return test.select(range(N_CLASSES), per_class=setup.per_class, exact_only=setup.exact_only)


def init_worker(threads: int) -> None:
    """Worker process initializer: its torch threads."""
    import torch

    torch.set_num_threads(max(1, threads))


def unpruned_flops(n_outputs: int) -> int:
    """FLOPs of the base model with only ``n_outputs`` CCCP6 outputs computed (the None column)."""
    from specialist.flops import BASE_FLOPS
    from specialist.model import NIN_LAYERS

    spec = NIN_LAYERS[-1]
    removed = N_CLASSES - n_outputs
    return BASE_FLOPS - 2 * spec.kernel * spec.kernel * spec.in_ch * removed * spec.in_hw * spec.in_hw


def run_task(setup: WorkerSetup, jobs: Sequence[Job]) -> list[JobRecord]:
    """Build and evaluate one task's jobs (in a worker process or in this one)."""
    from specialist.build import build_specialist
    from specialist.evaluate import EvalModel, EvalOptions, evaluate_models
    from specialist.flops import BASE_FLOPS

    if setup.graph:
        from harness.sweep.graph import run_graph_task

        return run_graph_task(setup, jobs)
    cpu0 = time.process_time()
    st = worker_state(setup)
    base, test = st["base"], st["test"]
    models, meta = [], []
    for job in jobs:
        cls = list(job.subset)
        if job.level == 0:
            models.append(EvalModel(base, cls, columns=cls, outputs=cls))
            meta.append((unpruned_flops(len(cls)), 0.0))
        else:
            spec = build_specialist(cls, job.level, job.method, base=base, stats_path=setup.stats_path,
                                    calib=setup.data_dir)
            models.append(EvalModel(spec.weights, spec.classes))
            meta.append((int(spec.flops), float(spec.build_ms)))
    res = evaluate_models(base, models, test, EvalOptions(engine=setup.engine, chunk_images=setup.chunk_images))
    log.info("task of %d jobs: engine %s, %d image evaluations, %s", len(jobs), res.engine, res.image_evals,
             res.extra or "float32")
    share = res.seconds / max(len(jobs), 1)
    cpu_share = (time.process_time() - cpu0) / max(len(jobs), 1)
    out = []
    for j, job in enumerate(jobs):
        flops, build_ms = meta[j]
        out.append(JobRecord(job.context, job.subset, job.level, int(res.correct[j].sum()), int(res.n[j].sum()),
                             flops, 100.0 * (1.0 - flops / BASE_FLOPS), build_ms, share, cpu_share))
    return out

"""The sweep on graph models (``harness sweep --model resnet20 | pkg.mod:factory --weights F | file.pt2``).

Same jobs, tasks, store, resume keys and tables as NIN's sweep; what differs is here: the methods are graph
methods (:data:`specialist.graph.specialize.GRAPH_METHODS`, default ``lsq``), each worker loads the base model,
its channel groups, the statistics artifact and the normalised test images once, builds each job's specialist
with :func:`specialist.graph.specialize.build_graph_specialist` and counts its correct predictions on the test
images of the job's classes (the "None" column: the unpruned model's arg-max among the classes).  Statistics:
``--stats FILE``, or the artifact built once from the calibration images and cached in ``--out/stats/``
(``harness.graphrun``).  The resume keys hash the base model (:func:`specialist.graph.artifact.model_hash`),
the artifact's content hash, the method and the sources of ``specialist/`` and ``specialist/graph/``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.sweep.jobs import Job
from harness.sweep.store import JobRecord


@dataclass(frozen=True)
class GraphSweepMethod:
    """A graph method as the sweep stores and labels it (``name``, ``description``, :meth:`as_dict`).

    ``fields`` holds every field of :class:`specialist.graph.methods.GraphMethod` (allocation, impact, ridge,
    budget caps, ...), so a worker builds exactly the method that was named, and the resume key covers all of it.
    """

    name: str
    description: str
    criterion: str
    compensation: str
    fold: str
    fields: tuple = ()  # ((field, value), ...) of the GraphMethod

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "graph", **dict(self.fields), "name": self.name, "criterion": self.criterion,
                "compensation": self.compensation, "fold": self.fold}

    def graph_method(self):
        from specialist.graph.specialize import GraphMethod

        return GraphMethod(**dict(self.fields))


def graph_methods(names: Sequence[str], calib_per_class: int | None = None) -> list[GraphSweepMethod]:
    """The named graph methods; one line naming the supported ones for an unknown one. ``calib_per_class``
    (``--calib-per-class``) replaces the calibration image count of those that reconstruct from calibration
    images (``recon``); a one-line usage error when none of them does."""
    import dataclasses

    from harness.errors import UsageError
    from specialist.graph.specialize import graph_method

    found = [graph_method(name) for name in names]
    if calib_per_class is not None:
        if not any(m.calib_per_class for m in found):
            raise UsageError(f"--calib-per-class {calib_per_class}: none of the methods ({', '.join(names)}) "
                             "reconstructs from calibration images; it applies to recon")
        found = [dataclasses.replace(m, calib_per_class=calib_per_class) if m.calib_per_class else m
                 for m in found]
    out = []
    for m in found:
        out.append(GraphSweepMethod(m.name, m.description, m.criterion, m.compensation, m.fold,
                                    tuple(dataclasses.asdict(m).items())))
    return out


def graph_code_hash() -> str:
    """sha256 of the builder sources a graph specialist depends on (``specialist/*.py`` and ``specialist/graph``)."""
    import specialist
    from harness.sweep.keys import builder_code_hash

    root = Path(specialist.__file__).resolve().parent
    return hashlib.sha256((builder_code_hash(root) + builder_code_hash(root / "graph")).encode()).hexdigest()


def _namespace(model: str, weights: str | None) -> argparse.Namespace:
    return argparse.Namespace(model=model, weights=weights, input_shape=None, input_mean=None, input_std=None)


def load_model(model: str, weights: str | None):
    from harness.graphargs import check_cifar, load_graph_model

    loaded = load_graph_model(_namespace(model, weights))
    check_cifar(loaded.description)
    return loaded


def sweep_stats(loaded, model: str, stats_path: str | None, methods, data_dir: str, out_dir) -> tuple[str | None, str]:
    """(artifact path, content hash): ``--stats``, or the artifact built once and cached in ``out_dir/stats``
    (:func:`harness.graphrun.stats_artifact`); (None, "") when no method needs one."""
    from harness.graphrun import stats_artifact

    if all(m.criterion == "l1" and m.compensation == "none" for m in methods):
        return None, ""
    _, meta, path = stats_artifact(loaded, model, stats_path, data_dir, out_dir)
    return str(path), str(meta.get("content_hash", ""))


_STATE: dict[str, Any] = {}


def graph_state(setup) -> dict[str, Any]:
    """This process's base model, channel groups, statistics, normalised test images and unpruned scores."""
    key = repr(setup)
    if _STATE.get("key") != key:
        import torch

        from specialist.data import load_split
        from specialist.graph.artifact import load_stats, model_hash
        from specialist.graph.flops import total_flops
        from specialist.graph.groups import analyse

        loaded = load_model(setup.model_path, setup.weights)
        graph = analyse(loaded.module, loaded.example())
        stats = load_stats(setup.stats_path, model_hash(loaded.module, loaded.description))[0] \
            if setup.stats_path else None
        test = load_split("test", setup.data_dir).select(range(10), per_class=setup.per_class,
                                                         exact_only=setup.exact_only)  # as worker.load_test_images
        x = loaded.description.normalize(test.x)
        with torch.no_grad():
            scores = torch.cat([loaded.module.eval()(x[i : i + 500]) for i in range(0, len(x), 500)]).numpy()
        _STATE.clear()
        _STATE.update(key=key, loaded=loaded, graph=graph, stats=stats, x=x, y=np.asarray(test.y), scores=scores,
                      flops_base=total_flops(loaded.module, loaded.example()))
    return _STATE


def run_graph_task(setup, jobs: Sequence[Job]) -> list[JobRecord]:
    """Build and evaluate one task's jobs on a graph model."""
    from specialist.graph.specialize import build_graph_specialist, predict

    cpu0, t0 = time.process_time(), time.perf_counter()
    st = graph_state(setup)
    y, flops_base = st["y"], st["flops_base"]
    out = []
    for job in jobs:
        cls = sorted(job.subset)
        sel = np.isin(y, cls)
        if job.level == 0:
            pred = np.asarray(cls)[st["scores"][sel][:, cls].argmax(1)]
            flops, build_ms = flops_base, 0.0
        else:
            spec = build_graph_specialist(st["loaded"], st["stats"], cls, job.level, job.method.graph_method(),
                                          graph=st["graph"], calib=setup.data_dir)
            pred = np.asarray(cls)[predict(spec.module, st["x"][np.flatnonzero(sel)])]
            flops, build_ms = int(spec.flops), float(spec.build_ms)
        out.append((job, int((pred == y[sel]).sum()), int(sel.sum()), flops, build_ms))
    share = (time.perf_counter() - t0) / max(len(jobs), 1)
    cpu_share = (time.process_time() - cpu0) / max(len(jobs), 1)
    return [JobRecord(job.context, job.subset, job.level, correct, n, flops, 100.0 * (1.0 - flops / flops_base),
                      build_ms, share, cpu_share) for job, correct, n, flops, build_ms in out]

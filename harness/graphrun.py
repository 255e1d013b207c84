"""``harness run`` on graph models (``--model resnet20 | pkg.mod:factory [--weights F] | file.pt2``).

:func:`check_graph_plan` checks the plan's model, method and statistics before anything is written;
:func:`graph_entries` builds the base model's export job and one specialist per level
(:func:`specialist.graph.specialize.build_graph_specialist`, graph default method ``lsq``) as
:class:`~harness.graphexport.GraphExportJob` objects that ``harness.prepare`` exports (XNNPACK, verified,
with a manifest) and caches exactly as it does NIN's weights.

Statistics: ``--stats FILE`` (an artifact of ``harness stats --model ...``), or, when absent and the method
needs them, the artifact is computed once on the first :data:`GRAPH_STATS_PER_CLASS` calibration images of
every class and cached in ``<results>/cache/stats/<model hash[:24]>-<N>pc.npz`` (a message says so; later runs
of the same model reuse it; its model hash and content hash are checked on every load).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from harness.cliutil import progress, short
from harness.errors import DATA_ERRORS, UsageError

log = logging.getLogger(__name__)

#: Calibration images per class of the statistics artifact ``harness run`` builds when no ``--stats`` is given
#: (ResNet-20: about 1.5 min on 2 loaded cores; ``harness stats --per-class 500`` makes a better one).
GRAPH_STATS_PER_CLASS = 100
ACCURACY_IMAGES_PER_CLASS = 200


def plan_model(plan):
    """The :class:`~specialist.graph.source.LoadedModel` of a run plan's ``model`` and ``weights``."""
    from harness.graphargs import load_graph_model

    ns = argparse.Namespace(model=plan.model, weights=getattr(plan, "weights", "") or None, input_shape=None,
                            input_mean=None, input_std=None)
    return load_graph_model(ns)


#: ``harness run``'s default on graph models (no ``--method``): the graph default method (``lsq``) with its mean
#: constants folded into the consumers' biases (no per-position add node); widths not rounded (multiples of 8
#: cost ResNet-20 accuracy and saved no time: measured in docs/anycnn.md, "Run defaults").  A ``--method``
#: (preset or TOML file) is taken as it is defined.
GRAPH_RUN_FOLD = "bias"
GRAPH_RUN_MULTIPLE_OF = 1


def _method(plan):
    from specialist.graph.specialize import graph_method

    if plan.method:
        return graph_method(plan.method)
    return graph_method(None, fold=GRAPH_RUN_FOLD, multiple_of=GRAPH_RUN_MULTIPLE_OF)


def _needs_stats(method) -> bool:
    return not (method.criterion == "l1" and method.compensation == "none")


def default_stats_path(cache_dir: str | Path, mhash: str, per_class: int = GRAPH_STATS_PER_CLASS) -> Path:
    """Where ``harness run`` caches the statistics artifact it builds for a model."""
    return Path(cache_dir) / "stats" / f"{mhash[:24]}-{per_class}pc.npz"


def check_graph_plan(plan) -> None:
    """The plan's graph model loads, its method is a graph method, its statistics fit it (or the calibration
    data to make them exist), its classes are the model's: one line, exit 2, before any work."""
    from specialist.data import resolve_data_dir
    from specialist.graph.artifact import load_stats, model_hash

    method = _method(plan)
    loaded = plan_model(plan)
    k = loaded.description.num_classes
    if any(c >= k for c in plan.classes):
        raise UsageError(f"classes: the model has {k} classes (0..{k - 1})")
    if plan.stats:
        if not Path(plan.stats).is_file():
            raise UsageError(f"--stats {short(plan.stats)}: no such file (make one with 'harness stats --model "
                             f"{short(plan.model, 40)} -o FILE')")
        load_stats(plan.stats, model_hash(loaded.module, loaded.description))
    elif _needs_stats(method):
        from harness.graphargs import check_cifar

        check_cifar(loaded.description)
        resolve_data_dir(plan.data or None)  # the calibration images the default artifact is made from
    if plan.data and not Path(plan.data).is_dir():
        raise UsageError(f"data {short(plan.data)}: no such directory")


def stats_artifact(loaded, model: str, stats: str | None, data: str | None, cache_dir: str | Path, graph=None):
    """(statistics, header, path): ``stats`` when given, else the cached default artifact of ``loaded`` in
    ``cache_dir/stats``, computed first (announced) when it is not there yet."""
    from device.files import atomic_write_bytes
    from harness.graphargs import stats_bytes
    from specialist.graph.artifact import load_stats, model_hash

    mhash = model_hash(loaded.module, loaded.description)
    if stats:
        return (*load_stats(stats, mhash), Path(stats))
    path = default_stats_path(cache_dir, mhash)
    if not path.is_file():
        log.warning("no --stats given: computing the statistics artifact of %s on %d calibration images per class "
                    "(once; cached in %s)", model, GRAPH_STATS_PER_CLASS, path)
        blob, info = stats_bytes(loaded, GRAPH_STATS_PER_CLASS, data, graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
        log.warning("statistics artifact written in %.1f s (%d images, %d bytes)", info["seconds"], info["images"],
                    info["bytes"])
    return (*load_stats(path, mhash), path)


def plan_stats(plan, loaded, cache_dir: str | Path, graph=None):
    """(statistics, header) of a run plan (:func:`stats_artifact`); ``(None, {})`` when its method needs none."""
    if not _needs_stats(_method(plan)):
        return None, {}
    stats, meta, _ = stats_artifact(loaded, plan.model, plan.stats or None, plan.data or None, cache_dir, graph)
    return stats, meta


def graph_entries(plan, cache_dir: str | Path):
    """(method name, loaded base model, entries): ``entries`` are ``(level, job, flops, flops pruned %)``, the
    base model (level 0, all classes) first, then one specialist per level in plan order."""
    from harness.graphargs import base_info
    from harness.graphexport import GraphExportJob
    from specialist.graph.artifact import model_hash
    from specialist.graph.flops import total_flops
    from specialist.graph.groups import analyse
    from specialist.graph.specialize import build_graph_specialist

    method = _method(plan)
    loaded = plan_model(plan)
    desc = loaded.description
    graph = analyse(loaded.module, loaded.example())
    stats, meta = plan_stats(plan, loaded, cache_dir, graph)
    stats_hash = str(meta.get("content_hash", ""))
    base_hash = model_hash(loaded.module, desc)
    flops_base = total_flops(loaded.module, loaded.example())
    data = plan.data or None
    entries = [(0, GraphExportJob(loaded.module, desc, tuple(range(desc.num_classes)), 0.0, "base", flops_base,
                                  flops_base, base_hash, stats_hash, data=data), flops_base, 0.0)]
    ns = argparse.Namespace(model=plan.model, weights=getattr(plan, "weights", "") or None, input_shape=None,
                            input_mean=None, input_std=None)
    for level in progress(plan.levels, total=len(plan.levels), desc="building", unit="model"):
        spec = build_graph_specialist(loaded, stats, list(plan.classes), float(level), method, graph=graph,
                                      base=base_info(ns), stats_hash=stats_hash, calib=data)
        job = GraphExportJob(spec.module, desc, tuple(spec.classes), float(level), method.name, spec.flops,
                             spec.flops_base, base_hash, stats_hash, fold=method.fold,
                             extra_nodes=len(spec.report.per_position), data=data)
        entries.append((int(level), job, int(spec.flops), float(spec.flops_pruned_pct)))
    return method.name, loaded, entries


def graph_accuracies(entries, plan, loaded) -> dict[int, float]:
    """Top-1 accuracy (%) on the first 200 test images of each target class; the base model restricted to the
    target classes' outputs (as for NIN)."""
    from specialist.data import load_split
    from specialist.graph.specialize import subset_accuracies

    cls = sorted(plan.classes)
    try:
        test = load_split("test", plan.data or None).select(cls, per_class=ACCURACY_IMAGES_PER_CLASS)
    except DATA_ERRORS as exc:
        log.warning("accuracy skipped: %s", exc)
        return {}
    x = loaded.description.normalize(test.x)
    out = {}
    for level, job, _, _ in entries:
        if level:
            spec_acc, base_acc = subset_accuracies(loaded.module, job.module, cls, x, test.y)
            out[level], out[0] = 100.0 * spec_acc, 100.0 * base_acc
    return out

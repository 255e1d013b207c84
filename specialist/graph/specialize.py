"""A class-specialist of any CNN from its statistics artifact: methods, build, save and load.

Methods on graph models (:mod:`specialist.graph.methods`): every NIN preset and TOML method, read for channel
groups (a score, an allocation, a compensation of :data:`specialist.graph.compensate.COMPENSATIONS`).
"Level" L is the FLOPs budget of removing L % of every prunable group (the first layer's group intact); the
``uniform`` allocation removes exactly that, ``global`` (``best``) spends the same budget across groups.

A saved specialist (:func:`specialist_bytes`) is a plain dict that ``torch.load(weights_only=True)`` reads: the
pruned state_dict plus the plan (kept channel indices per group, classes, which consumers got a bias or a
per-position constant) and how to rebuild the base model; :func:`load_specialist` rebuilds the structure from the
base model and loads the state_dict into it (the base model's hash is checked).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specialist.errors import ArtifactError, DataError, UsageError
from specialist.graph.artifact import model_hash
from specialist.graph.flops import flop_table, rows_as_dicts
from specialist.graph.groups import ChannelGraph, analyse
from specialist.graph.methods import (  # noqa: F401 (re-exported)
    GRAPH_DEFAULT_METHOD,
    GRAPH_METHODS,
    GraphMethod,
    graph_method,
    plan_keep,
)
from specialist.graph.source import LoadedModel
from specialist.graph.stats import GraphStats
from specialist.graph.surgery import ConstAdd, SurgeryReport, _add_bias, _set_module, prune

log = logging.getLogger(__name__)

FILE_KIND = "graph-specialist"
_BASE_FLOPS: dict[int, int] = {}  # id(graph) -> FLOPs of its unpruned model (graphs live as long as a command)
FILE_VERSION = 1


@dataclass
class GraphSpecialist:
    """A built specialist of a graph model."""

    module: nn.Module
    classes: list[int]
    level: float
    method: GraphMethod
    keep: dict[str, list[int]]
    report: SurgeryReport
    flops: int
    flops_base: int
    rows: list = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    build_ms: float = 0.0
    base: dict = field(default_factory=dict)  # how to rebuild the base model (spec, weights, description)

    @property
    def flops_pruned_pct(self) -> float:
        return 100.0 * (1.0 - self.flops / self.flops_base) if self.flops_base else 0.0

    def summary(self) -> dict:
        """JSON-ready description (the ``--json`` of ``harness build``)."""
        return {"model": self.base.get("spec"), "classes": self.classes, "level": self.level,
                "method": self.method.name, "criterion": self.method.criterion,
                "compensation": self.method.compensation, "fold": self.method.fold,
                "allocation": self.method.allocation, "impact": self.method.impact, "flops_base": self.flops_base,
                "flops": self.flops, "flops_pruned_pct": round(self.flops_pruned_pct, 3),
                "groups": {r: {"kept": self.report.kept[r], "removed": self.report.removed[r]} for r in self.keep},
                "per_position": self.report.per_position, "refit": self.report.refit,
                "layers": rows_as_dicts(self.rows), "hashes": self.hashes, "build_ms": round(self.build_ms, 1)}


def _check_classes(classes: Sequence[int], k: int) -> list[int]:
    cls = [int(c) for c in classes]
    if not cls or len(set(cls)) != len(cls) or min(cls) < 0 or max(cls) >= k:
        raise UsageError(f"--classes must be distinct class indices in 0..{k - 1}, got {cls}")
    return sorted(cls)


def build_graph_specialist(loaded: LoadedModel, stats: GraphStats | None, classes: Sequence[int], level: float,
                           method: GraphMethod, graph: ChannelGraph | None = None, base: dict | None = None,
                           stats_hash: str = "", calib=None) -> GraphSpecialist:
    """Prune ``level`` % of every prunable group by ``method`` and compensate (see the module docstring).
    Methods with ``calib_per_class`` (``recon``) reconstruct on calibration images: ``calib`` is the data
    directory (default as :func:`specialist.data.resolve_data_dir`) or a tensor of normalised images."""
    t0 = time.perf_counter()
    cls = _check_classes(classes, loaded.description.num_classes)
    if not 0 <= level < 100:
        raise UsageError(f"--level must be in [0, 100), got {level:g}")
    example = loaded.example()
    graph = graph or analyse(loaded.module, example)
    if stats is None and method.needs_stats:
        raise ArtifactError(f"method {method.name!r} needs a statistics artifact (harness stats)")
    if method.calib_per_class and level > 0:  # sequential reconstruction: best's counts, refit on images
        from specialist.graph.recon import build_reconstructed

        keep, module, report = build_reconstructed(graph, stats, cls, level, method, loaded.description, calib)
    else:
        keep = plan_keep(graph, stats, cls, level, method)
        module, report = prune(graph, keep, cls, stats, fold=method.fold, compensation=method.compensation,
                               ridge=method.ridge, merge_threshold=method.merge_threshold)
    rows = flop_table(module, example)
    flops = int(sum(r.flops for r in rows))
    flops_base = _BASE_FLOPS.get(id(graph))
    if flops_base is None:
        flops_base = _BASE_FLOPS[id(graph)] = int(sum(r.flops for r in flop_table(graph.model, example)))
    hashes = {"base_model": model_hash(loaded.module, loaded.description), "stats": stats_hash}
    spec = GraphSpecialist(module.eval(), cls, float(level), method, keep, report, flops, flops_base, rows, hashes,
                           base=dict(base or {}))
    spec.build_ms = 1000.0 * (time.perf_counter() - t0)
    log.info("graph specialist %s level %g: %.1f%% FLOPs pruned in %.0f ms", cls, level, spec.flops_pruned_pct,
             spec.build_ms)
    return spec


# --------------------------------------------------------------------------- save / load


def specialist_bytes(spec: GraphSpecialist) -> bytes:
    """The file: a dict of plain types and tensors (``torch.load(weights_only=True)``)."""
    payload = {"kind": FILE_KIND, "version": FILE_VERSION, "base": spec.base, "classes": spec.classes,
               "level": spec.level, "method": spec.method.name, "criterion": spec.method.criterion,
               "compensation": spec.method.compensation, "fold": spec.method.fold,
               "keep": {k: list(v) for k, v in spec.keep.items()}, "compensated": list(spec.report.compensated),
               "per_position": list(spec.report.per_position), "hashes": dict(spec.hashes),
               "flops": spec.flops, "flops_base": spec.flops_base,
               "state_dict": {k: v.detach().clone() for k, v in spec.module.state_dict().items()}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_specialist_file(path: str | Path) -> dict:
    """The saved dict (weights_only load), or a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"specialist file {path} does not exist")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same refusal
        raise DataError(f"{path} is not a specialist file: {str(exc).splitlines()[0][:150]}") from None
    if not isinstance(d, dict) or d.get("kind") != FILE_KIND:
        raise DataError(f"{path} is not a graph specialist file")
    if not isinstance(d.get("version"), int) or d["version"] > FILE_VERSION:
        raise DataError(f"{path} has file version {d.get('version')}, newer than this program's {FILE_VERSION}")
    return d


def is_graph_specialist_file(path: str | Path) -> bool:
    """Whether ``path`` holds a graph specialist (without raising)."""
    try:
        read_specialist_file(path)
    except DataError:
        return False
    return True


def rebuild(loaded: LoadedModel, d: dict, graph: ChannelGraph | None = None) -> nn.Module:
    """The specialist module of a saved dict ``d`` on its base model ``loaded`` (hash checked)."""
    h = model_hash(loaded.module, loaded.description)
    if d["hashes"].get("base_model") != h:
        raise DataError("the specialist was built on another base model (hash mismatch)")
    graph = graph or analyse(loaded.module, loaded.example())
    module, _ = prune(graph, d["keep"], d["classes"], None, fold=d["fold"], compensation="none")
    state = d["state_dict"]
    per_position = set(d["per_position"])
    for name in d["compensated"]:
        layer = module.get_submodule(name)
        if name in per_position:
            const = state[f"{name}.const"][0]
            _set_module(module, name, ConstAdd(layer, torch.zeros_like(const)))
        elif layer.bias is None:
            _add_bias(layer, torch.zeros(layer.weight.shape[0]))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"the specialist's weights do not fit the rebuilt structure: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    return module.eval()


# --------------------------------------------------------------------------- accuracy


@torch.no_grad()
def predict(module: nn.Module, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    """Arg-max predictions of ``module`` on normalised inputs, in vectorised batches."""
    module.eval()
    out = [module(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def subset_accuracies(base: nn.Module, spec: nn.Module, classes: Sequence[int], x: torch.Tensor,
                      y: np.ndarray) -> tuple[float, float]:
    """(specialist accuracy, unpruned accuracy) on the images of ``classes``: the specialist's outputs are the
    classes in ascending order; the unpruned model is restricted to the same classes (arg-max among them)."""
    cls = sorted(int(c) for c in classes)
    y = np.asarray(y).astype(np.int64)
    if len(y) == 0:
        raise DataError("no test images for these classes")
    with torch.no_grad():
        ref_scores = torch.cat([base.eval()(x[i : i + 500])[:, cls] for i in range(0, len(x), 500)])
    ref = np.asarray(cls)[ref_scores.argmax(1).numpy()]
    got = np.asarray(cls)[predict(spec, x)]
    return float((got == y).mean()), float((ref == y).mean())

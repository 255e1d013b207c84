"""Surgery with mean compensation: a physically smaller plain ``nn.Module`` (no masks).

Given the kept channels of each group (:func:`specialist.graph.stats.uniform_keep` or any selection) and the
target classes:

1. every consumer of a removed channel gets that channel's per-position mean input over the target classes'
   images folded in: the constant ``layer(mean of removed channels, zeros elsewhere)`` without bias, computed
   on the unpruned weights (exact at padded borders);
2. torch-pruning removes the channels from every producer, BatchNorm, depthwise convolution and consumer of
   each group (physically: smaller weight tensors), and the classifier keeps only the target classes' outputs
   (ascending class order);
3. each constant, sliced to the consumer's kept outputs, goes into its bias (a linear; a convolution whose
   constant is the same at every position, or any convolution with ``fold="bias"``: its spatial mean), or
   stays a per-position buffer added after the convolution (:class:`ConstAdd`, ``fold="exact"``).

With ``fold="exact"`` the result equals the original network in which every consumer sees the removed
channels' per-position means instead of their values (the exactness tests check this with hooks).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from specialist.errors import UsageError
from specialist.graph.compensate import COMPENSATIONS, CompContext, lsq_refit  # noqa: F401 (re-exported)
from specialist.graph.groups import ChannelGraph, build_dependency_graph, root_pruner
from specialist.graph.stats import GraphStats

log = logging.getLogger(__name__)

FOLDS = ("exact", "bias")


class ConstAdd(nn.Module):
    """``layer(x) + const``: a layer followed by a fixed per-position compensation constant."""

    def __init__(self, layer: nn.Module, const: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("const", const.unsqueeze(0).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.const


@dataclass
class SurgeryReport:
    """What a surgery removed and folded in."""

    classes: list[int]
    kept: dict[str, int] = field(default_factory=dict)  # group root -> channels kept
    removed: dict[str, int] = field(default_factory=dict)  # group root -> channels removed
    compensated: list[str] = field(default_factory=list)  # consumers with a constant folded in
    per_position: list[str] = field(default_factory=list)  # consumers keeping a per-position constant
    max_fold_deviation: dict[str, float] = field(default_factory=dict)  # fold="bias": max |const - mean|
    refit: list[str] = field(default_factory=list)  # consumers refit by least squares


def _removed_inputs(graph: ChannelGraph, removed: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Consumer -> removed input indices (its own input coordinates)."""
    out: dict[str, set[int]] = {}
    for g in graph.groups:
        gone = set(removed.get(g.root, ()))
        if not gone:
            continue
        for c in g.consumers:
            idx = out.setdefault(c.module, set())
            idx.update(i for i, r in zip(c.in_idx, c.root_idx, strict=True) if r in gone)
    return {k: sorted(v) for k, v in out.items()}


@torch.no_grad()
def _constant(layer: nn.Module, mean: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """The removed inputs' mean contribution to ``layer``'s output (no bias), float64."""
    m = torch.zeros_like(mean)
    m[idx] = mean[idx]
    w = layer.weight.detach().to(torch.float64)
    if isinstance(layer, nn.Linear):
        return w @ m
    return layer._conv_forward(m.unsqueeze(0), w, None)[0]


def _validate(graph: ChannelGraph, keep: Mapping[str, Sequence[int]], classes: Sequence[int], k: int):
    roots = {g.root: g for g in graph.groups}
    for root, idx in keep.items():
        g = roots.get(root)
        if g is None:
            raise UsageError(f"{root!r} roots no channel group (groups: {', '.join(sorted(roots))})")
        if not g.prunable and len(set(idx)) != g.size:
            raise UsageError(f"group {root!r} is not prunable: {g.note}")
        bad = [i for i in idx if not 0 <= int(i) < g.size]
        if bad or not idx:
            raise UsageError(f"group {root!r} must keep between 1 and {g.size} channels in 0..{g.size - 1}")
    cls = sorted({int(c) for c in classes})
    if not cls or cls[0] < 0 or cls[-1] >= k:
        raise UsageError(f"classes must be a non-empty subset of 0..{k - 1}, got {list(classes)}")
    return cls


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _add_bias(layer: nn.Module, b: torch.Tensor) -> None:
    b = b.to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(b.clone())
    else:
        layer.bias.data += b


def fold_constant(layer: nn.Module, const: torch.Tensor, fold: str, const_atol: float) -> tuple[bool, float | None]:
    """Fold a consumer's compensation constant into its bias where that is exact (a per-output constant, or
    the same at every position within ``const_atol``) or asked for (``fold="bias"``: its spatial mean).
    Returns ``(folded, deviation)``: ``folded`` False when it must stay per position (the caller adds a
    :class:`ConstAdd`); ``deviation``, with ``fold="bias"``, its largest distance from the folded mean."""
    if const.dim() == 1:
        _add_bias(layer, const)
        return True, None
    spatial = tuple(range(1, const.dim()))
    avg = const.mean(dim=spatial)
    dev = float((const - avg.reshape(-1, *([1] * len(spatial)))).abs().max())
    if fold == "bias" or dev <= const_atol * max(1.0, float(const.abs().max())):
        _add_bias(layer, avg)
        return True, (dev if fold == "bias" else None)
    return False, None


@torch.no_grad()
def prune(graph: ChannelGraph, keep: Mapping[str, Sequence[int]], classes: Sequence[int],
          stats: GraphStats | None, fold: str = "exact", const_atol: float = 1e-7, compensation: str = "mean",
          ridge: float = 1e-2, merge_threshold: float = 0.0) -> tuple[nn.Module, SurgeryReport]:
    """A pruned, compensated copy of ``graph.model`` (see the module docstring); ``graph.model`` is untouched.

    ``keep``: group root -> kept channel indices (groups not named stay whole).  ``stats=None`` or
    ``compensation="none"``: no compensation (plain pruning).  ``compensation="lsq"``: every consumer is also
    refit from its kept inputs (:func:`lsq_refit`; consumers without second moments get mean compensation).
    Any name of :data:`specialist.graph.compensate.COMPENSATIONS` is accepted (``scale``, ``merge``, ...).
    """
    if fold not in FOLDS:
        raise UsageError(f"fold {fold!r} is not one of {', '.join(FOLDS)}")
    if compensation not in COMPENSATIONS:
        raise UsageError(f"compensation {compensation!r} is not one of {', '.join(COMPENSATIONS)}")
    cls_layer = graph.modules[graph.classifier]
    k = cls_layer.out_features if isinstance(cls_layer, nn.Linear) else cls_layer.out_channels
    cls = _validate(graph, keep, classes, k)
    size = {g.root: g.size for g in graph.groups}
    removed = {r: sorted(set(range(size[r])) - {int(i) for i in idx}) for r, idx in keep.items()}
    removed = {r: v for r, v in removed.items() if v}
    report = SurgeryReport(classes=cls)

    model = copy.deepcopy(graph.model).eval()
    modules = dict(model.named_modules())
    consts: dict[str, torch.Tensor] = {}
    fix = COMPENSATIONS[compensation]
    ctx = CompContext(graph, stats, cls, removed, ridge, merge_threshold)
    for name, idx in _removed_inputs(graph, removed).items():
        layer = modules[name]
        mean, weight = fix(ctx, layer, name, idx)
        if mean is not None:  # on the unpruned, unrefit weights
            consts[name] = _constant(layer, mean, idx)
        if weight is not None:
            layer.weight.data.copy_(weight.to(layer.weight.dtype))
            report.refit.append(name)

    dg = build_dependency_graph(model, graph.example)
    plan = [(modules[r], idx) for r, idx in removed.items()]
    drop_cls = sorted(set(range(k)) - set(cls))
    if drop_cls:
        plan.append((modules[graph.classifier], drop_cls))
    out_removed: dict[str, list[int]] = {}
    names = {m: n for n, m in modules.items()}
    for root, idx in plan:  # bookkeeping first, in original coordinates (each layer's outputs prune once)
        group = dg.get_pruning_group(root, root_pruner(dg, root), idx)
        for item in group.items:
            mod = item.dep.target.module
            if isinstance(mod, nn.Module) and mod in names and dg.is_out_channel_pruning_fn(item.dep.handler):
                out_removed[names[mod]] = sorted({int(i) for i in item.idxs})
    for root, idx in plan:  # a fresh group each time: torch-pruning remaps concat offsets as layers shrink
        dg.get_pruning_group(root, root_pruner(dg, root), idx).prune()
    for r, idx in keep.items():
        report.kept[r] = len(set(idx))
        report.removed[r] = size[r] - report.kept[r]

    for name, const in consts.items():
        layer = modules[name]
        gone = set(out_removed.get(name, ()))
        const = const[[i for i in range(const.shape[0]) if i not in gone]]
        report.compensated.append(name)
        if isinstance(layer, nn.Linear):
            _add_bias(layer, const)
            continue
        folded, dev = fold_constant(layer, const, fold, const_atol)
        if not folded:
            _set_module(model, name, ConstAdd(layer, const.to(layer.weight.dtype)))
            report.per_position.append(name)
        elif dev is not None:
            report.max_fold_deviation[name] = dev
    log.info("pruned %d groups, %d consumers compensated (%d per-position)", len(removed),
             len(report.compensated), len(report.per_position))
    return model.eval(), report

"""FLOPs budgets of graph models: the FLOPs of a plan (channels removed per group), the uniform plan of a level,
and the two ways to spend a budget across groups (rounded uniform counts fitted to it; the global greedy
allocation over error curves).  Pure functions over arrays; the scores and error curves come from
:mod:`specialist.graph.methods`.
"""

from __future__ import annotations

import logging

import numpy as np

from specialist import select
from specialist.graph.flops import layer_flops
from specialist.graph.groups import ChannelGraph, is_depthwise

log = logging.getLogger(__name__)


class FlopModel:
    """FLOPs of the model as a function of the channels removed per group: every counted layer's FLOPs times
    the kept share of its output group (producer, or the group of a depthwise convolution) and one minus the
    removed share of its inputs (consumer).  Exact for convolutions and linears."""

    def __init__(self, graph: ChannelGraph, n_classes: int):
        flops, _ = layer_flops(graph.model, graph.example)
        self.roots = [g.root for g in graph.groups]
        self.sizes = np.asarray([g.size for g in graph.groups], np.float64)
        names = list(flops)
        self.base = np.asarray([float(flops[n]) for n in names])
        self.out_grp = np.full(len(names), -1)
        self.in_share = np.zeros((len(names), len(self.roots)))
        row = {n: i for i, n in enumerate(names)}
        for gi, g in enumerate(graph.groups):
            for n in g.producers:
                if n in row:
                    self.out_grp[row[n]] = gi
            for n in g.members:
                if n in row and is_depthwise(graph.modules[n]):
                    self.out_grp[row[n]] = gi
            for c in g.consumers:
                if c.module in row:
                    w = graph.modules[c.module].weight
                    self.in_share[row[c.module], gi] += len(c.in_idx) / w.shape[1]
        if graph.classifier in row:
            m = graph.modules[graph.classifier]
            self.base[row[graph.classifier]] *= n_classes / m.weight.shape[0]

    def flops(self, removed: np.ndarray) -> float:
        frac = np.asarray(removed, np.float64) / self.sizes
        out = np.where(self.out_grp >= 0, 1.0 - frac[np.maximum(self.out_grp, 0)], 1.0)
        return float(np.sum(self.base * out * (1.0 - self.in_share @ frac)))

    def vector(self, counts: dict[str, int]) -> np.ndarray:
        return np.asarray([counts.get(r, 0) for r in self.roots], np.float64)


_FLOP_MODELS: dict[tuple[int, int], FlopModel] = {}


def flop_model(graph: ChannelGraph, n_classes: int) -> FlopModel:
    key = (id(graph), n_classes)
    if key not in _FLOP_MODELS:
        _FLOP_MODELS[key] = FlopModel(graph, n_classes)
    return _FLOP_MODELS[key]


def uniform_counts(graph: ChannelGraph, level: float, multiple_of: int = 1) -> dict[str, int]:
    """Channels removed per prunable group at ``level`` % (rounded; at least one channel kept)."""
    return {g.root: select.n_remove(g.size, level, multiple_of) for g in graph.prunable}


def fit_budget(model: FlopModel, counts: dict[str, int], sizes: dict[str, int], target: float,
               multiple_of: int) -> dict[str, int]:
    """Rounded uniform counts brought to at or under ``target`` FLOPs: while over it, one more ``multiple_of``
    step from the group that has lost the smallest share (at least ``multiple_of`` channels kept; when no group
    can lose a step, single channels: the budget wins over the rounding); then steps given back, the
    most-pruned group first, while the FLOPs stay within it."""
    m = max(1, int(multiple_of))
    gi = {r: i for i, r in enumerate(model.roots)}
    n = model.vector(counts)
    share = {r: counts[r] / sizes[r] for r in counts}
    f = model.flops(n)
    step = m
    while f > target:
        open_ = [r for r in counts if sizes[r] - counts[r] - step >= step]
        if not open_ and step > 1:  # the budget wins: finish in single channels (those widths not multiples)
            log.info("multiple_of %d cannot reach the budget (every group at %d channels): single channels", m, m)
            step = 1
            continue
        if not open_:
            break
        r = min(open_, key=lambda q: (share[q], -sizes[q]))
        counts[r] += step
        share[r] = counts[r] / sizes[r]
        n[gi[r]] = counts[r]
        f = model.flops(n)
    while True:
        back = sorted((r for r in counts if counts[r] >= m), key=lambda q: (-share[q], sizes[q]))
        for r in back:
            trial = n.copy()
            trial[gi[r]] -= m
            if model.flops(trial) <= target:
                counts[r] -= m
                share[r] = counts[r] / sizes[r]
                n = trial
                break
        else:
            break
    return counts


def allocate_global(curves: dict[str, np.ndarray], model: FlopModel, target: float, steps: dict[str, int],
                    caps: dict[str, int], weights: dict[str, float] | None = None,
                    start: dict[str, int] | None = None) -> dict[str, int]:
    """Greedy: remove ``steps[g]`` channels at a time from the group whose error grows least per FLOP saved
    until the FLOPs are at or under ``target`` (at most ``caps[g]`` per group), then give channels back where
    they help most while staying within it (NIN's :func:`specialist.allocation.allocate_global`).  ``start``:
    channels removed before the first step (e.g. ``size mod multiple_of``, so kept counts stay multiples)."""
    weights = weights or {}
    gi = {r: i for i, r in enumerate(model.roots)}
    n = np.zeros(len(model.roots))
    base = np.zeros(len(model.roots))
    for r, k in (start or {}).items():
        n[gi[r]] = base[gi[r]] = k

    def cost(r: str, k: float) -> float:
        return 0.0 if k <= 0 else float(curves[r][int(k) - 1]) * float(weights.get(r, 1.0))

    f = model.flops(n)
    while f > target:
        best, best_ratio, best_f = None, np.inf, f
        for r in curves:
            i, s = gi[r], steps[r]
            if n[i] + s > caps[r]:
                continue
            trial = n.copy()
            trial[i] += s
            ft = model.flops(trial)
            if f - ft <= 0:
                continue
            ratio = (cost(r, n[i] + s) - cost(r, n[i])) / (f - ft)
            if ratio < best_ratio:
                best, best_ratio, best_f = r, ratio, ft
        if best is None:
            break
        n[gi[best]] += steps[best]
        f = best_f
    while True:
        best, best_gain, best_f = None, 0.0, f
        for r in curves:
            i, s = gi[r], steps[r]
            if n[i] - s < base[i]:
                continue
            trial = n.copy()
            trial[i] -= s
            ft = model.flops(trial)
            if ft > target or ft <= f:
                continue
            gain = (cost(r, n[i]) - cost(r, n[i] - s)) / (ft - f)
            if gain > best_gain:
                best, best_gain, best_f = r, gain, ft
        if best is None:
            break
        n[gi[best]] -= steps[best]
        f = best_f
    return {r: int(n[gi[r]]) for r in curves}


def clear_caches() -> None:
    """Forget cached FLOPs models (graphs are keyed by id)."""
    _FLOP_MODELS.clear()

"""How a consumer makes up for its removed input channels: a registry of small functions (:data:`COMPENSATIONS`).

Each function gets a :class:`CompContext` (graph, statistics, target classes, removed channels per group) and
one consumer (its unpruned layer, name and removed input indices) and returns ``(means, weight)``:

- ``means``: the consumer's input means ``[C, *spatial]`` whose removed rows are folded in as a constant
  ``layer(means at the removed rows, zeros elsewhere)`` (bias or per-position buffer, see
  :mod:`specialist.graph.surgery`), or ``None`` for no constant;
- ``weight``: the consumer's new full weight (float64, same shape; the surgery then drops the removed
  columns), or ``None`` to keep it.

Registered: ``none``; ``mean`` (paper 4.3.1: per-position means); ``lsq`` (ridge least squares from the kept
inputs plus means); ``scale`` (ThiNet: least-squares scales of the kept inputs' contributions, raw second
moments, no constant); ``merge`` (Neuron Merging, data-free: each removed channel's weights, scaled, added to
its most similar kept channel's). NIN's ``correlated``/``auto`` heuristics (paper 4.3.2-4.3.3) need the
spatial cross-correlations of the NIN artifact; on graph models they fall back to ``mean`` (documented).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from specialist.graph.groups import ChannelGraph, ChannelGroup
from specialist.graph.stats import GraphStats
from specialist.merge import merge_partners
from specialist.thinet import contribution_gram, least_squares_scales


@dataclass
class CompContext:
    """What a compensation may read."""

    graph: ChannelGraph
    stats: GraphStats | None
    classes: list[int]
    removed: Mapping[str, list[int]]  # group root -> removed channels
    ridge: float = 1e-2
    merge_threshold: float = 0.0
    cache: dict = field(default_factory=dict)


Fix = tuple[torch.Tensor | None, torch.Tensor | None]
CompFn = Callable[[CompContext, nn.Module, str, list[int]], Fix]
COMPENSATIONS: dict[str, CompFn] = {}


def register_compensation(*names: str) -> Callable[[CompFn], CompFn]:
    """Decorator: add a compensation to :data:`COMPENSATIONS` under ``names``."""

    def add(fn: CompFn) -> CompFn:
        for n in names:
            COMPENSATIONS[n] = fn
        return fn

    return add


def consumer_matrix(layer: nn.Module, name: str, graph: ChannelGraph, classes: Sequence[int]) -> torch.Tensor:
    """The consumer's weights as ``Wf [C_in, O * kernel]`` (float64); the classifier: target rows only."""
    w = layer.weight.detach().double()
    if name == graph.classifier:
        w = w[sorted(int(k) for k in classes)]
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def position_cov(stats: GraphStats, name: str, classes: Sequence[int]) -> torch.Tensor:
    """Within-position covariance of the consumer's inputs, ``E[x x^T] - mean_p mu(p) mu(p)^T`` ``[C, C]``."""
    mean = stats.subset(stats.mean, name, classes)
    m = mean.reshape(mean.shape[0], -1)
    return stats.subset(stats.gram, name, classes) - m @ m.T / m.shape[1]


@torch.no_grad()
def lsq_refit(layer: nn.Module, stats: GraphStats, name: str, classes: Sequence[int], idx: list[int],
              ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Least-squares refit of a consumer from its kept inputs (second moments of the artifact).

    Each removed input channel r is predicted at every position p from the kept ones k by ridge regression on
    the within-position covariance: ``x_r(p) ~ mu_r(p) + A (x_k(p) - mu_k(p))``.  Folding this into the layer
    gives the kept columns ``W_k + W_r A`` (every kernel tap) and the constant ``W_r (mu_r(p) - A mu_k(p))``.
    Returns (the input means with removed rows replaced by ``mu_r - A mu_k``, the weight delta on the kept
    columns ``[O, K, *kernel]``, the kept input indices).  ``A = 0`` is mean compensation.
    """
    mean = stats.subset(stats.mean, name, classes)  # [C, *spatial]
    c = mean.shape[0]
    gone = sorted(set(idx))
    kept = [i for i in range(c) if i not in set(gone)]
    cov = position_cov(stats, name, classes)
    ckk = cov[kept][:, kept]
    lam = ridge * float(torch.trace(ckk)) / max(len(kept), 1) + 1e-12
    a = torch.linalg.solve(ckk + lam * torch.eye(len(kept), dtype=ckk.dtype), cov[kept][:, gone]).T  # [R, K]
    adj = mean.clone()
    adj[gone] = mean[gone] - torch.tensordot(a, mean[kept], dims=([1], [0]))
    w = layer.weight.detach().to(torch.float64)
    delta = torch.einsum("or...,rk->ok...", w[:, gone], a)
    return adj, delta, kept


@register_compensation("none")
def comp_none(ctx: CompContext, layer: nn.Module, name: str, idx: list[int]) -> Fix:
    """Drop the removed inputs."""
    return None, None


@register_compensation("mean", "auto", "correlated")
def comp_mean(ctx: CompContext, layer: nn.Module, name: str, idx: list[int]) -> Fix:
    """Per-position means of the removed inputs over the target classes."""
    if ctx.stats is None:
        return None, None
    return ctx.stats.subset(ctx.stats.mean, name, ctx.classes), None


@register_compensation("lsq")
def comp_lsq(ctx: CompContext, layer: nn.Module, name: str, idx: list[int]) -> Fix:
    """Ridge least squares from the kept inputs plus per-position means (:func:`lsq_refit`)."""
    if ctx.stats is None or name not in ctx.stats.gram:
        return comp_mean(ctx, layer, name, idx)
    adj, delta, kept = lsq_refit(layer, ctx.stats, name, ctx.classes, idx, ctx.ridge)
    w = layer.weight.detach().double().clone()
    w[:, kept] += delta
    return adj, w


@register_compensation("scale")
def comp_scale(ctx: CompContext, layer: nn.Module, name: str, idx: list[int]) -> Fix:
    """ThiNet: the kept inputs' weights rescaled so their contributions best reproduce the full output."""
    if ctx.stats is None or name not in ctx.stats.gram:
        return None, None
    gram = ctx.stats.subset(ctx.stats.gram, name, ctx.classes).numpy()
    q = contribution_gram(gram, consumer_matrix(layer, name, ctx.graph, ctx.classes).numpy())
    gone = set(idx)
    kept = np.asarray([i for i in range(len(q)) if i not in gone], np.int64)
    s = torch.as_tensor(least_squares_scales(q, kept))
    w = layer.weight.detach().double().clone()
    w[:, kept] *= s.reshape(1, -1, *([1] * (w.dim() - 2)))
    return None, w


def group_filters(graph: ChannelGraph, g: ChannelGroup) -> np.ndarray:
    """Each group channel as one vector: the weights and biases of every producer, BatchNorm and depthwise
    convolution that carries it (not its consumers), concatenated ``[size, D]``."""
    consumers = {c.module for c in g.consumers}
    parts = []
    for name in g.members:
        if name in consumers:
            continue
        m = graph.modules[name]
        for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] == g.size:
                parts.append(p.detach().double().reshape(g.size, -1).numpy())
    return np.concatenate(parts, axis=1) if parts else np.ones((g.size, 1))


def _partners(ctx: CompContext) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per group root: (removed channels, partner or -1, scale), computed once per build."""
    if "partners" not in ctx.cache:
        out = {}
        for g in ctx.graph.groups:
            gone = np.asarray(sorted(ctx.removed.get(g.root, ())), np.int64)
            if len(gone):
                kept = np.asarray(sorted(set(range(g.size)) - set(gone.tolist())), np.int64)
                f = group_filters(ctx.graph, g)
                partner, scale, _ = merge_partners(f, np.zeros(g.size), kept, gone, ctx.merge_threshold)
                out[g.root] = (gone, partner, scale)
        ctx.cache["partners"] = out
    return ctx.cache["partners"]


@register_compensation("merge")
def comp_merge(ctx: CompContext, layer: nn.Module, name: str, idx: list[int]) -> Fix:
    """Neuron Merging: a removed channel's weights times its scale go to its most similar kept channel
    (position by position where a channel is several inputs, e.g. flatten -> Linear)."""
    partners = _partners(ctx)
    w = layer.weight.detach().double().clone()
    new = w.clone()
    for g in ctx.graph.groups:
        if g.root not in partners:
            continue
        for c in g.consumers:
            if c.module != name:
                continue
            slots: dict[int, list[int]] = {}
            for i, r in zip(c.in_idx, c.root_idx, strict=True):
                slots.setdefault(r, []).append(i)
            for j, k, s in zip(*partners[g.root], strict=True):
                if k < 0:
                    continue
                for ij, ik in zip(slots.get(int(j), ()), slots.get(int(k), ()), strict=False):
                    new[:, ik] += float(s) * w[:, ij]
    return None, new

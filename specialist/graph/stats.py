"""Per-class statistics of any CNN at the inputs of every consumer of a channel group (forward hooks).

For each consumer layer (conv with groups=1 or linear reading a group) and each class k, over the images of
class k:

- ``mean[name]``: ``[K, C, *spatial]`` the per-position mean input (what mean compensation folds in);
- ``abs_mean[name]``: ``[K, C]`` mean |input| per channel (an activation impact proxy);
- ``sq_mean[name]``: ``[K, C]`` second moment E[x^2] per channel;
- ``gram[name]`` (optional): ``[K, C, C]`` E[x x^T] over positions (correlations, least squares).

Accumulated in float64 with ``index_add_`` per batch (no per-image Python loop).  The statistics of a class
subset are the count-weighted average of its classes (:meth:`GraphStats.subset`).

Impact proxies per group channel: :data:`CRITERIA` (``l1``: L1 norm of the producing filters, ``activation``:
mean |activation| at the consumers' inputs for the target classes, ``variance``, ``wvar``: within-position
variance x squared consumer weights).  The paper's impacts (autograd, finite difference) per group are in
:mod:`specialist.graph.impacts` and stored in ``impact_grad`` / ``impact_fd``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from specialist.errors import ArtifactError, InputError, UsageError
from specialist.graph.groups import ChannelGraph, ChannelGroup

log = logging.getLogger(__name__)


@dataclass
class GraphStats:
    """Per-class statistics keyed by consumer layer name (see the module docstring)."""

    counts: np.ndarray  # [K] images per class
    mean: dict[str, torch.Tensor]
    abs_mean: dict[str, torch.Tensor]
    sq_mean: dict[str, torch.Tensor]
    gram: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per group root: ``[K, size]`` impacts (:mod:`specialist.graph.impacts`), autograd and finite difference
    impact_grad: dict[str, np.ndarray] = field(default_factory=dict)
    impact_fd: dict[str, np.ndarray] = field(default_factory=dict)

    def impacts(self, kind: str) -> dict[str, np.ndarray]:
        """The ``grad`` or ``fd`` impact table; ArtifactError when the artifact does not hold it."""
        table = {"grad": self.impact_grad, "fd": self.impact_fd}.get(kind)
        if table is None:
            raise UsageError(f"unknown impact kind {kind!r}; use fd or grad")
        if not table:
            raise ArtifactError(f"the statistics artifact has no {kind} impacts; recompute it with 'harness stats "
                                f"--model ... --impact {'both' if kind == 'fd' else 'grad'}'")
        return table

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def weights(self, classes: Sequence[int]) -> torch.Tensor:
        """Count weights ``[len(classes)]`` of a class subset (sum 1); UsageError for classes without images."""
        cls = list(classes)
        bad = [c for c in cls if not 0 <= c < self.num_classes or self.counts[c] == 0]
        if bad or not cls:
            raise UsageError(f"no statistics for classes {bad or cls} (have {self.num_classes} classes, "
                             f"counts {self.counts.tolist()})")
        w = torch.as_tensor(self.counts[cls], dtype=torch.float64)
        return w / w.sum()

    def subset(self, table: dict[str, torch.Tensor], name: str, classes: Sequence[int]) -> torch.Tensor:
        """The count-weighted average of ``table[name]`` over ``classes``."""
        w = self.weights(classes)
        t = table[name][list(classes)]
        return torch.tensordot(w, t, dims=([0], [0]))


@torch.no_grad()
def collect_stats(graph: ChannelGraph, x: torch.Tensor, y, num_classes: int, batch: int = 256,
                  gram: bool = False, layers: Sequence[str] | None = None) -> GraphStats:
    """Run ``graph.model`` over normalised images ``x`` [N, C, H, W] with labels ``y`` and hook every consumer."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"need as many labels as images (got {len(x)} images, {len(y)} labels)")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise InputError(f"labels must lie in 0..{num_classes - 1}")
    names = list(layers) if layers is not None else graph.consumers()
    sums: dict[str, torch.Tensor] = {}
    abs_s: dict[str, torch.Tensor] = {}
    sq_s: dict[str, torch.Tensor] = {}
    gram_s: dict[str, torch.Tensor] = {}
    labels: list[torch.Tensor] = [torch.zeros(0)]

    def hook(name: str) -> Callable:
        def fn(_mod, inputs):
            a = inputs[0].detach()
            onehot = labels[0]  # [K, B] float32: per-class sums are one matrix product (float32 per batch)
            flat = a.reshape(a.shape[0], a.shape[1], -1)  # [B, C, P]
            if name not in sums:
                sums[name] = torch.zeros((num_classes, *a.shape[1:]), dtype=torch.float64)
                abs_s[name] = torch.zeros((num_classes, a.shape[1]), dtype=torch.float64)
                sq_s[name] = torch.zeros((num_classes, a.shape[1]), dtype=torch.float64)
                if gram:
                    gram_s[name] = torch.zeros((num_classes, a.shape[1], a.shape[1]), dtype=torch.float64)
            sums[name] += (onehot @ a.reshape(a.shape[0], -1)).reshape(sums[name].shape)
            abs_s[name] += onehot @ flat.abs().mean(2)
            sq_s[name] += onehot @ flat.square().mean(2)
            if gram:  # per-image E[x x^T] over positions (float32 bmm), summed per class in float64
                g = torch.bmm(flat, flat.transpose(1, 2)).reshape(a.shape[0], -1).double() / flat.shape[2]
                gram_s[name] += (onehot.double() @ g).reshape(gram_s[name].shape)
        return fn

    hooks = [graph.modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        graph.model.eval()
        for i in range(0, len(x), batch):
            labels[0] = torch.nn.functional.one_hot(y[i : i + batch], num_classes).T.to(torch.float32)
            graph.model(x[i : i + batch])
    finally:
        for h in hooks:
            h.remove()
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    div = counts.clamp(min=1)

    def per_class(t: torch.Tensor) -> torch.Tensor:
        return t / div.reshape(-1, *([1] * (t.dim() - 1)))

    return GraphStats(counts.numpy().astype(np.int64), {n: per_class(t) for n, t in sums.items()},
                      {n: per_class(t) for n, t in abs_s.items()}, {n: per_class(t) for n, t in sq_s.items()},
                      {n: per_class(t) for n, t in gram_s.items()})


# --------------------------------------------------------------------------- impact proxies


def _l1(graph: ChannelGraph, stats: GraphStats | None, group: ChannelGroup, classes) -> np.ndarray:
    score = np.zeros(group.size)
    for name in group.producers:
        w = graph.modules[name].weight.detach()
        score += w.abs().reshape(w.shape[0], -1).sum(1).double().numpy()[: group.size]
    return score


def _activation(graph: ChannelGraph, stats: GraphStats | None, group: ChannelGroup, classes) -> np.ndarray:
    if stats is None:
        raise UsageError("the activation criterion needs statistics")
    score = np.zeros(group.size)
    hits = np.zeros(group.size)
    for c in group.consumers:
        a = stats.subset(stats.abs_mean, c.module, classes).numpy()  # [C] (a linear: its features)
        np.add.at(score, np.asarray(c.root_idx), a[np.asarray(c.in_idx)])
        np.add.at(hits, np.asarray(c.root_idx), 1.0)
    return score / np.maximum(hits, 1.0)


def within_variance(stats: GraphStats, layer: str, classes) -> torch.Tensor:
    """Per input channel of ``layer``: E[(x - mean at its position)^2] over the target classes' images, the
    second moment mean compensation leaves unexplained ([C], float64, clamped at 0)."""
    mu = stats.subset(stats.mean, layer, classes)  # [C, *spatial]
    sq = stats.subset(stats.sq_mean, layer, classes)  # [C]
    mu2 = mu.reshape(mu.shape[0], -1).square().mean(1)
    return (sq - mu2).clamp(min=0.0)


def _per_consumer(graph: ChannelGraph, group: ChannelGroup, value) -> np.ndarray:
    score = np.zeros(group.size)
    for c in group.consumers:
        np.add.at(score, np.asarray(c.root_idx), value(c)[np.asarray(c.in_idx)])
    return score


def _variance(graph: ChannelGraph, stats: GraphStats | None, group: ChannelGroup, classes) -> np.ndarray:
    if stats is None:
        raise UsageError("the variance criterion needs statistics")
    hits = _per_consumer(graph, group, lambda c: np.ones(stats.sq_mean[c.module].shape[1]))
    var = _per_consumer(graph, group, lambda c: within_variance(stats, c.module, classes).numpy())
    return var / np.maximum(hits, 1.0)


def _impact(graph: ChannelGraph, stats: GraphStats | None, group: ChannelGroup, classes) -> np.ndarray:
    """Expected squared change of every consumer's outputs (the classifier: the target classes' scores) when
    the channel is replaced by its per-position mean: within-position variance x squared weight norm."""
    if stats is None:
        raise UsageError("the impact criterion needs statistics")
    cls = sorted(int(k) for k in classes)

    def value(c) -> np.ndarray:
        w = graph.modules[c.module].weight.detach().double()
        if c.module == graph.classifier:
            w = w[cls]
        energy = w.square().transpose(0, 1).reshape(w.shape[1], -1).sum(1)  # [C_in] (per group for depthwise)
        return (within_variance(stats, c.module, classes) * energy).numpy()

    return _per_consumer(graph, group, value)


#: Impact proxy name -> function(graph, stats, group, classes) -> score per group channel (higher = keep).
CRITERIA: dict[str, Callable[..., np.ndarray]] = {"l1": _l1, "activation": _activation, "variance": _variance,
                                                   "wvar": _impact}


def channel_scores(graph: ChannelGraph, stats: GraphStats | None, group: ChannelGroup, classes,
                   criterion: str = "activation") -> np.ndarray:
    """Scores of ``group``'s channels by ``criterion`` (one of :data:`CRITERIA`)."""
    try:
        fn = CRITERIA[criterion]
    except KeyError:
        raise UsageError(f"unknown criterion {criterion!r}; one of {', '.join(CRITERIA)}") from None
    return fn(graph, stats, group, classes)


def uniform_keep(graph: ChannelGraph, level_pct: float, stats: GraphStats | None = None, classes=(),
                 criterion: str = "activation") -> dict[str, list[int]]:
    """Kept channels of every prunable group (keyed by root layer) when ``level_pct`` % of each is removed,
    the lowest-scoring ones first; every group keeps at least one channel."""
    if not 0 <= level_pct < 100:
        raise UsageError(f"level must be in [0, 100), got {level_pct}")
    keep: dict[str, list[int]] = {}
    for g in graph.prunable:
        n_remove = min(g.size - 1, int(round(g.size * level_pct / 100.0)))
        s = channel_scores(graph, stats, g, classes, criterion)
        order = np.argsort(-s, kind="stable")
        keep[g.root] = sorted(int(i) for i in order[: g.size - n_remove])
    return keep

"""Per-class impacts of every group channel of any CNN (paper 4.2.1): autograd and finite difference.

The impact ``I_jy`` of group channel j on class y is the derivative of the softmax probability of class y,
averaged over the class-y images, with respect to a scale ``s_j`` on the channel *at every consumer's input*
(removing a channel from a group removes it from every layer that reads it, so the scale multiplies it there):

- ``grad``: exact by autograd, ``sum_c sum_positions a_cj * dp_y/da_cj`` (activation x gradient, summed over
  the group's consumers c); one backward pass per batch;
- ``fd``: the paper's forward finite difference ``(p_y(s_j = 1 + delta) - p_y) / delta``, one forward pass
  per channel and image (batched over channels), so it runs on ``fd_per_class`` images per class only.

Both are ``[K, size]`` arrays per group (keyed by the group's root layer), float64.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from specialist.errors import InputError
from specialist.graph.groups import ChannelGraph, ChannelGroup

log = logging.getLogger(__name__)


def _check(x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"need as many labels as images (got {len(x)} images, {len(y)} labels)")
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise InputError(f"labels must lie in 0..{k - 1}")


def _frozen(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, bool]]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    return flags


def grad_impacts(graph: ChannelGraph, x: torch.Tensor, y, num_classes: int, batch: int = 250,
                 groups: Sequence[ChannelGroup] | None = None) -> dict[str, np.ndarray]:
    """Autograd impacts ``[K, size]`` per group root (see the module docstring)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    _check(x, y, num_classes)
    groups = list(groups if groups is not None else graph.groups)
    names = sorted({c.module for g in groups for c in g.consumers})
    scales: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def fn(_mod, inputs):
            a = inputs[0]
            s = torch.ones((a.shape[0], a.shape[1], *([1] * (a.dim() - 2))), requires_grad=True)
            scales[name] = s
            return (a * s, *inputs[1:])
        return fn

    acc = {g.root: torch.zeros((num_classes, g.size), dtype=torch.float64) for g in groups}
    hooks = [graph.modules[n].register_forward_pre_hook(hook(n)) for n in names]
    flags = _frozen(graph.model)
    try:
        graph.model.eval()
        for i in range(0, len(x), batch):
            yb = y[i : i + batch]
            with torch.enable_grad():
                p = torch.softmax(graph.model(x[i : i + batch]).double(), dim=1)
                grads = torch.autograd.grad(p.gather(1, yb[:, None]).sum(), [scales[n] for n in names])
            per = {n: gr.reshape(gr.shape[0], gr.shape[1]).double() for n, gr in zip(names, grads, strict=True)}
            onehot = torch.nn.functional.one_hot(yb, num_classes).T.double()
            for g in groups:
                tot = torch.zeros((len(yb), g.size), dtype=torch.float64)
                for c in g.consumers:
                    tot.index_add_(1, torch.as_tensor(c.root_idx), per[c.module][:, list(c.in_idx)])
                acc[g.root] += onehot @ tot
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).double()
    return {r: (a / counts[:, None]).numpy() for r, a in acc.items()}


def _scaler(f: torch.Tensor) -> Callable:
    """A pre-hook scaling copy i of the batch (``[n * B, C, ...]``, n = len(f)) channel-wise by ``f[i]``."""

    def pre(_mod, inputs):
        a = inputs[0]
        shaped = a.reshape(len(f), -1, *a.shape[1:])
        return ((shaped * f.reshape(len(f), 1, f.shape[1], *([1] * (a.dim() - 2)))).reshape(a.shape),
                *inputs[1:])

    return pre


@torch.no_grad()
def fd_impacts(graph: ChannelGraph, x: torch.Tensor, y, num_classes: int, per_class: int = 10,
               delta: float = 1e-2, groups: Sequence[ChannelGroup] | None = None,
               max_batch: int = 1024) -> dict[str, np.ndarray]:
    """Finite-difference impacts ``[K, size]`` per group root on the first ``per_class`` images of each class."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    _check(x, y, num_classes)
    idx = np.concatenate([np.flatnonzero(y.numpy() == k)[:per_class] for k in range(num_classes)])
    x, y = x[np.sort(idx)], y[np.sort(idx)]
    groups = list(groups if groups is not None else graph.prunable)
    graph.model.eval()
    p0 = torch.softmax(graph.model(x).double(), 1).gather(1, y[:, None])[:, 0]
    onehot = torch.nn.functional.one_hot(y, num_classes).T.double()
    counts = onehot.sum(1).clamp(min=1)
    out: dict[str, np.ndarray] = {}
    n_img = len(x)
    for g in groups:
        acc = torch.zeros((num_classes, g.size), dtype=torch.float64)
        chunk = max(1, max_batch // n_img)
        for c0 in range(0, g.size, chunk):
            chans = list(range(c0, min(c0 + chunk, g.size)))
            factors = {}
            for c in g.consumers:
                width = graph.modules[c.module].weight.shape[1]
                f = torch.ones((len(chans), width))
                for slot, j in enumerate(chans):
                    f[slot, [i for i, r in zip(c.in_idx, c.root_idx, strict=True) if r == j]] = 1.0 + delta
                factors[c.module] = f

            hooks = [graph.modules[n].register_forward_pre_hook(_scaler(f)) for n, f in factors.items()]
            try:
                xs = x.repeat(len(chans), *([1] * (x.dim() - 1)))
                p1 = torch.softmax(graph.model(xs).double(), 1).reshape(len(chans), n_img, -1)
            finally:
                for h in hooks:
                    h.remove()
            p1y = p1.gather(2, y[None, :, None].expand(len(chans), n_img, 1))[..., 0]
            acc[:, chans] += onehot @ ((p1y - p0[None]) / delta).T
        out[g.root] = (acc / counts[:, None]).numpy()
    return out

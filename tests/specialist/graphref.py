"""The independent exactness reference of the graph tests: the UNPRUNED model, run with forward pre-hooks that
replace each consumer's removed input channels by their per-position means over the target classes.

A mean-compensated specialist must equal it (within float32 rounding); it shares no code with the surgery.
"""

from __future__ import annotations

import torch
from torch import nn


def removed_inputs(graph, keep) -> dict[str, list[int]]:
    """Per consumer module, the input indices whose group channel is not in ``keep`` (absent root: all kept)."""
    removed: dict[str, set[int]] = {}
    for g in graph.groups:
        gone = set(range(g.size)) - set(keep.get(g.root, range(g.size)))
        for c in g.consumers:
            removed.setdefault(c.module, set()).update(
                i for i, r in zip(c.in_idx, c.root_idx, strict=True) if r in gone)
    return {name: sorted(idx) for name, idx in removed.items() if idx}


@torch.no_grad()
def hooked_reference(graph, stats, keep, classes, x: torch.Tensor) -> torch.Tensor:
    """Scores of the target ``classes`` of the unpruned ``graph.model`` on ``x``, every removed input replaced
    by its count-weighted per-position mean over ``classes`` (``stats.mean``)."""
    w = torch.tensor(stats.counts[classes], dtype=torch.float64)
    w = w / w.sum()
    hooks = []
    for name, idx in removed_inputs(graph, keep).items():
        mean = torch.tensordot(w, stats.mean[name][classes], dims=([0], [0])).float()

        def pre(_m, inputs, idx=idx, mean=mean):
            a = inputs[0].clone()
            a[:, idx] = mean[idx]
            return (a,)

        hooks.append(graph.modules[name].register_forward_pre_hook(pre))
    try:
        return graph.model(x)[:, classes]
    finally:
        for h in hooks:
            h.remove()


class ConcatNet(nn.Module):
    """Two branches concatenated (channels by offset), a conv reading both, flatten of 2x2 -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(11, 12, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(torch.flatten(self.pool(torch.relu(self.mix(x))), 1))

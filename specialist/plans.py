"""Which channels each prunable layer loses: allocations by name (``Method.allocation``), a registry of small
functions over the method, the statistics and the channel scores.

``method`` is a :class:`specialist.methods.Method` (typed loosely: the method module validates names against
this registry, so it cannot be imported here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specialist import select
from specialist.allocation import (
    EliminationPath,
    allocate_global,
    elimination_path,
    next_layer_factor,
    plan_flops,
    uniform_counts,
)
from specialist.model import PRUNABLE, NinWeights
from specialist.scores import layer_cov, next_weights
from specialist.stats import SubsetStats


def plan_uniform(scores: dict[str, np.ndarray], level: float, multiple_of: int = 1) -> dict[str, np.ndarray]:
    """Paper 4.2.2: in every prunable layer, prune the level's share of lowest-scoring channels."""
    return {L: select.select_prune(s, select.n_remove(len(s), level, multiple_of)) for L, s in scores.items()}


def plan_global(method: Any, base: NinWeights, st: SubsetStats, scores: dict[str, np.ndarray],
                level: float, classes, curves: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Global allocation: the uniform plan's FLOPs budget spent where the normalised next-layer
    reconstruction error (see :mod:`specialist.allocation`) grows least per FLOP saved; inside each
    layer the method's scores still decide which channels go."""
    orders, curves = {}, dict(curves or {})
    for L in PRUNABLE:
        orders[L] = select.order_from_scores(scores[L])
        if L in curves:
            continue
        wf = next_layer_factor(*next_weights(base, L, classes))
        _, curves[L] = elimination_path(layer_cov(st, L), wf, method.ridge, order=orders[L])
    # The budget is the level's (the paper's uniform plan, unrounded), whatever the widths are rounded to:
    # a rounded method lands at or under the same FLOPs as an unrounded one, so the two compare at one budget.
    target = plan_flops(uniform_counts(level), len(classes))
    counts = allocate_global(curves, target, len(classes), method.multiple_of, method.max_remove_pct,
                             dict(method.layer_weights) if method.layer_weights else None)
    # a lazy path (the recon score's) gives its own first channels: the steps the allocation did not read
    # are made now, and only as many as the plan removes
    return {L: np.sort(curves[L].removed(counts[L]) if isinstance(curves[L], EliminationPath)
                       else orders[L][: counts[L]]) for L in PRUNABLE}


def _allocate_uniform(method: Any, base: NinWeights, st: SubsetStats, scores: dict[str, np.ndarray],
                      level: float, classes, curves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return plan_uniform(scores, level, method.multiple_of)


def _allocate_global(method: Any, base: NinWeights, st: SubsetStats, scores: dict[str, np.ndarray],
                     level: float, classes, curves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if level <= 0:  # nothing to spend
        return plan_uniform(scores, level, method.multiple_of)
    return plan_global(method, base, st, scores, level, classes, curves)


#: Allocation by name (``Method.allocation``): which channels each prunable layer loses.
ALLOCATIONS = {"uniform": _allocate_uniform, "global": _allocate_global}

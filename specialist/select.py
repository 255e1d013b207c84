"""Channel scoring and selection: pure functions over arrays (paper 4.2.2 and alternatives)."""

from __future__ import annotations

import numpy as np

from specialist.errors import UsageError


def n_remove(channels: int, level_pct: float, multiple_of: int = 1) -> int:
    """Channels removed at ``level_pct`` percent (rounded), optionally so the kept count is a multiple."""
    removed = int(round(channels * level_pct / 100.0))
    if multiple_of > 1:
        kept = channels - removed
        kept = max(multiple_of, int(round(kept / multiple_of)) * multiple_of)
        removed = channels - min(kept, channels)
    return max(0, min(channels - 1, removed))


def paper_scores(impact: np.ndarray) -> np.ndarray:
    """Paper 4.2.2: a channel's score is the max over target classes of its impact I_jy ([C, |Y|])."""
    return impact.max(axis=1)


def abs_scores(impact: np.ndarray) -> np.ndarray:
    """Magnitude variant: max over target classes of |I_jy|."""
    return np.abs(impact).max(axis=1)


def l1_scores(weight: np.ndarray) -> np.ndarray:
    """Li et al.: L1 norm of each output filter ([O, I, k, k] -> [O])."""
    return np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)


def variance_scores(gram: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """Polyak & Wolf: activation variance over images and positions, from E[x^2] and the mean map."""
    ex2 = np.diag(gram)
    mu = mean_map.reshape(mean_map.shape[0], -1).mean(axis=1)
    return np.maximum(ex2 - mu**2, 0.0)


def select_prune(scores: np.ndarray, n_prune: int) -> np.ndarray:
    """Indices (sorted) of the ``n_prune`` lowest-scoring channels: score below the level's percentile.

    Ties break by channel index so the result is deterministic.
    """
    if n_prune <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(scores)), scores))
    return np.sort(order[:n_prune])


def order_from_scores(scores: np.ndarray) -> np.ndarray:
    """Channels in pruning order: lowest score first, ties by index (as :func:`select_prune`)."""
    return np.lexsort((np.arange(len(scores)), scores)).astype(np.int64)


def scores_from_order(order: np.ndarray) -> np.ndarray:
    """Scores that reproduce a pruning order (the first channel removed scores 0, the last C-1)."""
    s = np.empty(len(order), np.float64)
    s[np.asarray(order, np.int64)] = np.arange(len(order), dtype=np.float64)
    return s


def kept_from_pruned(channels: int, pruned: np.ndarray) -> np.ndarray:
    mask = np.ones(channels, bool)
    mask[pruned] = False
    return np.flatnonzero(mask)


def check_classes(classes, n_classes: int = 10) -> list[int]:
    """Validate a target class list: non-empty, unique, in range."""
    cls = list(classes)
    if not cls:
        raise UsageError("--classes: empty; give target classes like 0,1,2")
    bad = [c for c in cls if not 0 <= c < n_classes]
    if bad:
        raise UsageError(f"--classes: {bad[0]} is out of range 0..{n_classes - 1}")
    if len(set(cls)) != len(cls):
        dup = sorted({c for c in cls if cls.count(c) > 1})
        raise UsageError(f"--classes: class {dup[0]} is repeated")
    return sorted(cls)


def check_level(level: float) -> float:
    if not (0 <= level < 100):
        raise UsageError(f"--level: {level} must be at least 0 and below 100 (percent of channels removed)")
    return float(level)

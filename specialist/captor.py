"""CAPTOR-style class-preference scores (Qin et al. 2019, as far as its abstract describes it).

Each filter's class preference is its gradient x activation impact on every class (the artifact's
``impact_grad``, all ten classes), clipped at zero and normalised to a distribution over classes.  Filters
are clustered by preference (k-means, deterministic initialisation); a cluster's relevance is the share of
its centroid that falls on the target classes, and the filters of the least relevant clusters go first
(ties inside a cluster: the filter's own preference mass on the targets).
"""

from __future__ import annotations

import numpy as np


def preferences(impact_all: np.ndarray) -> np.ndarray:
    """[C, Y] impacts -> [C, Y] class-preference distributions (rows sum to 1; no preference -> uniform)."""
    pos = np.maximum(np.asarray(impact_all, np.float64), 0.0)
    tot = pos.sum(axis=1, keepdims=True)
    uniform = np.full_like(pos, 1.0 / pos.shape[1])
    return np.where(tot > 0, pos / np.where(tot > 0, tot, 1.0), uniform)


def kmeans(x: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Plain k-means with farthest-point initialisation from the heaviest row (deterministic).

    Returns (labels [N], centroids [k, D]).
    """
    n = len(x)
    k = max(1, min(k, n))
    first = int(np.argmax((x * x).sum(axis=1)))
    cent = [x[first]]
    d2 = ((x - cent[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        i = int(np.argmax(d2))
        cent.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    c = np.array(cent)
    labels = np.zeros(n, np.int64)
    for _ in range(iters):
        dist = ((x[:, None, :] - c[None]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        counts = np.bincount(new, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, new, x)
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
    return labels, c


def captor_scores(impact_all: np.ndarray, classes, n_clusters: int = 10) -> np.ndarray:
    """Per-filter keep score: its cluster's preference mass on ``classes`` (+ a tie-break by its own)."""
    pref = preferences(impact_all)
    cls = np.asarray(list(classes), np.int64)
    labels, cent = kmeans(pref, n_clusters)
    relevance = cent[:, cls].sum(axis=1)
    own = pref[:, cls].sum(axis=1) * np.maximum(np.asarray(impact_all, np.float64)[:, cls], 0).sum(axis=1)
    own = own / own.max() if own.max() > 0 else own
    return relevance[labels] + 1e-3 * own

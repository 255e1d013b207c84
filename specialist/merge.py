"""Neuron Merging (Kim et al. 2020), data-free: each pruned filter is merged into its most similar kept filter.

With ReLU and max/average pooling after a layer, a filter j whose weights and bias are a positive multiple
s of a kept filter k's (cosine similarity 1) produces exactly s times k's output, so adding s times the next
layer's weights on j to those on k loses nothing.  For cosine below 1 it is the best one-filter substitute
the weights alone suggest; below a threshold the pruned filter is simply dropped.
"""

from __future__ import annotations

import numpy as np


def filter_vectors(w_self: np.ndarray, b_self: np.ndarray) -> np.ndarray:
    """Each output filter as one vector [C, in*k*k + 1] (weights, then bias)."""
    w = np.asarray(w_self, np.float64).reshape(w_self.shape[0], -1)
    return np.concatenate([w, np.asarray(b_self, np.float64)[:, None]], axis=1)


def merge_partners(w_self: np.ndarray, b_self: np.ndarray, kept: np.ndarray, pruned: np.ndarray,
                   threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pruned filter: (partner index into the layer or -1, scale s >= 0, cosine similarity).

    The partner is the kept filter of highest cosine similarity; s = |f_j| / |f_k| (the projection of
    f_j on f_k's direction when they are parallel).  A pruned filter whose best cosine is below
    ``threshold`` (or not positive) gets partner -1 and scale 0.
    """
    f = filter_vectors(w_self, b_self)
    norms = np.linalg.norm(f, axis=1)
    unit = f / np.maximum(norms, 1e-12)[:, None]
    kept = np.asarray(kept, np.int64)
    pruned = np.asarray(pruned, np.int64)
    if len(pruned) == 0 or len(kept) == 0:
        return np.full(len(pruned), -1), np.zeros(len(pruned)), np.zeros(len(pruned))
    cos = unit[pruned] @ unit[kept].T  # [P, K]
    best = cos.argmax(axis=1)
    c = cos[np.arange(len(pruned)), best]
    partner = kept[best]
    scale = norms[pruned] / np.maximum(norms[partner], 1e-12)
    ok = (c > max(threshold, 0.0))
    return np.where(ok, partner, -1), np.where(ok, scale, 0.0), c

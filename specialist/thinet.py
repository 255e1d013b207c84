"""ThiNet (Luo et al. 2017) from second moments: greedy channel selection by next-layer reconstruction and
least-squares scales of the kept channels (pure functions over arrays).

ThiNet samples next-layer output entries y = sum_j xhat_j, where xhat_j is channel j's contribution, and
greedily removes the set T that minimises sum (sum_{j in T} xhat_j)^2.  With ``Wf`` [C, M] the next layer's
weights (one column per output channel and kernel position, see :func:`specialist.allocation.next_layer_matrix`)
and ``G`` = E[x x^T] the layer's second moments, E[xhat_j . xhat_k] = G_jk (Wf_j . Wf_k) =: Q_jk (kernel
positions treated as independent samples), so both steps need only the statistics artifact.
"""

from __future__ import annotations

import numpy as np


def contribution_gram(gram: np.ndarray, wf: np.ndarray) -> np.ndarray:
    """Q_jk = E[xhat_j . xhat_k] = G_jk (Wf_j . Wf_k): second moments of the channels' contributions."""
    return np.asarray(gram, np.float64) * (wf @ wf.T)


def greedy_order(q: np.ndarray) -> np.ndarray:
    """ThiNet's greedy: the channels in the order they join the removed set T (each time the one that keeps
    E||sum_{T} xhat||^2 smallest).  ``order[:n]`` is the set ThiNet removes for n channels."""
    c = len(q)
    inc = np.diag(q).astype(np.float64).copy()  # f(T + j) - f(T) = Q_jj + 2 sum_{k in T} Q_jk
    taken = np.zeros(c, bool)
    order = np.empty(c, np.int64)
    for step in range(c):
        cand = np.where(taken, np.inf, inc)
        j = int(np.argmin(cand))
        order[step] = j
        taken[j] = True
        inc += 2.0 * q[:, j]
    return order


def objective(q: np.ndarray, kept: np.ndarray, scales: np.ndarray | None = None) -> float:
    """E||y - sum_{k in K} s_k xhat_k||^2 with y = sum_all xhat (scales 1 when not given)."""
    c = len(q)
    s = np.zeros(c)
    s[kept] = 1.0 if scales is None else scales
    r = np.ones(c) - s
    return float(r @ q @ r)


def least_squares_scales(q: np.ndarray, kept: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """ThiNet's scales: s = argmin E||y - sum_K s_k xhat_k||^2  =>  Q_KK s = Q_K,all 1 (tiny ridge)."""
    kept = np.asarray(kept, np.int64)
    qkk = q[np.ix_(kept, kept)]
    rhs = q[kept].sum(axis=1)
    lam = ridge * np.trace(qkk) / max(len(kept), 1) + 1e-12
    return np.linalg.solve(qkk + lam * np.eye(len(kept)), rhs)

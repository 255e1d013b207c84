"""Compensation of pruned channels, folded into the next convolution: pure functions over arrays.

All functions take the next layer's weights ``w`` [O, C, k, k] (C = the pruned layer's full width), the
kept and pruned channel indices of the pruned layer, and subset statistics of that layer's output; they
return ``(w_kept [O, |K|, k, k], bias_delta [O], const [O, H, W] | None)``: the next layer keeps only the
kept input channels, its bias grows by ``bias_delta`` and, for exact per-position compensation, ``const``
is added to its convolution output before ReLU (one extra add node at run time).
"""

from __future__ import annotations

import numpy as np

from specialist.allocation import next_layer_matrix
from specialist.merge import merge_partners
from specialist.stats import offsets, position_covariance  # noqa: F401 (re-exported)
from specialist.thinet import contribution_gram, least_squares_scales


def contribution_map(maps: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """Next-layer output caused by constant input maps ``maps`` [C, H, W] through ``w`` [O, C, k, k]."""
    if w.shape[2] == 1:
        c, h, wd = maps.shape
        return (np.asarray(w[:, :, 0, 0], np.float64) @ np.asarray(maps, np.float64).reshape(c, -1)).reshape(-1, h, wd)
    # im2col + one matrix product (a single image: cheaper than a convolution call's set-up)
    c, h, wd = maps.shape
    k = w.shape[2]
    padded = np.pad(np.asarray(maps, np.float64), ((0, 0), (padding, padding), (padding, padding)))
    cols = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))  # [C, H, W, k, k]
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(c * k * k, h * wd)
    return (np.asarray(w, np.float64).reshape(w.shape[0], -1) @ cols).reshape(-1, h, wd)


def _finish(w_new: np.ndarray, kept: np.ndarray, const_maps: np.ndarray | None, w_orig: np.ndarray,
            pruned: np.ndarray, padding: int, fold: str):
    """Turn per-pruned-channel constant input maps into an exact const or a bias-only delta."""
    o = w_orig.shape[0]
    if const_maps is None or len(pruned) == 0:
        return w_new[:, kept], np.zeros(o), None
    const = contribution_map(const_maps, w_orig[:, pruned], padding)
    if fold == "exact":
        return w_new[:, kept], np.zeros(o), const
    return w_new[:, kept], const.mean(axis=(1, 2)), None


def compensate_none(w, kept, pruned, st, padding, fold="bias", **_):
    """Drop the pruned channels' weights."""
    return w[:, kept].astype(np.float64), np.zeros(w.shape[0]), None


def compensate_mean(w, kept, pruned, st, padding, fold="bias", **_):
    """Paper 4.3.1 / 5.2.1: pruned channels replaced by their mean maps over the target classes.

    ``fold="exact"``: the per-position constant (exact for a channel that is constant on the data);
    ``fold="bias"``: its spatial mean folded into the bias (no run-time cost; error at padded borders).
    """
    w64 = np.asarray(w, np.float64)
    return _finish(w64, kept, st["mean"][pruned], w64, pruned, padding, fold)


def best_partner(corr: np.ndarray, j: int, kept_mask: np.ndarray, candidates: np.ndarray | None):
    """The kept channel j' with the highest C(j', j) (among ``candidates`` if given); (-1, -inf) if none."""
    pool = np.flatnonzero(kept_mask) if candidates is None else candidates[kept_mask[candidates]]
    if len(pool) == 0:
        return -1, -np.inf
    c = corr[pool, j]
    i = int(np.argmax(c))
    return int(pool[i]), float(c[i])


def partner_weights(w: np.ndarray, j: int, jp: int, st, k: int, slot: int | None, ridge: float = 1e-3) -> np.ndarray:
    """Paper 4.3.2 (as intended): weights w' on channel j' that best reproduce channel j's contribution.

    Minimises sum_p (x_j-patch . w_j - x_j'-patch . w')^2 for every output channel at once.  For 1x1 next
    layers this is the scalar E[x_j' x_j] / E[x_j'^2]; for k x k the k^2 normal equations are built from the
    stored spatial auto/cross-correlations (shift-invariant approximation at the borders).
    """
    wj = w[:, j].reshape(w.shape[0], -1).astype(np.float64)  # [O, k*k]
    if k == 1:
        g = st["gram"]
        return (g[jp, j] / max(g[jp, jp], 1e-12)) * w[:, j].astype(np.float64)
    offs = offsets(k)
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(offs)}
    pos = [(a, b) for a in range(k) for b in range(k)]
    diff = np.array([[index[(b[0] - a[0], b[1] - a[1])] for b in pos] for a in pos])  # [k2, k2] offset index
    acorr = st["acorr"][jp]  # R_j'j'(d)
    xcorr = st["xcorr"][j, slot]  # R_j'j(d) with j' = cand[j, slot]
    a_mat = acorr[diff]
    b_mat = xcorr[diff]
    lam = ridge * np.trace(a_mat) / len(pos) + 1e-12
    sol = np.linalg.solve(a_mat + lam * np.eye(len(pos)), b_mat @ wj.T)  # [k2, O]
    return sol.T.reshape(w.shape[0], 1, k, k)[:, 0]


def compensate_correlated(w, kept, pruned, st, padding, fold="bias", threshold: float | None = None,
                          ridge: float = 1e-3, **_):
    """Paper 4.3.2 / 5.2.2: each pruned channel j is replaced by its most correlated kept channel j';
    the adjusted weights are added to j''s weights.  With ``threshold`` (paper 4.3.3, the heuristic), a
    channel whose best correlation is below it is compensated by its mean instead."""
    k = w.shape[2]
    w_new = w.astype(np.float64).copy()
    kept_mask = np.zeros(w.shape[1], bool)
    kept_mask[kept] = True
    mean_ch = []
    cand = st.get("cand")
    for j in pruned:
        cands = cand[j].astype(np.int64) if (k > 1 and cand is not None) else None
        jp, c = best_partner(st["corr"], int(j), kept_mask, cands)
        if jp < 0 or (threshold is not None and c < threshold):
            mean_ch.append(int(j))
            continue
        slot = int(np.flatnonzero(cands == jp)[0]) if cands is not None else None
        w_new[:, jp] += partner_weights(w, int(j), jp, st, k, slot, ridge)
    mean_ch = np.asarray(mean_ch, dtype=np.int64)
    maps = st["mean"][mean_ch] if len(mean_ch) else None
    return _finish(w_new, kept, maps, w.astype(np.float64), mean_ch, padding, fold)


def compensate_auto(w, kept, pruned, st, padding, fold="bias", threshold: float = 0.5, **kw):
    """Paper 4.3.3: correlated channel when its correlation exceeds ``threshold``, else the mean."""
    return compensate_correlated(w, kept, pruned, st, padding, fold=fold, threshold=threshold, **kw)


def lsq_coefficients(cov: np.ndarray, kept: np.ndarray, pruned: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge least squares x_P - m_P ~ A (x_K - m_K): returns A [|P|, |K|]."""
    ckk = cov[np.ix_(kept, kept)]
    ckp = cov[np.ix_(kept, pruned)]
    lam = ridge * np.trace(ckk) / max(len(kept), 1) + 1e-12
    return np.linalg.solve(ckk + lam * np.eye(len(kept)), ckp).T


def compensate_lsq(w, kept, pruned, st, padding, fold="bias", ridge: float = 1e-2, **_):
    """Least-squares reconstruction of the pruned channels from ALL kept channels plus a per-position
    constant (generalises both mean and correlated compensation), folded into the next layer:
    W'_K = W_K + W_P A and the constant maps m_P - A m_K."""
    if len(pruned) == 0:
        return compensate_none(w, kept, pruned, st, padding)
    cov = st["cov"] if "cov" in st else position_covariance(st["gram"], st["mean"])
    a = lsq_coefficients(cov, kept, pruned, ridge)
    w64 = np.asarray(w, np.float64)
    o, _, kh, kw = w64.shape
    # one matrix product [O*k2, P] @ [P, K] (not O small ones)
    wp = w64[:, pruned].reshape(o, len(pruned), kh * kw).transpose(0, 2, 1).reshape(o * kh * kw, len(pruned))
    w_kept = w64[:, kept] + (wp @ a).reshape(o, kh * kw, len(kept)).transpose(0, 2, 1).reshape(o, len(kept), kh, kw)
    m = np.asarray(st["mean"], np.float64)
    resid = m[pruned] - np.einsum("jk,khw->jhw", a, m[kept])
    return _finish(w_kept, slice(None), resid, w64, pruned, padding, fold)


def compensate_scale(w, kept, pruned, st, padding, fold="bias", **_):
    """ThiNet: the kept channels' next-layer weights rescaled by least squares so the kept contributions
    best reproduce the full next-layer output (raw second moments, no constant term)."""
    if len(pruned) == 0:
        return compensate_none(w, kept, pruned, st, padding)
    q = contribution_gram(st["gram"], next_layer_matrix(w, st.get("out_weight")))
    s = least_squares_scales(q, kept)
    w_new = w.astype(np.float64)[:, kept] * s[None, :, None, None]
    return w_new, np.zeros(w.shape[0]), None


def compensate_merge(w, kept, pruned, st, padding, fold="bias", threshold: float | None = None, **_):
    """Neuron Merging (data-free): each pruned channel's next-layer weights, times its scale, are added to
    its most similar kept filter's (needs the pruned layer's own filters ``st["w_self"]``/``["b_self"]``)."""
    w_new = w.astype(np.float64).copy()
    if len(pruned):
        partner, scale, _cos = merge_partners(st["w_self"], st["b_self"], kept, pruned,
                                              threshold=st.get("merge_threshold", 0.0))
        ok = partner >= 0
        # several pruned channels may share a partner: accumulate with np.add.at (no Python loop)
        contrib = w_new[:, pruned[ok]] * scale[ok][None, :, None, None]
        np.add.at(w_new.transpose(1, 0, 2, 3), partner[ok], contrib.transpose(1, 0, 2, 3))
    return w_new[:, kept], np.zeros(w.shape[0]), None


#: Compensations whose output rows (the next layer's output channels) are independent of each other: the
#: builder hands them only the next layer's kept rows (``scale`` fits over all outputs, so it gets them all).
ROWWISE = frozenset({"none", "mean", "correlated", "auto", "lsq", "merge"})

#: Compensation by name (``Method.compensation``): a registry of the functions above, all with the signature
#: ``(w, kept, pruned, st, padding, fold=, threshold=, ridge=) -> (w_kept, bias_delta, const | None)``.
COMPENSATIONS = {
    "none": compensate_none,
    "mean": compensate_mean,
    "correlated": compensate_correlated,
    "auto": compensate_auto,
    "lsq": compensate_lsq,
    "scale": compensate_scale,
    "merge": compensate_merge,
}

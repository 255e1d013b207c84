"""Reconstruction-error selection and global (non-uniform) allocation of a FLOPs budget across layers.

The paper prunes the same share of every layer because its impacts cannot be compared across layers.
Here every layer gets the same, comparable currency: the *relative* error with which the next layer's
pre-activations can still be reconstructed (by least squares from the kept channels, plus per-position
means) once some of its input channels are gone.  It comes from the statistics artifact alone:

    residual(K) = tr(Wf^T S Wf) - tr(Bk^T (S_KK + lam I)^-1 Bk),   B = S Wf,

with ``S`` the position covariance of the layer's output (target classes), ``Wf`` [C, O*k*k] the next
layer's weights with one column per (output channel, kernel position) and ``K`` the kept channels.
Backward elimination removes, one at a time, the channel whose removal costs least; the down-date of
the inverse is exact, so a whole path (order and error for every count) costs O(C^3).

:func:`allocate_global` then spends the FLOPs budget of the paper's uniform plan greedily where the
normalised error grows least per FLOP saved.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from specialist.model import NIN_LAYERS, PRUNABLE
from specialist.select import n_remove


def next_layer_matrix(w_next: np.ndarray, out_weight: np.ndarray | None = None) -> np.ndarray:
    """The next layer's weights [O, C, k, k] as Wf [C, O*k*k], columns scaled by sqrt(out_weight[o])."""
    o, c = w_next.shape[:2]
    w = w_next.astype(np.float64)
    if out_weight is not None:
        w = w * np.sqrt(np.maximum(np.asarray(out_weight, np.float64), 0.0))[:, None, None, None]
    return w.transpose(1, 0, 2, 3).reshape(c, -1)


def ridge_lambda(cov: np.ndarray, ridge: float) -> float:
    """Ridge added to the diagonal: ``ridge`` times the mean variance (never zero)."""
    return float(ridge * np.trace(cov) / max(len(cov), 1) + 1e-12)


def gram_factor(wf: np.ndarray) -> np.ndarray:
    """A factor ``F`` [C, r <= C] with ``F F^T = wf wf^T`` (``wf`` itself when it has at most C columns).

    The elimination path depends on the next layer's matrix only through ``wf wf^T``, so a 5x5 convolution's
    [C, O*25] matrix can be replaced by a [C, C] factor once per base model (:func:`next_layer_factor`).
    """
    wf = np.asarray(wf, np.float64)
    c = wf.shape[0]
    if wf.shape[1] <= c:
        return wf
    vals, vecs = np.linalg.eigh(wf @ wf.T)
    return vecs * np.sqrt(np.maximum(vals, 0.0))[None, :]


_FACTORS: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def next_layer_factor(w_next: np.ndarray, out_weight: np.ndarray | None = None) -> np.ndarray:
    """:func:`gram_factor` of :func:`next_layer_matrix`; memoised per weight array when ``out_weight`` is None
    (base weights are never modified in place; the entry goes when the array does)."""
    if out_weight is not None:
        return gram_factor(next_layer_matrix(w_next, out_weight))
    key = id(w_next)
    hit = _FACTORS.get(key)
    if hit is not None and hit[0]() is w_next:
        return hit[1]
    f = gram_factor(next_layer_matrix(w_next))
    _FACTORS[key] = (weakref.ref(w_next, lambda _r, k=key: _FACTORS.pop(k, None)), f)
    return f


def removal_cap(width: int, multiple_of: int = 1, max_remove_pct: float = 90.0) -> int:
    """The most channels :func:`allocate_global` removes from a layer of ``width`` channels."""
    step = max(1, int(multiple_of))
    return max(0, min(width - step, int(width * max_remove_pct / 100.0)))


class EliminationPath:
    """The greedy backward elimination of :func:`elimination_path`, made step by step on demand.

    ``path[n]`` is ``rel_error[n]`` (the steps up to ``n`` are made when first read), ``path.removed(n)``
    the first ``n`` channels removed, ``len(path)`` the channel count.  The global allocation reads the
    curve only where it considers a cut (one step past each layer's count), so a build makes a small part of
    each path: for NIN, a handful of steps in the three layers it never prunes.  Resuming gives exactly
    the numbers of one uninterrupted run (the same operations in the same order).
    """

    def __init__(self, cov: np.ndarray, wf: np.ndarray, ridge: float = 1e-2, order: np.ndarray | None = None):
        c = self.c = len(cov)
        cov = np.asarray(cov, np.float64)
        self._lock = threading.Lock()
        self.given = None if order is None else np.asarray(order, np.int64)
        self.removed_ = np.empty(c, np.int64)
        self.errs = np.full(c, np.nan)
        self.steps = 0
        lam = ridge_lambda(cov, ridge)
        self.p0 = np.linalg.inv(cov + lam * np.eye(c))
        f = gram_factor(wf)
        b = cov @ f
        self.total = float(np.sum(f * b))
        if self.total <= 0:  # nothing to reconstruct: every order costs nothing
            self.removed_[:] = np.arange(c) if self.given is None else self.given
            self.errs[:] = 0.0
            self.steps = c
            return
        self.pb0 = self.p0 @ b
        self.explained = float(np.sum(b * self.pb0))
        self.diag = np.diag(self.p0).copy()
        self.norms = np.einsum("ij,ij->i", self.pb0, self.pb0)
        self.u = np.zeros((c, min(c, 32)))
        self.w = np.zeros((self.pb0.shape[1], self.u.shape[1]))

    def __len__(self) -> int:
        return self.c

    def __getitem__(self, n: int) -> float:
        n = int(n)
        if 0 <= n < self.steps:
            return float(self.errs[n])
        if not -self.c <= n < self.c:
            raise IndexError(n)
        n %= self.c
        self.extend(n + 1)
        return float(self.errs[n])

    def removed(self, n: int) -> np.ndarray:
        """The first ``n`` channels removed (made if not yet)."""
        self.extend(n)
        return self.removed_[:n].copy()

    def extend(self, n: int) -> None:
        """Make the steps up to ``n`` removals (see :func:`elimination_path` for the algebra)."""
        n = min(int(n), self.c)
        if n <= self.steps:
            return
        with self._lock:  # a cached path may be read by builds in several threads
            self._extend(n)

    def _extend(self, n: int) -> None:
        if n <= self.steps:
            return
        if n > self.u.shape[1]:  # grow the factors (doubling)
            cap = min(self.c, max(n, 2 * self.u.shape[1]))
            self.u = np.concatenate([self.u, np.zeros((self.c, cap - self.u.shape[1]))], axis=1)
            self.w = np.concatenate([self.w, np.zeros((self.w.shape[0], cap - self.w.shape[1]))], axis=1)
        p0, pb0, diag, norms, u, w, given = self.p0, self.pb0, self.diag, self.norms, self.u, self.w, self.given
        explained, total = self.explained, self.total
        for step in range(self.steps, n):
            j = int(np.argmin(norms / diag)) if given is None else int(given[step])
            pj = float(diag[j])
            ut, wt = u[:, :step], w[:, :step]
            uj = ut[j]
            col = p0[:, j] - ut @ uj  # column j of P_t
            v = pb0[j] - wt @ uj  # row j of P_t B
            vv = float(v @ v)
            explained -= vv / pj
            self.removed_[step] = j
            self.errs[step] = max(0.0, 1.0 - explained / total)
            g = pb0 @ v - ut @ (wt.T @ v)  # P_t B v
            cc = col * col
            norms -= (2.0 / pj) * col * g - (vv / (pj * pj)) * cc
            diag -= cc / pj
            s = np.sqrt(pj) if pj > 0 else 1.0
            u[:, step] = col / s
            w[:, step] = v / s
            norms[j], diag[j] = np.inf, 1.0  # gone: never chosen again (and no division by its zero pivot)
        self.explained, self.steps = explained, n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, rel_error)`` as :func:`elimination_path` returns them for the steps made so far."""
        order = self.removed_.copy()
        if self.steps < self.c:
            alive = np.ones(self.c, bool)
            alive[order[:self.steps]] = False
            left = np.flatnonzero(alive)
            cost = self.norms[left] / self.diag[left]
            order[self.steps:] = left[np.lexsort((left, cost))]
        return order, self.errs.copy()


def elimination_path(cov: np.ndarray, wf: np.ndarray, ridge: float = 1e-2,
                     order: np.ndarray | None = None, n_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Backward elimination under least-squares reconstruction of the next layer.

    Returns ``(order, rel_error)``: ``order`` [C] the channels in the order they are removed (greedy:
    cheapest first, unless ``order`` is given, then its error path), ``rel_error`` [C] the ridge
    least-squares objective of reconstructing the next layer's pre-activations from the channels left
    after removing ``order[:n+1]`` (``rel_error[n]``), relative to their energy ``wf' cov wf``:
    ``(residual + lam |A|^2) / total`` with ``lam = ridge_lambda(cov, ridge)`` and ``A`` the ridge
    solution.  It is the plain residual plus the ridge penalty (an upper bound on the residual; the two
    agree as ``ridge -> 0``); it is what the rank-one downdates of ``(cov + lam I)^-1`` give exactly, and
    the greedy step removes the channel whose removal raises it least.  ``rel_error[-1]`` (everything
    removed) is 1.  Accuracy: float64 rounding times ``cond(cov + lam I)`` (about 1e-15 at the methods'
    ridge 1e-2, about 1e-7 at ridge 1e-9 on a singular ``cov``).

    ``n_steps``: stop after that many removals (a caller that never removes more, e.g. the global
    allocation at its per-layer cap, :func:`removal_cap`).  ``order[:n_steps]`` and ``rel_error[:n_steps]``
    are exactly those of the full path; the channels left follow in ascending order of the cost of removing
    each one next (ties by index), with ``rel_error`` NaN for them.  :class:`EliminationPath` makes the
    steps on demand.

    Only ``wf wf^T`` matters, so ``wf`` may be a :func:`gram_factor` of the matrix (the same path).  The
    downdates are kept in factored form, ``P_t = P_0 - U_t U_t^T`` and ``P_t B = P_0 B - U_t W_t^T``, with the
    per-channel quantities the greedy step needs (diagonal of ``P``, squared row norms of ``P B``) updated
    in O(C) each: a step is a few matrix-vector products, and nothing C x C is rewritten (1.5-2x faster
    than the plain rank-one updates, identical choices).  Removed channels carry an infinite cost, so a
    greedy step is one division and one argmin.
    """
    path = EliminationPath(cov, wf, ridge, order)
    path.extend(len(cov) if (n_steps is None or order is not None) else max(0, int(n_steps)))
    return path.result()


def uniform_counts(level: float, multiple_of: int = 1, widths: dict[str, int] | None = None) -> dict[str, int]:
    """Channels removed per prunable layer by the paper's uniform plan at ``level`` percent."""
    widths = widths or {s.name: s.out_ch for s in NIN_LAYERS}
    return {L: n_remove(widths[L], level, multiple_of) for L in PRUNABLE}


#: per layer, FLOPs per (input channel x output channel): 2 k^2 H W (stride 1, same-size output)
_FLOPS_PER_PAIR: tuple[int, ...] = tuple(2 * s.kernel * s.kernel * s.in_hw * s.in_hw for s in NIN_LAYERS)
_WIDTHS: tuple[int, ...] = tuple(s.out_ch for s in NIN_LAYERS)


def plan_flops(removed: dict[str, int], n_classes: int) -> int:
    """Total FLOPs of the NIN with ``removed[L]`` channels gone from each prunable layer.

    The closed form of :func:`specialist.flops.total_flops` (sum over layers of 2 k^2 H W x in x out), without
    building the per-layer table: the global allocation calls it several hundred times per build.
    """
    total, prev = 0, 3
    last = len(NIN_LAYERS) - 1
    for i, spec in enumerate(NIN_LAYERS):
        width = n_classes if i == last else _WIDTHS[i] - int(removed.get(spec.name, 0))
        total += _FLOPS_PER_PAIR[i] * prev * width
        prev = width
    return total


_INDEX = {s.name: i for i, s in enumerate(NIN_LAYERS)}


def _flops_change(removed: dict[str, int], n_classes: int, layer: str, more: int) -> int:
    """``plan_flops`` of the plan with ``more`` channels more removed from ``layer``, minus the plan's: only the
    layer's own term and its consumer's change (exact integers, in O(1))."""
    i = _INDEX[layer]
    prev = 3 if i == 0 else _WIDTHS[i - 1] - int(removed.get(NIN_LAYERS[i - 1].name, 0))
    nxt = n_classes if i + 2 == len(NIN_LAYERS) else _WIDTHS[i + 1] - int(removed.get(NIN_LAYERS[i + 1].name, 0))
    return -more * (_FLOPS_PER_PAIR[i] * prev + _FLOPS_PER_PAIR[i + 1] * nxt)


def _greedy_cuts(removed: dict[str, int], flops: int, cap: dict[str, int], cost, step: int, target_flops: int,
                 n_classes: int) -> int:
    """The greedy pass of :func:`allocate_global` (updates ``removed`` in place; returns the plan's FLOPs)."""
    while flops > target_flops:
        best, best_ratio, best_flops = None, np.inf, flops
        for L in removed:
            n = removed[L]
            if n + step > cap[L]:
                continue
            f = flops + _flops_change(removed, n_classes, L, step)
            saved = flops - f
            if saved <= 0:
                continue
            ratio = (cost(L, n + step) - cost(L, n)) / saved
            if ratio < best_ratio:
                best, best_ratio, best_flops = L, ratio, f
        if best is None:
            break
        removed[best] += step
        flops = best_flops
    return flops


def allocate_global(curves: dict[str, np.ndarray], target_flops: int, n_classes: int, multiple_of: int = 1,
                    max_remove_pct: float = 90.0, layer_weight: dict[str, float] | None = None) -> dict[str, int]:
    """Greedy allocation: channels removed per layer so total FLOPs <= ``target_flops``.

    ``curves[L][n]`` is the (normalised) cost of removing ``n+1`` channels of L (cost 0 at none).  Each
    step removes ``multiple_of`` channels from the layer with the least cost increase per FLOP saved;
    at most ``max_remove_pct`` percent of a layer goes unless the budget cannot be met so (then layers may
    go down to one step of channels).  The result is at or under the budget whenever any plan is: a give-back
    pass, and for coarse steps a swap search (:func:`_swap_within_budget`), spend what the last step overshot.
    """
    step = max(1, int(multiple_of))
    widths = {s.name: s.out_ch for s in NIN_LAYERS}
    layer_weight = layer_weight or {}
    removed = {L: 0 for L in curves}
    cap = {L: removal_cap(widths[L], step, max_remove_pct) for L in curves}

    def cost(L: str, n: int) -> float:
        return 0.0 if n <= 0 else float(curves[L][n - 1]) * float(layer_weight.get(L, 1.0))

    flops = plan_flops(removed, n_classes)
    flops = _greedy_cuts(removed, flops, cap, cost, step, target_flops, n_classes)
    if flops > target_flops:
        # The caps leave the budget out of reach (high levels; with 16-channel steps a 60% cap is 48 of 96
        # CCCP2 channels): the budget wins, the caps give way (a layer keeps at least one step of channels).
        cap = {L: widths[L] - step for L in curves}
        flops = _greedy_cuts(removed, flops, cap, cost, step, target_flops, n_classes)
    # Fill: the last step may have overshot the budget (by up to one step of the most expensive layer, ~10
    # points for 16 CCCP2 channels); give channels back where they help most while staying within it.
    while True:
        best, best_gain, best_flops = None, 0.0, flops
        for L in curves:
            n = removed[L]
            if n < step:
                continue
            f = flops + _flops_change(removed, n_classes, L, -step)
            if f > target_flops or f <= flops:
                continue
            gain = (cost(L, n) - cost(L, n - step)) / (f - flops)
            if gain > best_gain:
                best, best_gain, best_flops = L, gain, f
        if best is None:
            break
        removed[best] -= step
        flops = best_flops
    if step > 1:
        removed = _swap_within_budget(removed, cost, cap, step, target_flops, n_classes)
    return removed


def _swap_within_budget(removed: dict[str, int], cost, cap: dict[str, int], step: int, target_flops: int,
                        n_classes: int, max_rounds: int = 64) -> dict[str, int]:
    """Local search after the greedy pass, for coarse steps (``multiple_of`` > 1): move one step of removal
    from one layer to another while the plan stays within the budget and its total cost falls.

    With single-channel steps the greedy pass and the fill land within one channel of the budget; with
    16-channel steps its last step can remove a whole expensive block more than the budget needs (best-x16
    at level 30 pruned 42.6% of the FLOPs for a 39.2% budget), and a give-back alone cannot repair that.
    Each round takes the best improving swap (or give-back); at most ``max_rounds`` rounds.
    """
    removed = dict(removed)
    total = sum(cost(L, n) for L, n in removed.items())
    for _ in range(max_rounds):
        best, best_total, best_flops = None, total - 1e-12, -1
        for a in removed:
            for b in removed:
                trial = dict(removed)
                if a != b:
                    if trial[a] + step > cap[a]:
                        continue
                    trial[a] += step
                if trial[b] < step:
                    continue
                trial[b] -= step
                f = plan_flops(trial, n_classes)
                if f > target_flops:
                    continue
                t = total - cost(a, removed[a]) + cost(a, trial[a])
                if a != b:
                    t += cost(b, trial[b]) - cost(b, removed[b])
                if t < best_total or (t == best_total and f > best_flops):
                    best, best_total, best_flops = trial, t, f
        if best is None:
            break
        removed, total = best, best_total
    return removed

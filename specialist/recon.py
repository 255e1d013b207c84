"""Calibration-driven sequential reconstruction (the ``recon`` preset): prune NIN layer by layer in order and
refit every consumer from the specialist's OWN upstream activations to the ORIGINAL network's, on calibration
images of the target classes (CP, He et al. 2017; ThiNet's reconstruction; the OBS family).  No gradient steps.

Per prunable layer L (CCCP2 .. CCCP5, in order), with consumer N (the next convolution):

* ``x_s``: L's output (after ReLU and pooling: N's input) in the specialist built so far, all of L's channels;
  ``x_o``: the same in the original network.  Both are centred around their per-position means
  (``m_s``, ``m_o``), and ``G = E[x_s x_s^T]``, ``C = E[x_s x_o^T]`` are accumulated over images and positions.
* Selection that knows the refit: with ``Wf`` [C, O k k] N's original weights (one column per output channel
  and kernel position, CCCP6: target classes only), the objective of a kept set K is the ridge least-squares
  error of N's original pre-activations ``Wf^T x_o`` reconstructed from ``x_s[K]``; its explained part is
  ``tr(B_K^T (G_KK + lam)^-1 B_K)`` with ``B = C Wf``, which is the form the artifact-only elimination
  (:func:`specialist.allocation.elimination_path`) works on, so the same exact backward elimination gives the
  removal order here (kernel positions treated as independent samples, as there).  With fewer classes than
  the network has, N's outputs are weighted by their :func:`decision_sensitivity` (``class_aware``, the
  preset's default): the selection keeps what moves the decision between the target classes.
* Refit: ``x_o - m_o ~ A (x_s[K] - m_s[K])`` by ridge least squares, ``A = C_K^T (G_KK + lam I)^-1``
  [C, |K|]; N's new weights on the kept inputs are ``W_N A`` (per kernel position) and its pre-activations gain
  the per-position constant ``W_N * (m_o - A m_s[K])`` (exact fold: one add node; ``fold="bias"``: its spatial
  mean in the bias).  For 1x1 consumers this is exactly the least-squares refit of N's pre-activations.
  k x k consumers (CONV2, CONV3) are refit in full instead: ridge least squares from the kept channels' input
  patches (|K| k^2 features, per-position centred) to N's original pre-activations, on :data:`PATCH_SAMPLES`
  random positions per image (all positions would cost |K|^2 k^4 per position: 6e10 multiply-adds per 1,000
  images for CONV2), plus the per-position constant that makes the fit exact in the mean.

How many channels each layer loses is ``best``'s global allocation (same FLOPs); this module decides which
ones, and what replaces them.  :func:`build_reconstructed` (the preset) adds: the calibration images' mirror
images (:mod:`specialist.calib_images`), one ReLU-aware round per consumer and two for CCCP6 on the class scores
(:data:`RECON_DEFAULTS`: errors where both the original pre-activation and the fit are negative vanish after the
ReLU), a channel-level ridge that pulls towards the kept channels instead of 0, and a guard that returns the
artifact-only build (``best``) where that is closer to the original class scores on the calibration images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from specialist.allocation import elimination_path, next_layer_factor, ridge_lambda
from specialist.calib_images import augment_images, calibration_images
from specialist.compensate import contribution_map
from specialist.data import Split
from specialist.model import LAYER_NAMES, NIN_LAYERS, PRUNABLE, NinWeights
from specialist.scores import next_weights

log = logging.getLogger(__name__)

#: k x k consumers (CONV2, CONV3) are refit from their input patches on this many random positions per image
#: (10 classes at level 50, 2,000 test images: channel-level refit 82.0%, 16 positions 84.3%, 48 positions 84.8%)
PATCH_SAMPLES = 32
#: the patch refit's ridge (towards the channel-level refit) relative to the method's: with 10 calibration images
#: per class (classes 3,6, level 50, whole test set) 1x gave 90.75%, 10x 91.65% (channel level 91.60%); with 100
#: per class the two agree within 0.1 point (93.20/93.15%; 10 classes 84.6/84.5% on 2,000 images)
PATCH_RIDGE = 10.0
#: what :func:`build_reconstructed` passes to :func:`reconstruct` (measured in docs/methods.md)
RECON_DEFAULTS = {"impute_iters": 1, "relu_iters": 2, "to_identity": True, "class_aware": 1.0}
#: the refit's ridge relative to the method's (``best``'s allocation keeps ``method.ridge``): with 400-1,000
#: calibration images per class 0.1x and 0.01x scored within 0.05 points of each other, 1x up to 0.3 below
RIDGE_SCALE = 0.1
#: images (the first ones: originals before copies) that :func:`decision_sensitivity` is averaged over
SENS_IMAGES = 1000
#: the guard of :func:`build_reconstructed` judges on this many calibration images per class after the fitted
#: ones (0, or none left: on the fitted images)
GUARD_HELDOUT = 0
#: Images per forward chunk (keeps the 0.65 MB/image CCCP1 outputs of one chunk small).
CHUNK_IMAGES = 100

_POSTS = {
    "": lambda x: x,
    "maxpool": lambda x: F.max_pool2d(x, 3, 2, 1),
    "avgpool": lambda x: F.avg_pool2d(x, 3, 2, 1),
    "gap": lambda x: x.mean(dim=(2, 3)),
}


def _layer(i: int, x: torch.Tensor, w: NinWeights) -> torch.Tensor:
    """Layer i of a (possibly pruned) NIN on its input: conv, per-position constant, ReLU, pool (as NinNet)."""
    spec = NIN_LAYERS[i]
    name = spec.name
    y = F.conv2d(x, torch.from_numpy(np.ascontiguousarray(w.weights[name], np.float32)),
                 torch.from_numpy(np.ascontiguousarray(w.biases[name], np.float32)), padding=spec.padding)
    if name in w.consts:
        y = y + torch.from_numpy(np.ascontiguousarray(w.consts[name], np.float32))[None]
    return _POSTS[spec.post](torch.relu(y))


def _moments(xs: torch.Tensor, xo: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-position means ``m_s``, ``m_o`` [C, H, W] and the position-centred ``G = E[xs xs^T]`` [Cs, Cs] and
    ``C = E[xs xo^T]`` [Cs, Co] over images and positions (float64, accumulated in image chunks)."""
    n, cs, h, wd = xs.shape
    co = xo.shape[1]
    g = torch.zeros(cs, cs, dtype=torch.float64)
    c = torch.zeros(cs, co, dtype=torch.float64)
    for i in range(0, n, CHUNK_IMAGES):
        a = xs[i : i + CHUNK_IMAGES].permute(1, 0, 2, 3).reshape(cs, -1)
        b = xo[i : i + CHUNK_IMAGES].permute(1, 0, 2, 3).reshape(co, -1)
        g += (a @ a.T).double()  # float32 products per chunk, float64 sums across chunks
        c += (a @ b.T).double()
    m_s = xs.sum(dim=0, dtype=torch.float64) / n
    m_o = xo.sum(dim=0, dtype=torch.float64) / n
    count = n * h * wd
    ms2, mo2 = m_s.reshape(cs, -1), m_o.reshape(co, -1)
    g = g / count - (ms2 @ ms2.T) / (h * wd)
    c = c / count - (ms2 @ mo2.T) / (h * wd)
    return m_s.numpy(), m_o.numpy(), g.numpy(), c.numpy()


def selection_order(g: np.ndarray, c: np.ndarray, wf: np.ndarray, ridge: float) -> np.ndarray:
    """The specialist's channels in the order backward elimination removes them, under the refitted objective
    ``min_A E||Wf^T (x_o - A x_s[K])||^2`` (ridge): the explained part is ``tr(B_K^T (G_KK + lam)^-1 B_K)``
    with ``B = C Wf``.  :func:`specialist.allocation.elimination_path` computes ``B`` as ``cov @ factor``, so it
    is handed ``pinv(G) B`` (``B`` lies in the range of ``G``: ``C = X_s^T X_o``)."""
    g = np.asarray(g, np.float64)
    b = np.asarray(c, np.float64) @ np.asarray(wf, np.float64)
    vals, vecs = np.linalg.eigh(g)
    keep = vals > max(float(vals.max()), 0.0) * 1e-12
    inv = (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T
    order, _ = elimination_path(g, inv @ b, ridge)
    return order


def refit_coefficients(g: np.ndarray, c: np.ndarray, kept: np.ndarray, ridge: float, to_identity: bool = False
                       ) -> np.ndarray:
    """Ridge least squares ``x_o ~ A x_s[K]`` (centred): ``A = C_K^T (G_KK + lam I)^-1`` [Co, |K|], ``lam`` as the
    elimination's (:func:`specialist.allocation.ridge_lambda` of ``G``, so selection and refit agree).

    ``to_identity``: the ridge pulls ``A`` towards the selection (kept channel j stands for itself) instead of
    towards 0, so a layer whose inputs barely changed keeps its weights instead of shrinking them."""
    kept = np.asarray(kept, np.int64)
    lam = ridge_lambda(g, ridge)
    gkk = g[np.ix_(kept, kept)]
    rhs = np.array(c[kept], np.float64)
    if to_identity:
        rhs[np.arange(len(kept)), kept] += lam
    return np.linalg.solve(gkk + lam * np.eye(len(kept)), rhs).T


_ORIGINALS: dict[str, tuple[str, list[torch.Tensor]]] = {}


def original_outputs(base: NinWeights, x: torch.Tensor) -> list[torch.Tensor]:
    """The original network's output of every prunable layer (after ReLU and pooling) on ``x``; the last
    result is kept (about 0.64 MB per image), so builds of one subset at several levels compute it once."""
    h = hashlib.sha256(base.content_hash().encode())
    h.update(str(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    key = h.hexdigest()
    hit = _ORIGINALS.get("last")
    if hit is not None and hit[0] == key:
        return hit[1]
    _ORIGINALS.clear()
    first, stop = LAYER_NAMES.index(PRUNABLE[0]), LAYER_NAMES.index(PRUNABLE[-1])
    outs: list[list[torch.Tensor]] = [[] for _ in PRUNABLE]
    for i in range(0, len(x), CHUNK_IMAGES):
        h_ = x[i : i + CHUNK_IMAGES]
        for li in range(stop + 1):
            h_ = _layer(li, h_, base)
            if li >= first:
                outs[li - first].append(h_)
    result = [torch.cat(o) for o in outs]
    _ORIGINALS["last"] = (key, result)
    return result


def decision_sensitivity(base: NinWeights, classes, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per layer (CONV2 .. CCCP6), the mean over images and positions of the squared derivative of the original
    network's decision margin (its top target-class score minus the runner-up) with respect to each output
    channel's pre-activation: how much an error in that channel moves the decision between the target classes
    (zero where the unit is off).  One backward pass per image chunk; no weights change."""
    cls = torch.as_tensor(sorted(int(c) for c in classes))
    first = LAYER_NAMES.index(PRUNABLE[0]) + 1
    sums = {n: torch.zeros(base.weights[n].shape[0], dtype=torch.float64) for n in LAYER_NAMES[first:]}
    ws = [(torch.from_numpy(np.ascontiguousarray(base.weights[n], np.float32)),
           torch.from_numpy(np.ascontiguousarray(base.biases[n], np.float32))) for n in LAYER_NAMES]
    count = {}
    for j in range(0, len(x), CHUNK_IMAGES):
        h = x[j : j + CHUNK_IMAGES]
        pre = {}
        with torch.enable_grad():
            for li, (spec, (w, b)) in enumerate(zip(NIN_LAYERS, ws, strict=True)):
                z = F.conv2d(h, w, b, padding=spec.padding)
                if li == first:
                    z.requires_grad_(True)
                elif li > first:
                    z.retain_grad()
                if li >= first:
                    pre[spec.name] = z
                h = _POSTS[spec.post](torch.relu(z))
            s = h[:, cls]
            top2 = torch.topk(s, min(2, s.shape[1]), dim=1).values
            margin = top2[:, 0] - top2[:, -1] if s.shape[1] > 1 else top2[:, 0]
            margin.sum().backward()
        for n, z in pre.items():
            sums[n] += (z.grad.double() ** 2).sum(dim=(0, 2, 3))
            count[n] = count.get(n, 0) + z.shape[0] * z.shape[2] * z.shape[3]
    return {n: (v / max(count.get(n, 1), 1)).numpy() for n, v in sums.items()}


def original_pre(out_o: torch.Tensor, base: NinWeights, i: int) -> torch.Tensor:
    """The original pre-activations of layer ``i`` (bias excluded: it stays the layer's) from its input."""
    spec = NIN_LAYERS[i]
    w_o = torch.from_numpy(np.ascontiguousarray(base.weights[spec.name], np.float32))
    return torch.cat([F.conv2d(o, w_o, padding=spec.padding) for o in out_o.split(CHUNK_IMAGES)])


def sample_patches(x: torch.Tensor, pos: torch.Tensor, k: int, pad: int) -> torch.Tensor:
    """The k x k input patches of ``x`` [N, C, H, W] (zero padding ``pad``) at flat output positions ``pos``
    [N, S]: [N, C k k, S], in :func:`torch.nn.functional.unfold`'s feature order (channel-major), without
    unfolding every position."""
    n, c, h, wd = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ow = wd + 2 * pad - k + 1
    r, q = pos // ow, pos % ow
    rows = (r[:, :, None] + torch.arange(k)[None, None, :])[:, :, :, None]  # [N, S, k, 1]
    cols = (q[:, :, None] + torch.arange(k)[None, None, :])[:, :, None, :]  # [N, S, 1, k]
    flat = (rows * xp.shape[3] + cols).reshape(n, 1, -1)  # [N, 1, S k k]
    g = torch.gather(xp.reshape(n, c, -1), 2, flat.expand(-1, c, -1))  # [N, C, S k k]
    s = pos.shape[1]
    return g.reshape(n, c, s, k * k).permute(0, 1, 3, 2).reshape(n, c * k * k, s)


def patch_refit(xs_k: torch.Tensor, ms_k: np.ndarray, out_o: torch.Tensor, base: NinWeights, i: int,
                ridge: float, samples: int, seed: int = 0, prior: np.ndarray | None = None,
                fit: tuple[np.ndarray, np.ndarray] | None = None, y_o: torch.Tensor | None = None,
                cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Full refit of consumer ``i`` from the specialist's kept input patches to the original pre-activations,
    on ``samples`` random positions per image (0: all positions; ridge least squares over |K| k^2 features,
    per-position centred).  Returns the new weights [O, |K|, k, k] and the per-position constant [O, H, W]
    (bias excluded).  ``prior`` [O, |K|, k, k]: the ridge pulls towards these weights (the channel-level refit)
    instead of towards zero, so few samples fall back to it rather than to nothing.

    ``fit``: (weights, constant) of a previous fit: the targets become ReLU-aware (one majorise-minimise step
    of the error after the ReLU): where the original pre-activation is negative, the target is the previous
    fit clipped at 0 (negative there costs nothing after the ReLU), elsewhere the original value.
    ``cache``: a dict that keeps the patches' Gram matrix between calls on the same inputs and positions (the
    ReLU-aware round reuses the refit's)."""
    spec = NIN_LAYERS[i]
    k, pad = spec.kernel, spec.padding
    w_o = torch.from_numpy(np.ascontiguousarray(base.weights[spec.name], np.float32))
    b_o = torch.from_numpy(np.ascontiguousarray(base.biases[spec.name], np.float32))[None, :, None, None]
    ms = torch.from_numpy(np.ascontiguousarray(ms_k, np.float32))
    n, kc, h, wd = xs_k.shape
    rng = np.random.default_rng(seed)
    y_sum = torch.zeros(w_o.shape[0], h, wd, dtype=torch.float64)
    chunks = []
    for j in range(0, n, CHUNK_IMAGES):
        y = F.conv2d(out_o[j : j + CHUNK_IMAGES], w_o, padding=pad) if y_o is None else y_o[j : j + CHUNK_IMAGES]
        if fit is not None:
            zhat = F.conv2d(xs_k[j : j + CHUNK_IMAGES], torch.from_numpy(fit[0].astype(np.float32)), padding=pad) \
                + torch.from_numpy(fit[1].astype(np.float32))[None]
            y = torch.where(y + b_o > 0, y, torch.clamp(zhat + b_o, max=0.0) - b_o)
        y_sum += y.double().sum(dim=0)
        chunks.append((j, y))
    m_y = y_sum / n
    d = kc * k * k
    have_g = cache is not None and "g" in cache
    g = cache["g"] if have_g else torch.zeros(d, d, dtype=torch.float64)
    cy = torch.zeros(d, w_o.shape[0], dtype=torch.float64)
    for j, y in chunks:
        xk = xs_k[j : j + CHUNK_IMAGES] - ms[None]
        yc = (y - m_y[None].float()).reshape(y.shape[0], y.shape[1], -1)
        if samples:
            pos = torch.from_numpy(rng.integers(0, h * wd, size=(xk.shape[0], samples)))
            xc = sample_patches(xk, pos, k, pad)
            yc = torch.gather(yc, 2, pos[:, None, :].expand(-1, yc.shape[1], -1))
        else:
            xc = F.unfold(xk, k, padding=pad)  # [n, d, HW]
        xp = xc.permute(0, 2, 1).reshape(-1, d)
        yp = yc.permute(0, 2, 1).reshape(-1, yc.shape[1])
        if not have_g:
            g += (xp.T @ xp).double()  # float32 products per chunk (2x faster), float64 sums across chunks
        cy += (xp.T @ yp).double()
    if cache is not None:
        cache["g"] = g
    lam = ridge_lambda(g.numpy(), ridge)
    rhs = cy.numpy() if prior is None else cy.numpy() + lam * prior.reshape(prior.shape[0], d).T
    sol = np.linalg.solve(g.numpy() + lam * np.eye(d), rhs)  # [d, O]
    w_new = sol.T.reshape(-1, kc, k, k)
    const = m_y.numpy() - contribution_map(ms_k, w_new, pad)
    return w_new, const


def decision_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Per-image weights ``1 + alpha exp(-margin / median margin)`` from the original network's class scores
    [N, classes] (margin: the top score minus the runner-up): images near the original's decision count more."""
    if alpha <= 0 or scores.shape[1] < 2:
        return np.ones(len(scores))
    top2 = np.sort(scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return 1.0 + alpha * np.exp(-margin / max(float(np.median(margin)), 1e-12))


def relu_refit(xs: torch.Tensor, z: torch.Tensor, w: np.ndarray, const: np.ndarray, ridge: float, iters: int,
               image_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ReLU-aware refit of a 1x1 layer whose outputs go through a ReLU (CCCP6 -> ReLU -> mean: the class scores).

    ``xs`` [N, K, H, W] the specialist's inputs, ``z`` [N, O, H, W] the original pre-activations, ``w`` [O, K]
    and ``const`` [O, H, W] (bias included) the least-squares fit.  Entries where both ``z`` and the fit are
    negative are zero after the ReLU whatever their values: each round drops them and refits every output by
    ridge least squares (towards the previous weights) on the rest, with one constant per position.
    ``image_weight`` [N]: weighted least squares (:func:`decision_weights`)."""
    n, k, h, wd = xs.shape
    v = None if image_weight is None else torch.from_numpy(np.asarray(image_weight, np.float32))[:, None]
    x = xs.permute(0, 2, 3, 1).reshape(n, h * wd, k)  # [N, P, K]
    w, const = np.asarray(w, np.float64).copy(), np.asarray(const, np.float64).reshape(w.shape[0], -1).copy()
    for _ in range(iters):
        fit = torch.einsum("npk,ok->nop", x, torch.from_numpy(w.astype(np.float32))) \
            + torch.from_numpy(const.astype(np.float32))[None]
        zz = z.reshape(n, z.shape[1], -1)
        for o in range(w.shape[0]):
            m = ((zz[:, o] > 0) | (fit[:, o] > 0)).float()  # [N, P]
            if v is not None:
                m = m * v
            cnt = m.sum(0).double().clamp_min(1.0)  # per position
            xm = x * m[..., None]
            sx = xm.sum(0).double()  # [P, K]
            sz = (zz[:, o] * m).sum(0).double()  # [P]
            # eliminate the per-position constants: c_p = (sz_p - sx_p . w) / cnt_p
            g = torch.einsum("npk,npj->kj", xm, x).double() - (sx / cnt[:, None]).T @ sx
            b = torch.einsum("npk,np->k", xm, zz[:, o]).double() - (sx / cnt[:, None]).T @ sz
            g_np, b_np = g.numpy() / n, b.numpy() / n
            lam = ridge_lambda(g_np, ridge)
            w[o] = np.linalg.solve(g_np + lam * np.eye(k), b_np + lam * w[o])
            c = (sz - sx @ torch.from_numpy(w[o])) / cnt
            const[o] = np.where(m.sum(0).numpy() > 0, c.numpy(), const[o])
    return w, const.reshape(w.shape[0], h, wd)


def reconstruct(base: NinWeights, classes, counts: dict[str, int], images: np.ndarray, ridge: float = 1e-2,
                fold: str = "exact", patch_samples: int = PATCH_SAMPLES, relu_iters: int = 0,
                impute_iters: int = 0, to_identity: bool = False, scores_out: list | None = None,
                decision_weight: float = 0.0, class_aware: float = 0.0) -> tuple[NinWeights, dict[str, list[int]]]:
    """Sequential reconstruction of ``base`` for ``classes`` with ``counts[L]`` channels removed from each
    prunable layer, on ``images`` (normalised float32 NCHW calibration images of the target classes).

    ``patch_samples``: k x k consumers are refit from their input patches on that many random positions per
    image (:func:`patch_refit`); 0 refits them at channel level (``W_N A``), like the 1x1 ones.
    ``impute_iters``: ReLU-aware rounds per consumer (:func:`patch_refit` with ``fit``: targets where the original
    pre-activation is negative become the fit clipped at 0).  ``relu_iters``: ReLU-aware rounds of CCCP6 on the
    class scores (:func:`relu_refit`; exact fold only).  ``to_identity``: the channel-level ridge pulls towards
    the kept channels themselves (:func:`refit_coefficients`).  ``decision_weight``: the CCCP6 rounds weight
    images near the original's decision more (:func:`decision_weights`).  ``class_aware``: the selection weighs
    each consumer output by ``(1 - class_aware) + class_aware * s / mean(s)``, ``s`` its
    :func:`decision_sensitivity` (on the first :data:`SENS_IMAGES` images), instead of equally.
    ``scores_out``: a list that receives the specialist's class scores [N, classes] on ``images``.

    Returns the specialist's weights (CCCP6 cut to ``classes``; per-position constants in ``consts`` with the
    exact fold) and the kept channel indices per layer.
    """
    classes = [int(v) for v in classes]
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    new_w = {n: np.asarray(base.weights[n], np.float32) for n in LAYER_NAMES}
    new_b = {n: np.asarray(base.biases[n], np.float32) for n in LAYER_NAMES}
    spec = NinWeights(new_w, new_b, base.input_mean.copy(), base.input_std.copy(), {}, base.source)
    kept: dict[str, list[int]] = {n: list(range(base.weights[n].shape[0])) for n in LAYER_NAMES}
    with torch.no_grad():
        originals = original_outputs(base, x)
        sens = decision_sensitivity(base, classes, x[:SENS_IMAGES]) if class_aware else {}
        x_s = None
        for L, out_o in zip(PRUNABLE, originals, strict=True):
            li = LAYER_NAMES.index(L)
            nxt = LAYER_NAMES[li + 1]
            out_s = out_o if x_s is None else torch.cat(
                [_layer(li, x_s[i : i + CHUNK_IMAGES], spec) for i in range(0, len(x_s), CHUNK_IMAGES)])
            m_s, m_o, g, c = _moments(out_s, out_o)
            width = out_s.shape[1]
            n_drop = int(counts.get(L, 0))
            if n_drop > 0:
                w_next, ow = next_weights(base, L, classes)
                if class_aware and float(sens[nxt].max()) > 0:
                    ow = np.ones(w_next.shape[0]) if ow is None else ow
                    sn = sens[nxt] / max(float(sens[nxt][ow > 0].mean()), 1e-30)
                    ow = (1.0 - class_aware) * ow + class_aware * sn
                order = selection_order(g, c, next_layer_factor(w_next, ow), ridge)
                keep = np.sort(order[n_drop:])
            else:
                keep = np.arange(width)
            w_n = base.weights[nxt].astype(np.float64)
            pad = NIN_LAYERS[li + 1].padding
            a = refit_coefficients(g, c, keep, ridge, to_identity)  # [C, |K|]
            w_chan = np.einsum("ojhw,jk->okhw", w_n, a)
            cache: dict = {}
            y_o = original_pre(out_o, base, li + 1) if impute_iters or (patch_samples and w_n.shape[2] > 1) else None
            if patch_samples and w_n.shape[2] > 1:
                w_new, const = patch_refit(out_s[:, torch.from_numpy(keep)], m_s[keep], out_o, base, li + 1,
                                           ridge * PATCH_RIDGE, patch_samples, prior=w_chan, y_o=y_o, cache=cache)
                new_w[nxt] = w_new.astype(np.float32)
            else:
                new_w[nxt] = w_chan.astype(np.float32)
                resid = m_o - np.einsum("jk,khw->jhw", a, m_s[keep])
                const = contribution_map(resid, w_n, pad)
            for _ in range(impute_iters):
                samples = patch_samples if w_n.shape[2] > 1 else 0
                w_cur = new_w[nxt].astype(np.float64)
                w_imp, const = patch_refit(out_s[:, torch.from_numpy(keep)], m_s[keep], out_o, base, li + 1,
                                           ridge * PATCH_RIDGE if samples else ridge, samples, prior=w_cur,
                                           fit=(w_cur, const), y_o=y_o, cache=cache)
                new_w[nxt] = w_imp.astype(np.float32)
            if fold == "exact":
                spec.consts[nxt] = const.astype(np.float32)
            else:
                new_b[nxt] = (new_b[nxt].astype(np.float64) + const.mean(axis=(1, 2))).astype(np.float32)
            # L loses the rows of the dropped channels (its weights were refit as the previous consumer)
            new_w[L] = np.ascontiguousarray(new_w[L][keep])
            new_b[L] = np.ascontiguousarray(new_b[L][keep])
            if L in spec.consts:
                spec.consts[L] = np.ascontiguousarray(spec.consts[L][keep])
            kept[L] = [int(v) for v in keep]
            idx = torch.from_numpy(keep)
            x_s = out_s.index_select(1, idx)
            del out_s, y_o
    last = LAYER_NAMES[-1]
    cls = np.asarray(classes, np.int64)
    new_w[last] = np.ascontiguousarray(new_w[last][cls])
    new_b[last] = np.ascontiguousarray(new_b[last][cls])
    if last in spec.consts:
        spec.consts[last] = np.ascontiguousarray(spec.consts[last][cls])
    if relu_iters and fold == "exact":
        with torch.no_grad():
            w_o = torch.from_numpy(np.ascontiguousarray(base.weights[last][cls], np.float32))
            b6 = new_b[last].astype(np.float64)[:, None, None]  # the ReLU sees bias + constant + products
            z = torch.cat([F.conv2d(o, w_o, torch.from_numpy(new_b[last])) for o in originals[-1].split(CHUNK_IMAGES)])
            v = decision_weights(torch.relu(z).mean(dim=(2, 3)).double().numpy(), decision_weight)
            w6, c6 = relu_refit(x_s, z, new_w[last][:, :, 0, 0], spec.consts[last] + b6, ridge, relu_iters, v)
        new_w[last] = w6[:, :, None, None].astype(np.float32)
        spec.consts[last] = (c6 - b6).astype(np.float32)
    kept[last] = [int(v) for v in cls]
    spec._hash = None
    if scores_out is not None:  # the specialist's class scores on the calibration images, from its CCCP5 outputs
        with torch.no_grad():
            scores_out.append(torch.cat([_layer(len(LAYER_NAMES) - 1, h, spec) for h in x_s.split(CHUNK_IMAGES)])
                              .double().numpy())
    return spec, kept


def class_scores(w: NinWeights, images: np.ndarray) -> np.ndarray:
    """Class scores [N, outputs] of a (possibly pruned) NIN on normalised images (CCCP6 -> ReLU -> mean)."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    out = []
    with torch.no_grad():
        for i in range(0, len(x), CHUNK_IMAGES):
            h = x[i : i + CHUNK_IMAGES]
            for li in range(len(LAYER_NAMES)):
                h = _layer(li, h, w)
            out.append(h.numpy())
    return np.concatenate(out).astype(np.float64)


def score_error(w: NinWeights, images: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error of ``w``'s class scores against ``target`` [N, outputs] (the original's)."""
    return float(np.mean((class_scores(w, images) - target) ** 2))


def build_reconstructed(base: NinWeights, classes, pruned: dict[str, np.ndarray], method,
                        calib: str | Path | Split | None = None,
                        fallback: Callable[[], tuple[NinWeights, dict[str, list[int]]]] | None = None
                        ) -> tuple[NinWeights, dict[str, list[int]]]:
    """:func:`reconstruct` with as many channels removed per layer as the allocation's plan ``pruned`` (which
    channels go is chosen here), on ``method.calib_per_class`` calibration images per class and their
    augmented copies (:func:`specialist.calib_images.augment_images`; the targets are the original network's
    outputs, so mirrored images are as good calibration data as any).

    ``fallback``: the artifact-only build with the same plan (``best``); the guard returns it instead when its
    class scores are closer to the original network's on calibration images (model selection on calibration
    data only): on :data:`GUARD_HELDOUT` further images per class that the refit did not see, or where there
    are none, on the fitted images."""
    images = augment_images(calibration_images(base, classes, method.calib_per_class, calib))
    counts = {L: len(pruned.get(L, ())) for L in PRUNABLE}
    scores: list[np.ndarray] = []
    opts = dict(RECON_DEFAULTS)
    if len(set(classes)) >= base.weights[LAYER_NAMES[-1]].shape[0]:  # all the network's classes: every output
        opts["class_aware"] = 0.0  # counts (measured: 10 classes lost 0.2 points at levels 20 and 40 with it)
    weights, kept = reconstruct(base, classes, counts, images, method.ridge * RIDGE_SCALE, method.fold,
                                scores_out=scores, **opts)
    if fallback is None:
        return weights, kept
    cls = torch.as_tensor(sorted(int(c) for c in classes))
    other = fallback()
    held = calibration_images(base, classes, GUARD_HELDOUT, calib, skip=method.calib_per_class) \
        if GUARD_HELDOUT else images[:0]
    if len(held):
        target = class_scores(base, held)[:, cls.numpy()]
        e_recon, e_other = score_error(weights, held, target), score_error(other[0], held, target)
    else:
        last = LAYER_NAMES[-1]
        with torch.no_grad():  # the original's class scores from its CCCP5 outputs (cached by reconstruct)
            w6 = torch.from_numpy(np.ascontiguousarray(base.weights[last], np.float32))[cls]
            b6 = torch.from_numpy(np.ascontiguousarray(base.biases[last], np.float32))[cls]
            x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
            target = torch.relu(F.conv2d(original_outputs(base, x)[-1], w6, b6)).mean(dim=(2, 3)).double().numpy()
        e_recon, e_other = float(np.mean((scores[0] - target) ** 2)), score_error(other[0], images, target)
    log.info("recon guard: class-score error %.4g (recon) vs %.4g (artifact-only)", e_recon, e_other)
    return (weights, kept) if e_recon <= e_other else other

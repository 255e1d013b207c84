"""Calibration statistics (paper 5.3): computed once per base model, stored per class.

Everything is stored as per-class sums or per-class means with counts, so the statistics of ANY target
subset are exact combinations (:meth:`CalibStats.subset`): building a specialist then needs this
artifact alone, no images (paper 5.3, "can run online").

For each prunable layer L (CCCP2..CCCP5) the statistics describe L's output *as the next layer sees it*
(after ReLU and pooling):

* ``impact_grad[L]`` / ``impact_fd[L]`` ``[C, 10]``: I_jy = dp_y/dw_j averaged over class-y images
  (exact by autograd, activation x gradient; or the paper's forward finite difference).
* ``mean[L]`` ``[10, C, H, W]``: per-class mean feature maps (paper 4.3.1).
* ``corr[L]`` ``[10, C, C]``: per-class average of per-image Pearson correlations (paper 4.3.2).
* ``gram[L]`` ``[10, C, C]``: per-class second moments E[x x^T] over images and positions (least squares).
* ``cand[L]`` ``[C, K]`` candidate partner channels (most correlated over all classes), and for layers whose
  next convolution is k x k, ``xcorr[L]`` ``[10, C, K, D]`` cross-correlations at the D=(2k-1)^2 spatial
  offsets between each channel and its candidates, ``acorr[L]`` ``[10, C, D]`` autocorrelations: the
  element-wise products among pairs of channels that the paper's least-squares weight adjustment needs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from specialist.errors import ArtifactError
from specialist.model import LAYER_NAMES, N_CLASSES, NIN_LAYERS, PRUNABLE, NinNet, NinWeights, build_module

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "specialist-harness/calib-stats"
#: Candidate partner channels stored per channel for k x k next layers.
N_CANDIDATES = 8


def next_layer(name: str):
    """The spec of the convolution that consumes layer ``name``'s output."""
    i = LAYER_NAMES.index(name)
    return NIN_LAYERS[i + 1]


def offsets(k: int) -> np.ndarray:
    """The (2k-1)^2 spatial offsets (dy, dx) in row-major order, each in [-(k-1), k-1]."""
    r = np.arange(-(k - 1), k)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    return np.stack([dy.ravel(), dx.ravel()], axis=1)


@dataclass
class CalibStats:
    """Per-class calibration statistics of one base model (see module docstring)."""

    model_hash: str
    counts: np.ndarray  # [10] images per class
    impact_grad: dict[str, np.ndarray]
    impact_fd: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    corr: dict[str, np.ndarray]
    gram: dict[str, np.ndarray]
    cand: dict[str, np.ndarray]
    xcorr: dict[str, np.ndarray]
    acorr: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)
    _f64: dict = field(default_factory=dict, repr=False, compare=False)

    def impacts(self, kind: str) -> dict[str, np.ndarray]:
        if kind == "grad":
            return self.impact_grad
        if kind == "fd":
            if not self.impact_fd:
                raise ArtifactError("this statistics artifact has no finite-difference impacts; "
                                    "rebuild it with 'harness stats --impact fd' (or use --impact grad)")
            return self.impact_fd
        raise ArtifactError(f"unknown impact kind {kind!r}; use fd or grad")

    def per_class64(self, group: str, L: str) -> np.ndarray:
        """``group[L]`` as float64 (converted once per loaded artifact: every subset combines these)."""
        key = (group, L)
        a = self._f64.get(key)
        if a is None:
            a = self._f64[key] = getattr(self, group)[L].astype(np.float64)
            a.flags.writeable = False
        return a

    def subset(self, classes) -> SubsetStats:
        """Exact statistics of the union of ``classes`` (weighted combinations of per-class sums).

        Means and second moments are combined at once; the correlations (used by the paper's correlated
        compensation only) and the finite-difference impacts when first read."""
        cls = np.asarray(sorted(set(int(c) for c in classes)))
        n = self.counts[cls].astype(np.float64)
        if n.sum() <= 0:
            raise ArtifactError(f"the statistics artifact has no calibration images for classes {cls.tolist()}")
        wts = n / n.sum()

        def combine(group: str) -> LayerMap:
            return LayerMap(lambda L: np.tensordot(wts, self.per_class64(group, L)[cls], axes=1),
                            getattr(self, group))

        out = SubsetStats(classes=cls, n_images=int(n.sum()))
        out.corr, out.xcorr, out.acorr = combine("corr"), combine("xcorr"), combine("acorr")
        out.impact_fd = LayerMap(lambda L: self.impact_fd[L][:, cls].astype(np.float64), self.impact_fd)
        for L in PRUNABLE:
            out.mean[L] = np.tensordot(wts, self.per_class64("mean", L)[cls], axes=1)
            out.gram[L] = np.tensordot(wts, self.per_class64("gram", L)[cls], axes=1)
            out.impact_grad[L] = self.impact_grad[L][:, cls].astype(np.float64)
            out.cand[L] = self.cand[L]
        return out


class LayerMap(dict):
    """A per-layer dict whose values are made on first read by ``make(L)``, for the layers of ``source``
    (its keys); iteration, ``len`` and ``in`` see every such layer, made or not."""

    def __init__(self, make, source):
        super().__init__()
        self._make, self._layers = make, tuple(source)

    def __missing__(self, L):
        if L not in self._layers:
            raise KeyError(L)
        v = self._make(L)
        self[L] = v
        return v

    def _all(self) -> LayerMap:
        for L in self._layers:
            self[L]  # noqa: B018 (made on read)
        return self

    def get(self, L, default=None):
        return self[L] if L in self else default

    def __contains__(self, L) -> bool:
        return L in self._layers or dict.__contains__(self, L)

    def __iter__(self):
        return dict.__iter__(self._all())

    def __len__(self) -> int:
        return len(set(self._layers) | set(dict.keys(self)))

    def keys(self):
        return dict.keys(self._all())

    def values(self):
        return dict.values(self._all())

    def items(self):
        return dict.items(self._all())

    def __bool__(self) -> bool:
        return len(self) > 0


@dataclass
class SubsetStats:
    """Statistics of one target class subset: means over the subset's images (and positions)."""

    classes: np.ndarray
    n_images: int
    impact_grad: dict[str, np.ndarray] = field(default_factory=dict)
    impact_fd: dict[str, np.ndarray] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)  # [C, H, W]
    corr: dict[str, np.ndarray] = field(default_factory=dict)  # [C, C]
    gram: dict[str, np.ndarray] = field(default_factory=dict)  # [C, C] E[x x^T]
    cand: dict[str, np.ndarray] = field(default_factory=dict)
    xcorr: dict[str, np.ndarray] = field(default_factory=dict)  # [C, K, D] E over positions
    acorr: dict[str, np.ndarray] = field(default_factory=dict)  # [C, D]
    _cov: dict = field(default_factory=dict, repr=False, compare=False)

    def impacts(self, kind: str) -> dict[str, np.ndarray]:
        if kind == "fd":
            if not self.impact_fd:
                raise ArtifactError("the statistics have no finite-difference impacts; use --impact grad")
            return self.impact_fd
        return self.impact_grad

    def cov(self, L: str) -> np.ndarray:
        """:func:`position_covariance` of layer L (made once per subset; read-only)."""
        c = self._cov.get(L)
        if c is None:
            c = self._cov[L] = position_covariance(self.gram[L], self.mean[L])
            c.flags.writeable = False
        return c


def position_covariance(gram: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """Covariance of channels around their per-position means: E[x x^T] - E_p[m(p) m(p)^T]."""
    m = mean_map.reshape(mean_map.shape[0], -1).astype(np.float64)
    return gram - (m @ m.T) / m.shape[1]


# ----------------------------------------------------------------------------------------------- compute


class _Acc:
    """float64 accumulators of per-class sums for one layer."""

    def __init__(self, c: int, hw: tuple[int, int], k_next: int):
        self.c, self.hw, self.k_next = c, hw, k_next
        self.sum_map = np.zeros((N_CLASSES, c, *hw))
        self.corr = np.zeros((N_CLASSES, c, c))
        self.gram = np.zeros((N_CLASSES, c, c))
        self.imp_grad = np.zeros((N_CLASSES, c))
        self.imp_fd = np.zeros((N_CLASSES, c))
        self.xcorr = None
        self.acorr = None


def _per_image_corr(a: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between channel maps of each image: [B, C, H, W] -> [B, C, C] (dead channels -> 0)."""
    b, c = a.shape[:2]
    z = a.reshape(b, c, -1).float()
    z = z - z.mean(dim=2, keepdim=True)
    norm = z.norm(dim=2, keepdim=True)
    z = torch.where(norm > 1e-6, z / norm.clamp_min(1e-6), torch.zeros_like(z))
    return torch.bmm(z, z.transpose(1, 2))


def _shift_corr(a: torch.Tensor, cand: torch.Tensor, k: int, onehot: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums over images and positions of a_j'(q) * a_j(q + d), zero padding outside the map.

    ``a`` [B, C, H, W]; ``cand`` [C, K] partners j' of each j; ``onehot`` [B, Y].
    Returns xcorr [Y, C, K, D] and acorr [Y, C, D] (float64) for the D=(2k-1)^2 offsets of :func:`offsets`.
    """
    bsz, c, h, w = a.shape
    p = k - 1
    a = a.float()
    pad = torch.nn.functional.pad(a, (p, p, p, p))
    partner = a[:, cand].reshape(bsz * c, cand.shape[1], h * w)  # [(B C), K, HW]
    offs = offsets(k)
    xc = torch.empty(bsz, c, cand.shape[1], len(offs))
    ac = torch.empty(bsz, c, len(offs))
    for i, (dy, dx) in enumerate(offs):
        shifted = pad[:, :, p + dy : p + dy + h, p + dx : p + dx + w].reshape(bsz * c, h * w, 1)
        xc[:, :, :, i] = torch.bmm(partner, shifted).reshape(bsz, c, -1)
        ac[:, :, i] = (a.reshape(bsz * c, 1, h * w) @ shifted).reshape(bsz, c)
    oh = onehot.double()
    return (torch.einsum("by,bckd->yckd", oh, xc.double()).numpy(),
            torch.einsum("by,bcd->ycd", oh, ac.double()).numpy())


def _capture(net: NinNet, x: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass that returns the scores and each prunable layer's (post-pool) output.

    With ``grad``, the graph starts at the first prunable output (a leaf that requires grad) and every
    prunable output retains its gradient; the weights never get gradients.
    """
    acts = {}
    h = x
    first = LAYER_NAMES.index(PRUNABLE[0])
    for i, name in enumerate(LAYER_NAMES):
        if grad and i <= first:
            with torch.no_grad():
                h = net.layer(i, h)
            if i == first:
                h = h.detach().requires_grad_(True)
        else:
            h = net.layer(i, h)
        if name in PRUNABLE:
            if grad and i > first:
                h.retain_grad()
            acts[name] = h
    return h, acts


def compute_stats(weights: NinWeights, images_u8: np.ndarray, labels: np.ndarray, *, impact: str = "grad",
                  fd_per_class: int | None = None, fd_delta: float = 1e-2, batch: int = 100,
                  progress=None, n_candidates: int = N_CANDIDATES, shift_per_class: int = 100,
                  candidates: dict[str, np.ndarray] | None = None) -> CalibStats:
    """Compute the per-class calibration statistics from images (uint8 NHWC) and labels.

    ``impact``: "grad" (autograd only), "fd" (finite differences only) or "both".  Finite differences cost
    one partial forward pass per channel and image; ``fd_per_class`` bounds the images they use.
    ``shift_per_class`` bounds the images used for the spatial cross-correlations (second moments
    converge fast; they cost a lot).  ``candidates`` fixes the partner candidates (else: the most correlated
    channels over all given images).
    ``progress``: optional callable(done_images, total_images, phase).
    """
    t0 = time.perf_counter()
    net = build_module(weights)
    net.requires_grad_(False)
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=N_CLASSES).astype(np.int64)
    specs = {s.name: s for s in NIN_LAYERS}
    accs: dict[str, _Acc] = {}
    n = len(labels)
    x_all = weights.normalize(images_u8)

    # Pass 1: means, correlations, grams, gradient impacts.
    for start in range(0, n, batch):
        xb = torch.from_numpy(x_all[start : start + batch])
        yb = torch.from_numpy(labels[start : start + batch])
        onehot = torch.nn.functional.one_hot(yb, N_CLASSES).double()
        want_grad = impact in ("grad", "both")
        with torch.set_grad_enabled(want_grad):
            scores, acts = _capture(net, xb, grad=want_grad)
            p = torch.softmax(scores, dim=1)
            p_y = p.gather(1, yb[:, None]).sum()
            if impact in ("grad", "both"):
                p_y.backward()
        for L, a in acts.items():
            a_d = a.detach()
            if L not in accs:
                accs[L] = _Acc(a_d.shape[1], tuple(a_d.shape[2:]), specs[LAYER_NAMES[LAYER_NAMES.index(L) + 1]].kernel)
            acc = accs[L]
            hw = a_d.shape[2] * a_d.shape[3]
            acc.sum_map += torch.einsum("by,bchw->ychw", onehot, a_d.double()).numpy()
            acc.corr += torch.einsum("by,bcd->ycd", onehot, _per_image_corr(a_d).double()).numpy()
            flat = a_d.reshape(a_d.shape[0], a_d.shape[1], -1)
            gram_b = torch.bmm(flat, flat.transpose(1, 2)).double()
            acc.gram += torch.einsum("by,bcd->ycd", onehot, gram_b).numpy() / hw
            if impact in ("grad", "both"):
                contrib = (a_d.double() * a.grad.double()).sum(dim=(2, 3))  # dp_y/dw_j per image
                acc.imp_grad += torch.einsum("by,bc->yc", onehot, contrib).numpy()
        if progress:
            progress(min(start + batch, n), n, "statistics")

    # Candidate partners from the all-class correlation, then shift correlations for k x k next layers.
    cand: dict[str, np.ndarray] = {}
    for L, acc in accs.items():
        if candidates is not None:
            cand[L] = np.asarray(candidates[L], dtype=np.int16)
            continue
        corr_all = acc.corr.sum(0) / max(n, 1)
        np.fill_diagonal(corr_all, -np.inf)
        kk = min(n_candidates, acc.c - 1)
        cand[L] = np.argsort(-corr_all, axis=1, kind="stable")[:, :kk].astype(np.int16)
    shift_layers = [L for L in PRUNABLE if accs[L].k_next > 1]
    if shift_layers:
        for L in shift_layers:
            acc = accs[L]
            d = (2 * acc.k_next - 1) ** 2
            acc.xcorr = np.zeros((N_CLASSES, acc.c, cand[L].shape[1], d))
            acc.acorr = np.zeros((N_CLASSES, acc.c, d))
        sidx = np.concatenate([np.flatnonzero(labels == c)[:shift_per_class] for c in range(N_CLASSES)])
        sidx.sort()
        shift_counts = np.bincount(labels[sidx], minlength=N_CLASSES)
        for start in range(0, len(sidx), batch):
            sel = sidx[start : start + batch]
            xb = torch.from_numpy(x_all[sel])
            yb = torch.from_numpy(labels[sel])
            onehot = torch.nn.functional.one_hot(yb, N_CLASSES)
            with torch.no_grad():
                _, acts = _capture(net, xb)
            for L in shift_layers:
                acc = accs[L]
                hw = acts[L].shape[2] * acts[L].shape[3]
                cand_t = torch.from_numpy(cand[L].astype(np.int64))
                xc, ac = _shift_corr(acts[L], cand_t, acc.k_next, onehot)
                acc.xcorr += xc / hw
                acc.acorr += ac / hw
            if progress:
                progress(min(start + batch, len(sidx)), len(sidx), "shift correlations")

    # Finite-difference impacts: forward difference, one partial forward pass per channel and image.
    if impact in ("fd", "both"):
        idx = np.arange(n)
        if fd_per_class is not None:
            idx = np.concatenate([np.flatnonzero(labels == c)[:fd_per_class] for c in range(N_CLASSES)])
        fd_counts = np.bincount(labels[idx], minlength=N_CLASSES)
        done = 0
        for L in PRUNABLE:
            li = LAYER_NAMES.index(L)
            acc = accs[L]
            for start in range(0, len(idx), 20):
                sel = idx[start : start + 20]
                xb = torch.from_numpy(x_all[sel])
                yb = torch.from_numpy(labels[sel])
                with torch.no_grad():
                    scores, acts = _capture(net, xb)
                    p0 = torch.softmax(scores, 1).gather(1, yb[:, None])[:, 0]
                    a = acts[L]
                    bsz, c = a.shape[:2]
                    # all channels at once: [C*B] perturbed copies, chunked to bound memory
                    for c0 in range(0, c, 32):
                        cs = torch.arange(c0, min(c0 + 32, c))
                        pert = a.unsqueeze(0).repeat(len(cs), 1, 1, 1, 1)
                        pert[torch.arange(len(cs)), :, cs] *= 1.0 + fd_delta
                        out = net.forward_from(li + 1, pert.reshape(-1, *a.shape[1:]))
                        p1 = torch.softmax(out, 1).reshape(len(cs), bsz, -1)
                        p1y = p1.gather(2, yb[None, :, None].expand(len(cs), bsz, 1))[..., 0]
                        dp = ((p1y - p0[None]) / fd_delta).double()  # [cs, B]
                        onehot = torch.nn.functional.one_hot(yb, N_CLASSES).double()
                        acc.imp_fd[:, c0 : c0 + len(cs)] += (dp @ onehot).T.numpy()
                done += len(sel)
                if progress:
                    progress(done, len(idx) * len(PRUNABLE), "finite differences")
    else:
        fd_counts = np.zeros(N_CLASSES, np.int64)

    cnt = np.maximum(counts, 1).astype(np.float64)
    scnt = np.maximum(shift_counts, 1).astype(np.float64) if shift_layers else cnt
    st = CalibStats(
        model_hash=weights.content_hash(), counts=counts,
        impact_grad={L: (a.imp_grad / cnt[:, None]).T.astype(np.float32) for L, a in accs.items()}
        if impact in ("grad", "both") else {},
        impact_fd={L: (a.imp_fd / np.maximum(fd_counts, 1)[:, None]).T.astype(np.float32) for L, a in accs.items()}
        if impact in ("fd", "both") else {},
        mean={L: (a.sum_map / cnt[:, None, None, None]).astype(np.float32) for L, a in accs.items()},
        corr={L: (a.corr / cnt[:, None, None]).astype(np.float32) for L, a in accs.items()},
        gram={L: (a.gram / cnt[:, None, None]).astype(np.float32) for L, a in accs.items()},
        cand=cand,
        xcorr={L: (accs[L].xcorr / scnt[:, None, None, None]).astype(np.float32) for L in shift_layers},
        acorr={L: (accs[L].acorr / scnt[:, None, None]).astype(np.float32) for L in shift_layers},
        meta={"impact": impact, "fd_per_class": fd_per_class if impact != "grad" else None,
              "shift_per_class": shift_per_class,
              "fd_delta": fd_delta, "n_candidates": n_candidates,
              "compute_s": round(time.perf_counter() - t0, 3)},
    )
    if not st.impact_grad:
        st.impact_grad = st.impact_fd
    return st


# ----------------------------------------------------------------------------------------------- save / load

_F16 = ("mean", "corr", "xcorr", "acorr")


def stats_to_bytes(st: CalibStats, extra_meta: dict | None = None, half: bool = True) -> bytes:
    """Serialise to a compressed npz with a JSON ``meta`` (schema version, model hash)."""
    arrays: dict[str, np.ndarray] = {"counts": st.counts.astype(np.int64)}
    for group in ("impact_grad", "impact_fd", "mean", "corr", "gram", "cand", "xcorr", "acorr"):
        for L, a in getattr(st, group).items():
            if half and group in _F16:
                a = a.astype(np.float16)
            arrays[f"{group}/{L}"] = a
    meta = dict(st.meta)
    meta.update(extra_meta or {})
    meta.update({"kind": KIND, "schema_version": SCHEMA_VERSION, "model_hash": st.model_hash})
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_stats(path: str | Path, expect_model_hash: str | None = None) -> CalibStats:
    """Load an artifact; refuse newer schema versions, other base models, truncated files."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"statistics artifact {p} not found; make one with 'harness stats -o {p}'")
    try:
        blob = p.read_bytes()
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ArtifactError(f"statistics artifact {p} is truncated or corrupt ({exc})") from None
    if "meta" not in arrays:
        raise ArtifactError(f"{p} is not a statistics artifact (no meta); make one with 'harness stats'")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"statistics artifact {p} has a corrupt meta record") from None
    if meta.get("kind") != KIND:
        raise ArtifactError(f"{p} is a {meta.get('kind')!r} file, not a statistics artifact")
    ver = int(meta.get("schema_version", 0))
    if ver > SCHEMA_VERSION:
        raise ArtifactError(f"statistics artifact {p} has schema version {ver}, newer than this harness "
                            f"({SCHEMA_VERSION}); upgrade the harness")
    if expect_model_hash is not None and meta.get("model_hash") != expect_model_hash:
        raise ArtifactError(f"statistics artifact {p} was made from another base model "
                            f"({str(meta.get('model_hash'))[:12]} != {expect_model_hash[:12]}); "
                            "run 'harness stats --model M -o FILE' for this model")
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["path"] = str(p)
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in
                                                 ("impact_grad", "impact_fd", "mean", "corr", "gram", "cand",
                                                  "xcorr", "acorr")}
    for key, a in arrays.items():
        if "/" in key:
            g, L = key.split("/", 1)
            if g in groups:
                groups[g][L] = a.astype(np.float32) if a.dtype == np.float16 else a
    for g in ("impact_grad", "mean", "corr", "gram", "cand"):
        missing = [L for L in PRUNABLE if L not in groups[g]]
        if missing:
            raise ArtifactError(f"statistics artifact {p} lacks {g} for {', '.join(missing)}; it is incomplete")
    return CalibStats(model_hash=meta["model_hash"], counts=arrays["counts"], meta=meta, **groups)


def default_stats_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("specialist") / "assets" / "nin_cifar10.stats.npz"))

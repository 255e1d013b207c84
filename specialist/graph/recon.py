"""Calibration-driven sequential reconstruction on graph models (the ``recon`` preset; docs/anycnn.md).

``best`` fits every consumer from statistics of the *unpruned* network, so its errors compound: a consumer deep in
the network sees inputs that already differ from the ones its fit assumed.  ``recon`` keeps ``best``'s global
allocation (the same channels removed per group, the same FLOPs) and then walks the consumers in execution order,
on calibration images of the target classes, against the original network:

* a group's channels are chosen when its first consumer is reached, by backward elimination on the ridge
  least-squares error of reconstructing every consumer's ORIGINAL pre-activations (``Wf^T x_o`` restricted to
  the group's inputs; classifier: target rows) from the specialist's own ``x_s[K]`` (each consumer's error
  relative to its own output energy, summed over the group's consumers, as ``best`` sums them);
* every consumer is then refit channel-level from what the specialist built so far feeds it:
  ``x_o - m_o ~ A (x_s[K] - m_s[K])`` by ridge least squares (the ridge pulls towards keeping the kept channels
  as they are, so a consumer with no removed input and no drift is left exactly as it was); new weights ``W A``
  and the per-position constant ``W * (m_o - A m_s[K])`` (``ConstAdd`` with the exact fold, its spatial mean in
  the bias with ``fold="bias"``).  Consumers of intact groups whose inputs drifted are refit too (what stops the
  error compounding); a consumer whose inputs equal the original's on every image is left alone;
* depthwise convolutions and BatchNorms carrying a group are sliced with it (not refit: they do not mix
  channels); the consumer after them absorbs the change.  The classifier keeps its target classes' rows.

Moments are accumulated in float64 over images and positions, per chunk of images, for the original network
and the working specialist side by side (a forward pass per consumer, stopped after the last layer it needs).
The working specialist stays full width (removed inputs get zero weights) until the end; then the surgery of
:mod:`specialist.graph.surgery` cuts it physically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from specialist.allocation import ridge_lambda
from specialist.errors import DataError, UsageError
from specialist.graph.compensate import consumer_matrix
from specialist.graph.groups import ChannelGraph, ChannelGroup, Consumer
from specialist.graph.methods import eliminate, elimination_drops, elimination_state
from specialist.graph.stats import GraphStats
from specialist.graph.surgery import ConstAdd, SurgeryReport, _set_module, fold_constant, prune

log = logging.getLogger(__name__)

#: Images per forward chunk.
CHUNK_IMAGES = 100
#: The original network's consumer inputs on the calibration images are kept in memory up to this size (ResNet-20:
#: 0.84 MB per image; caching halves a 10-class build: 43 -> 21 s), else recomputed in every pass.
ORIGINAL_CACHE_BYTES = 1 << 30


class _Stop(Exception):
    """Raised by a hook once every needed consumer input of a pass is captured."""


class Moments:
    """Paired moments of one consumer's input in the specialist (``x_s``) and the original (``x_o``)."""

    def __init__(self):
        self.n = 0
        self.sum_s = self.sum_o = self.gss = self.gso = self.goo = None
        self.drift = 0.0
        self.spatial: tuple[int, ...] = ()

    def add(self, xs: torch.Tensor, xo: torch.Tensor) -> None:
        if xs.dim() == 2:  # a linear's input: features are the channels, no positions
            xs, xo = xs[:, :, None], xo[:, :, None]
        self.spatial = tuple(int(v) for v in xs.shape[2:])
        xs = xs.reshape(xs.shape[0], xs.shape[1], -1).double()
        xo = xo.reshape(xo.shape[0], xo.shape[1], -1).double()
        a = xs.permute(1, 0, 2).reshape(xs.shape[1], -1)
        b = xo.permute(1, 0, 2).reshape(xo.shape[1], -1)
        if self.sum_s is None:
            self.sum_s, self.sum_o = xs.sum(0), xo.sum(0)
            self.gss, self.gso, self.goo = a @ a.T, a @ b.T, b @ b.T
        else:
            self.sum_s += xs.sum(0)
            self.sum_o += xo.sum(0)
            self.gss += a @ a.T
            self.gso += a @ b.T
            self.goo += b @ b.T
        self.n += xs.shape[0]
        self.drift += float((a - b).abs().max()) if a.numel() else 0.0

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-position means ``m_s``, ``m_o`` ``[C, P]`` and the within-position (co)variances ``G = E[xs xs^T]``,
        ``C = E[xs xo^T]``, ``O = E[xo xo^T]`` over images and positions."""
        m_s, m_o = self.sum_s / self.n, self.sum_o / self.n
        p = m_s.shape[1]
        count = self.n * p

        def cen(g, u, v):
            return (g / count - (u @ v.T) / p).numpy()

        return m_s.numpy(), m_o.numpy(), cen(self.gss, m_s, m_s), cen(self.gso, m_s, m_o), cen(self.goo, m_o, m_o)


def _inputs(model: nn.Module, chunk: torch.Tensor, names: Sequence[str], last: str) -> dict[str, torch.Tensor]:
    """The inputs of the layers ``names`` on ``chunk``; the forward pass stops at ``last``."""
    seen: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())

    def hook(name):
        def fn(m, inputs):
            t = inputs[0].detach()
            seen[name] = t.reshape(-1, t.shape[-1]) if isinstance(m, nn.Linear) and t.dim() > 2 else t
            if name == last:
                raise _Stop
        return fn

    hooks = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        model(chunk)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen


class Originals:
    """The original network's inputs of every consumer on the calibration images, per chunk: kept in memory
    when they fit in :data:`ORIGINAL_CACHE_BYTES` (a tensor read by several consumers is stored once), else
    recomputed per pass."""

    def __init__(self, original: nn.Module, x: torch.Tensor, order: Sequence[str]):
        self.model, self.x, self.order = original, x, list(order)
        self.chunks: list[dict[str, torch.Tensor]] | None = None
        with torch.no_grad():
            one = _inputs(original, x[:1], self.order, self.order[-1])
        per_image = sum(t.numel() * t.element_size() for t in {id(t): t for t in one.values()}.values())
        if per_image * len(x) <= ORIGINAL_CACHE_BYTES:
            with torch.no_grad():
                self.chunks = [_inputs(original, x[i : i + CHUNK_IMAGES], self.order, self.order[-1])
                               for i in range(0, len(x), CHUNK_IMAGES)]

    def get(self, k: int, names: Sequence[str], last: str) -> dict[str, torch.Tensor]:
        if self.chunks is not None:
            return self.chunks[k]
        i = k * CHUNK_IMAGES
        return _inputs(self.model, self.x[i : i + CHUNK_IMAGES], names, last)


@torch.no_grad()
def measure(original: nn.Module | Originals, working: nn.Module, x: torch.Tensor, names: Sequence[str],
            order: Sequence[str]) -> dict[str, Moments]:
    """:class:`Moments` at the inputs of the consumers ``names`` over the images ``x`` (the original network's
    inputs from ``original``, a module or its :class:`Originals`); each forward pass stops after the last of
    them (in execution ``order``)."""
    rank = {n: i for i, n in enumerate(order)}
    last = max(names, key=lambda n: rank[n])
    out = {n: Moments() for n in names}
    for k, i in enumerate(range(0, len(x), CHUNK_IMAGES)):
        chunk = x[i : i + CHUNK_IMAGES]
        xo = original.get(k, names, last) if isinstance(original, Originals) else _inputs(original, chunk, names,
                                                                                           last)
        xs = _inputs(working, chunk, names, last)
        for n in names:
            out[n].add(xs[n], xo[n])
    return out


def _units(c: Consumer, size: int) -> list[list[int]]:
    units: list[list[int]] = [[] for _ in range(size)]
    for pos, r in enumerate(c.root_idx):
        units[r].append(pos)
    return units


def selection_order(terms, size: int, n_remove: int, ridge: float) -> np.ndarray:
    """The first ``n_remove`` group channels backward elimination removes, on the refitted objective.

    ``terms``: per consumer ``(G, B, total, units)``: the specialist's input (co)variance over the group's
    inputs, ``B = C Wf`` (cross-covariance with the original inputs times the original weights), the original
    pre-activations' energy ``tr(Wf^T O Wf)``, and per group channel its input positions.  The objective of a
    kept set K is ``sum_consumers (total - tr(B_K^T (G_KK + lam)^-1 B_K)) / total`` (the ridge least-squares
    error of each consumer's original pre-activations from ``x_s[K]``, relative, summed); each step removes the
    channel whose loss raises it least (:func:`specialist.graph.methods.joint_elimination`'s update)."""
    states = []
    for g, b, total, units in terms:
        if total <= 0 or not len(g):
            continue
        p = np.linalg.inv(g + ridge_lambda(g, ridge) * np.eye(len(g)))
        states.append(elimination_state(p, b / np.sqrt(total), units)[0])
    alive = np.ones(size, bool)
    removed = []
    for _ in range(n_remove):
        j = int(np.argmin(elimination_drops(states, alive)))
        eliminate(states, j)
        alive[j] = False
        removed.append(j)
    return np.asarray(removed, np.int64)


def _adder(const: torch.Tensor):
    """A forward hook adding ``const`` to a layer's output (the working specialist's constants)."""
    def fn(_m, _inputs, out):
        return out + const[None]
    return fn


def _kept_outputs(graph: ChannelGraph, name: str, keep: Mapping[str, Sequence[int]], classes: list[int]):
    """The output rows of consumer ``name`` that the specialist keeps (None: all)."""
    if name == graph.classifier:
        return classes
    for grp in graph.groups:
        if name in grp.producers and grp.root in keep:
            return sorted(int(i) for i in keep[grp.root])
    return None


@torch.no_grad()
def reconstruct(graph: ChannelGraph, counts: Mapping[str, int], classes: Sequence[int], x: torch.Tensor,
                ridge: float = 1e-2, fold: str = "exact") -> tuple[dict[str, list[int]], nn.Module, SurgeryReport]:
    """Sequential reconstruction of ``graph.model`` for ``classes`` with ``counts[root]`` channels removed from
    each prunable group, on normalised calibration images ``x`` of the target classes (see the module
    docstring).  Returns (kept channels per prunable group, the pruned module, the surgery report)."""
    cls = sorted(int(v) for v in classes)
    x = torch.as_tensor(x, dtype=torch.float32)
    original = graph.model.eval()
    working = copy.deepcopy(original).eval()
    wmods = dict(working.named_modules())
    reads: dict[str, list[tuple[ChannelGroup, Consumer]]] = {}
    for grp in graph.groups:
        for c in grp.consumers:
            reads.setdefault(c.module, []).append((grp, c))
    order = graph.consumers()
    originals = Originals(original, x, order)
    keep: dict[str, list[int]] = {}
    removed_in: dict[str, set[int]] = {}
    consts: dict[str, torch.Tensor] = {}
    refit_names: list[str] = []
    const_hooks = []
    for name in order:
        todo = [grp for grp, _ in reads.get(name, ()) if grp.root not in keep]
        need = sorted({name} | {c.module for grp in todo for c in grp.consumers}, key=order.index)
        mom = measure(originals, working, x, need, order)
        cen = {n: mom[n].centred() for n in need}
        for grp in todo:
            n_drop = int(counts.get(grp.root, 0)) if grp.prunable else 0
            gone: list[int] = []
            if n_drop > 0:
                terms = []
                for c in grp.consumers:
                    _, _, g, cx, o = cen[c.module]
                    rows = list(c.in_idx)
                    wf = consumer_matrix(graph.modules[c.module], c.module, graph, cls).numpy()[rows]
                    b = cx[np.ix_(rows, rows)] @ wf
                    total = float(np.sum(wf * (o[np.ix_(rows, rows)] @ wf)))
                    terms.append((g[np.ix_(rows, rows)], b, total, _units(c, grp.size)))
                gone = [int(j) for j in selection_order(terms, grp.size, n_drop, ridge)]
            keep[grp.root] = sorted(set(range(grp.size)) - set(gone))
            for c in grp.consumers:
                removed_in.setdefault(c.module, set()).update(
                    i for i, r in zip(c.in_idx, c.root_idx, strict=True) if r in set(gone))
        m = mom[name]
        gone_in = removed_in.get(name, set())
        if not gone_in and m.drift == 0.0:
            continue  # the original input on every image: nothing to refit
        m_s, m_o, g, cx, _ = cen[name]
        kept_in = [i for i in range(g.shape[0]) if i not in gone_in]
        new_w, const = refit(graph.modules[name], m_s, m_o, g, cx, kept_in, ridge, m.spatial)
        wl = wmods[name]
        wl.weight.data.copy_(new_w.to(wl.weight.dtype))
        consts[name] = const
        refit_names.append(name)
        const_hooks.append(wl.register_forward_hook(_adder(const.to(torch.float32))))
    for h in const_hooks:
        h.remove()
    keep = {g.root: keep[g.root] for g in graph.prunable}
    return keep, *_cut(graph, working, keep, cls, consts, refit_names, fold)


def refit(layer: nn.Module, m_s: np.ndarray, m_o: np.ndarray, g: np.ndarray, c: np.ndarray, kept: Sequence[int],
          ridge: float, spatial: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-level ridge refit of a consumer: ``x_o - m_o ~ A (x_s[K] - m_s[K])`` with the ridge pulling ``A``
    towards the identity on the kept channels (``m_s``, ``m_o`` ``[C, P]`` per-position means, ``g``, ``c`` the
    centred ``E[xs xs^T]``, ``E[xs xo^T]``; ``spatial``: the input's spatial shape, P = its product).  Returns
    the new full-width weight (zero on removed inputs, float64) and the constant ``W * (m_o - A m_s[K])``
    ``[O, *out_spatial]`` (no bias; zero padding as the layer's, so exact at the borders)."""
    k = np.asarray(kept, np.int64)
    gkk = g[np.ix_(k, k)]
    lam = ridge_lambda(gkk, ridge)
    prior = np.zeros((len(k), g.shape[0]))
    prior[np.arange(len(k)), k] = 1.0
    a = np.linalg.solve(gkk + lam * np.eye(len(k)), c[k] + lam * prior).T  # [C_in, |K|]
    w = layer.weight.detach().double()
    new = torch.zeros_like(w)
    new[:, torch.from_numpy(k)] = torch.einsum("oj...,jk->ok...", w, torch.from_numpy(a))
    resid = torch.from_numpy(m_o - a @ m_s[k])  # [C_in, P]
    if isinstance(layer, nn.Linear):
        return new, w @ resid[:, 0]
    return new, layer._conv_forward(resid.reshape(resid.shape[0], *spatial)[None], w, None)[0]


def _cut(graph: ChannelGraph, working: nn.Module, keep: Mapping[str, list[int]], classes: list[int],
         consts: Mapping[str, torch.Tensor], refit_names: list[str], fold: str,
         const_atol: float = 1e-7) -> tuple[nn.Module, SurgeryReport]:
    """The working specialist cut physically: constants the same at every position (or every constant with
    ``fold="bias"``) go into the biases first (torch-pruning slices them with the outputs), the others become
    :class:`ConstAdd` buffers sliced to the kept outputs after the surgery."""
    wmods = dict(working.named_modules())
    per_position: dict[str, torch.Tensor] = {}
    compensated, deviation = [], {}
    for name, const in consts.items():
        layer = wmods[name]
        if float(const.abs().max()) == 0.0:
            continue
        compensated.append(name)
        folded, dev = fold_constant(layer, const, fold, const_atol)
        if not folded:  # per position, after the surgery
            per_position[name] = const
        elif dev is not None:
            deviation[name] = dev
    view = dataclasses.replace(graph, model=working, modules=wmods)
    module, report = prune(view, keep, classes, None, fold=fold, compensation="none")
    for name, const in per_position.items():
        rows = _kept_outputs(graph, name, keep, classes)
        if rows is not None:
            const = const[rows]
        layer = module.get_submodule(name)
        _set_module(module, name, ConstAdd(layer, const.to(layer.weight.dtype)))
    report.compensated = compensated
    report.per_position = list(per_position)
    report.max_fold_deviation = deviation
    report.refit = list(refit_names)
    return module.eval(), report


def calibration_images(description, classes: Sequence[int], per_class: int, data=None) -> torch.Tensor:
    """The first ``per_class`` calibration images of each target class (CIFAR-10 ``calib`` split of ``data``,
    default as :func:`specialist.data.resolve_data_dir`), normalised for the model; ``data`` may also be a
    tensor of normalised images (used as given)."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(data, dtype=torch.float32)
    from specialist.calib_images import calib_split

    if tuple(description.input_shape) != (3, 32, 32):
        raise UsageError(f"recon needs calibration images the model takes: it takes {list(description.input_shape)}"
                         " inputs, the calibration images are CIFAR-10 (3x32x32)")
    split = calib_split(data)
    sub = split.select(sorted(classes), per_class=per_class)
    missing = [c for c in classes if not np.any(sub.y == c)]
    if missing:
        raise DataError(f"no calibration images of class {missing[0]} in {split.source}")
    return description.normalize(sub.x)


def build_reconstructed(graph: ChannelGraph, stats: GraphStats | None, classes: Sequence[int], level: float, method,
                        description, calib=None) -> tuple[dict[str, list[int]], nn.Module, SurgeryReport]:
    """``best``'s global allocation (how many channels each group loses: the same FLOPs), then
    :func:`reconstruct` on ``method.calib_per_class`` calibration images per target class."""
    from specialist.graph.methods import plan_keep

    if stats is None:
        raise UsageError(f"method {method.name!r} needs a statistics artifact (for best's allocation)")
    x = calibration_images(description, classes, method.calib_per_class, calib)
    plan = plan_keep(graph, stats, classes, level, dataclasses.replace(method, calib_per_class=0))
    counts = {g.root: g.size - len(plan[g.root]) for g in graph.prunable}
    return reconstruct(graph, counts, classes, x, method.ridge, method.fold)

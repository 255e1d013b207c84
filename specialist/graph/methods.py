"""Every method preset on graph models: which channels of each group go, and how many per group.

A graph method (:class:`GraphMethod`) is a NIN :class:`specialist.methods.Method` read for channel groups:
``score`` names an entry of :data:`GRAPH_SCORES` (per group channel, higher = keep), ``allocation`` one of
:data:`GRAPH_ALLOCATIONS` (how many channels each group loses), ``compensation`` one of
:data:`specialist.graph.compensate.COMPENSATIONS`.  The NIN presets and TOML method files resolve through
:func:`specialist.methods.get_method`; five names keep their graph-specific definitions
(:data:`GRAPH_OVERRIDES`: ``lsq impact activation l1 variance``).

Reused NIN numerics (pure functions over arrays): the paper's max-over-target-classes impact score
(:mod:`specialist.select`), ThiNet's greedy order and scales (:mod:`specialist.thinet`), CAPTOR's class
preference clusters (:mod:`specialist.captor`), Neuron Merging's partners (:mod:`specialist.merge`), the
ridge of the reconstruction path (:mod:`specialist.allocation`).  A group is read by several consumers (a
residual stream by every block of its stage); the reconstruction objectives sum over them.

"Level" L is a FLOPs budget: that of removing L % of every prunable group (``uniform``).  ``global`` spends
the same budget across groups where the reconstruction error of the consumers (each consumer's relative error,
summed over the group's consumers: :func:`joint_elimination`) grows least per FLOP saved
(:func:`specialist.graph.budget.allocate_global`); FLOPs per plan come from :class:`specialist.graph.budget.FlopModel`
(each layer's counted FLOPs scale with its kept input and output shares, exact for convolutions and
linears).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from specialist import select
from specialist.allocation import ridge_lambda
from specialist.captor import captor_scores
from specialist.errors import UsageError
from specialist.graph.budget import (  # noqa: F401 (re-exported: FlopModel, uniform_counts, clear_caches)
    FlopModel,
    allocate_global,
    clear_caches,
    fit_budget,
    flop_model,
    uniform_counts,
)
from specialist.graph.compensate import COMPENSATIONS, consumer_matrix, position_cov
from specialist.graph.groups import ChannelGraph, ChannelGroup
from specialist.graph.stats import CRITERIA, GraphStats
from specialist.methods import PRESETS, Method, get_method
from specialist.thinet import greedy_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphMethod:
    """A method on graph models (the fields of :class:`specialist.methods.Method` they use)."""

    name: str
    criterion: str  # an entry of GRAPH_SCORES
    compensation: str  # an entry of specialist.graph.compensate.COMPENSATIONS
    description: str
    fold: str = "exact"
    impact: str = "grad"
    allocation: str = "uniform"
    ridge: float = 1e-2
    max_remove_pct: float = 90.0
    multiple_of: int = 1
    merge_threshold: float = 0.0
    layer_weights: tuple = ()  # global allocation: ((group root, weight), ...)
    calib_per_class: int = 0  # > 0: sequential reconstruction on calibration images (specialist.graph.recon)

    @property
    def needs_stats(self) -> bool:
        """Whether a build reads the statistics artifact (l1 with no or merge compensation does not)."""
        return not (self.criterion == "l1" and self.compensation in ("none", "merge"))


def from_method(m: Method) -> GraphMethod:
    """The graph reading of a NIN method (preset or TOML)."""
    return GraphMethod(m.name, m.score, m.compensation, m.description, m.fold, m.impact, m.allocation, m.ridge,
                       m.max_remove_pct, m.multiple_of, m.merge_threshold, tuple(m.layer_weights), m.calib_per_class)


#: Graph-specific definitions of five names (measured on ResNet-20 before the presets came; docs/anycnn.md).
GRAPH_OVERRIDES: dict[str, GraphMethod] = {m.name: m for m in (
    GraphMethod("lsq", "wvar", "lsq", "within-position variance x squared consumer weights selection; every "
                "consumer refit from its kept inputs by ridge least squares, plus per-position means"),
    GraphMethod("impact", "wvar", "mean", "lowest within-position variance x squared weights of every consumer "
                "pruned (the error mean compensation leaves), per-position mean compensation"),
    GraphMethod("activation", "activation", "mean", "lowest mean |activation| of the target classes pruned, "
                "per-position mean compensation"),
    GraphMethod("l1", "l1", "mean", "Li et al.: smallest filter L1 norms pruned, per-position mean compensation"),
    GraphMethod("variance", "variance", "mean", "Polyak & Wolf: lowest activation variance pruned, "
                "per-position mean compensation"),
)}
GRAPH_METHODS: dict[str, GraphMethod] = {**{n: from_method(m) for n, m in PRESETS.items() if not m.calib_per_class},
                                         **GRAPH_OVERRIDES}
GRAPH_DEFAULT_METHOD = "lsq"
#: Graph readings of the presets that reconstruct from calibration images (NIN's ``recon`` uses 200 images per
#: class and their mirror images; graph ``recon`` was measured with 100 per class, no mirror images:
#: docs/anycnn.md).
GRAPH_CALIB_OVERRIDES: dict[str, dict] = {
    "recon": {"calib_per_class": 100, "max_remove_pct": 60.0, "layer_weights": (),  # NIN's are by NIN layer
              "description": "best's allocation (same FLOPs); then layer by layer in order, channels chosen by "
                             "elimination on the refitted objective and every consumer refit by ridge least squares "
                             "from the specialist's own activations to the original network's, on calibration "
                             "images of the target classes (100 per class)"},
}


def graph_method(name: str | None, compensation: str | None = None, fold: str | None = None,
                 impact: str | None = None, multiple_of: int | None = None,
                 calib_per_class: int | None = None) -> GraphMethod:
    """A preset (:data:`GRAPH_METHODS`, or ``recon``) or TOML method file by name, with overrides (``multiple_of``:
    kept channel counts rounded to multiples, within the level's budget; ``calib_per_class``: calibration images
    per class of ``recon``); one-line UsageError else."""
    name = name or GRAPH_DEFAULT_METHOD
    m = GRAPH_METHODS.get(name)
    if m is None:
        try:
            m = from_method(get_method(name))
            m = dataclasses.replace(m, **GRAPH_CALIB_OVERRIDES.get(name, {}))
        except UsageError:
            raise UsageError(f"unknown method {name!r}; supported on graph models: {', '.join(GRAPH_METHODS)}, "
                             "recon (or a .toml file)") from None
    if m.criterion not in GRAPH_SCORES:
        raise UsageError(f"method {name!r}: score {m.criterion!r} is not one of {', '.join(GRAPH_SCORES)}")
    if m.allocation not in GRAPH_ALLOCATIONS:
        raise UsageError(f"method {name!r}: allocation {m.allocation!r} is not one of "
                         f"{', '.join(GRAPH_ALLOCATIONS)}")
    if compensation is not None and compensation not in COMPENSATIONS:
        raise UsageError(f"--compensation {compensation} is not supported on graph models; supported: "
                         f"{', '.join(COMPENSATIONS)}")
    if m.compensation not in COMPENSATIONS:
        raise UsageError(f"method {name!r}: compensation {m.compensation!r} is not one of "
                         f"{', '.join(COMPENSATIONS)}")
    if multiple_of is not None and not (isinstance(multiple_of, int) and multiple_of >= 1):
        raise UsageError(f"--multiple-of must be a positive integer, got {multiple_of!r}")
    if calib_per_class is not None and not (isinstance(calib_per_class, int) and calib_per_class >= 1):
        raise UsageError(f"--calib-per-class must be a positive integer, got {calib_per_class!r}")
    changes = {k: v for k, v in (("compensation", compensation), ("fold", fold), ("impact", impact),
                                 ("multiple_of", multiple_of), ("calib_per_class", calib_per_class)) if v}
    return dataclasses.replace(m, **changes) if changes else m


# --------------------------------------------------------------------------- scores


@dataclass
class ScoreCtx:
    """What a score function may read; ``curves`` collects reconstruction-error paths computed on the way."""

    graph: ChannelGraph
    stats: GraphStats | None
    classes: list[int]
    method: GraphMethod
    curves: dict[str, np.ndarray] = field(default_factory=dict)

    def need_stats(self) -> GraphStats:
        if self.stats is None:
            raise UsageError(f"method {self.method.name!r} needs a statistics artifact")
        return self.stats


ScoreFn = Callable[[ScoreCtx, ChannelGroup], np.ndarray]
GRAPH_SCORES: dict[str, ScoreFn] = {}


def register_score(*names: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: add a group score function to :data:`GRAPH_SCORES`."""

    def add(fn: ScoreFn) -> ScoreFn:
        for n in names:
            GRAPH_SCORES[n] = fn
        return fn

    return add


def _criterion(name: str) -> ScoreFn:
    def fn(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
        return CRITERIA[name](ctx.graph, ctx.stats, g, ctx.classes)
    fn.__doc__ = f"the {name!r} criterion of specialist.graph.stats"
    return fn


for _name in CRITERIA:
    register_score(_name)(_criterion(_name))


def _impacts(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    return np.asarray(ctx.need_stats().impacts(ctx.method.impact)[g.root])[ctx.classes].T  # [size, |Y|]


@register_score("impact")
def impact_score(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    """Paper 4.2.2: the max over target classes of the signed impact (``method.impact``: fd or grad)."""
    return select.paper_scores(_impacts(ctx, g))


@register_score("impact_abs")
def impact_abs_score(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    """The max over target classes of the impact's magnitude."""
    return select.abs_scores(_impacts(ctx, g))


@register_score("captor")
def captor_score(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    """CAPTOR: channels clustered by class preference (autograd impacts on every class)."""
    imp = np.asarray(ctx.need_stats().impacts("grad")[g.root]).T  # [size, K]
    return captor_scores(imp, ctx.classes)


def _terms(ctx: ScoreCtx, g: ChannelGroup, centred: bool) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """Per consumer of ``g`` with statistics: (covariance or raw second moments of the group's inputs,
    Wf rows of those inputs, per group channel the positions of its inputs among them)."""
    st = ctx.need_stats()
    out = []
    for c in g.consumers:
        if c.module not in st.gram:
            continue
        rows = list(c.in_idx)
        full = (position_cov(st, c.module, ctx.classes) if centred
                else st.subset(st.gram, c.module, ctx.classes)).numpy()
        wf = consumer_matrix(ctx.graph.modules[c.module], c.module, ctx.graph, ctx.classes).numpy()
        units: list[list[int]] = [[] for _ in range(g.size)]
        for pos, r in enumerate(c.root_idx):
            units[r].append(pos)
        out.append((full[np.ix_(rows, rows)], wf[rows], units))
    if not out:
        raise UsageError(f"group {g.root!r} has no consumer with second moments (recompute the artifact)")
    return out


@register_score("thinet")
def thinet_score(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    """ThiNet: the greedy order that keeps every consumer's output best (raw second moments)."""
    q = np.zeros((g.size, g.size))
    for gram, wf, units in _terms(ctx, g, centred=False):
        m = np.zeros((len(wf), g.size))
        for j, pos in enumerate(units):
            m[pos, j] = 1.0
        q += m.T @ (gram * (wf @ wf.T)) @ m
    return select.scores_from_order(greedy_order(q))


@register_score("recon")
def recon_score(ctx: ScoreCtx, g: ChannelGroup) -> np.ndarray:
    """Reconstruction-greedy: the elimination order of least consumer error (its error curve is kept)."""
    order, curve = joint_elimination(_terms(ctx, g, centred=True), g.size, ctx.method.ridge)
    ctx.curves[g.root] = curve
    return select.scores_from_order(order)


def joint_elimination(terms, size: int, ridge: float = 1e-2,
                      order: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`specialist.allocation.elimination_path` summed over a group's consumers: ``(order, error)`` where
    removing ``order[:n+1]`` leaves ``error[n]``, the **sum over the consumers of each consumer's relative**
    ridge least-squares error of reconstructing its pre-activations from the kept channels (a channel may be
    several inputs of a consumer, e.g. flatten -> Linear: then it leaves as a block).

    Each consumer is normalised by its own output energy before summing (its ``Wf`` scaled by
    ``1 / sqrt(tr(Wf^T C Wf))``), so every layer a group feeds counts as one layer damaged: a residual stream
    read by three convolutions and the classifier costs the damage done to each of them.  Normalising the
    sum by the summed energy instead (an energy-weighted *average*) let the consumer with the largest
    outputs hide the others' errors, and the global allocation then cut ResNet-20's last residual stream
    by 55 % at level 10 (docs/anycnn.md, ``best``)."""
    states = []
    total = explained = 0.0
    for cov, wf, units in terms:
        lam = ridge_lambda(cov, ridge)
        p = np.linalg.inv(cov + lam * np.eye(len(cov)))
        b = cov @ wf
        tot = float(np.sum(wf * b))
        if tot <= 0:
            continue
        state, b = elimination_state(p, b / np.sqrt(tot), units)  # this consumer's relative error (docstring)
        states.append(state)
        total += 1.0
        explained += float(np.sum(b * state[1]))
    removed = np.empty(size, np.int64)
    errs = np.ones(size)
    if total <= 0:
        return (np.arange(size) if order is None else np.asarray(order, np.int64)), np.zeros(size)
    alive = np.ones(size, bool)
    for step in range(size):
        j = int(np.argmin(elimination_drops(states, alive))) if order is None else int(order[step])
        for lost in eliminate(states, j):
            explained -= lost
        removed[step] = j
        alive[j] = False
        errs[step] = max(0.0, total - explained)
    return removed, errs


def elimination_state(p: np.ndarray, b: np.ndarray, units) -> tuple[list, np.ndarray]:
    """One consumer's state for a backward elimination: ``[P, P B, units, pos]`` with ``P = (G + lam)^-1``,
    ``B`` reduced to a square factor of ``B B^T`` where it is wider (only ``B B^T`` matters: exact), ``units``
    the inputs of each group channel and ``pos`` their positions when each channel is one input (else None).
    Returns the state and the (reduced) ``B``."""
    if b.shape[1] > len(p):
        vals, vecs = np.linalg.eigh(b @ b.T)
        b = vecs * np.sqrt(np.maximum(vals, 0.0))[None, :]
    single = all(len(u) <= 1 for u in units)
    pos = np.asarray([u[0] if u else -1 for u in units], np.int64) if single else None
    return [p, p @ b, units, pos], b


def elimination_drops(states, alive: np.ndarray) -> np.ndarray:
    """Per group channel, the explained objective its removal loses, summed over the consumers' states
    (infinite for channels already removed)."""
    drop = np.zeros(len(alive))
    for p, pb, units, pos in states:
        if pos is not None:  # one input per channel: the loss of each is one row of P B over P's diagonal
            ok = (pos >= 0) & alive
            at = np.maximum(pos, 0)
            drop += np.where(ok, np.sum(pb[at] ** 2, 1) / np.where(ok, np.diag(p)[at], 1.0), 0.0)
            continue
        for j in np.flatnonzero(alive):
            s = units[j]
            if s:
                drop[j] += float(np.sum(pb[s] * np.linalg.solve(p[np.ix_(s, s)], pb[s])))
    drop[~alive] = np.inf
    return drop


def eliminate(states, j: int) -> list[float]:
    """Remove group channel ``j`` from every state in place (a rank-|inputs| downdate of P and P B); returns
    the explained objective each consumer lost."""
    lost = []
    for state in states:
        p, pb, units, _ = state
        s = units[j]
        if not s:
            continue
        inv = np.linalg.inv(p[np.ix_(s, s)])
        lost.append(float(np.sum(pb[s] * (inv @ pb[s]))))
        col = p[:, s].copy()
        pb -= col @ (inv @ pb[s])
        p -= col @ inv @ col.T
    return lost


AllocFn = Callable[[ScoreCtx, dict[str, np.ndarray], float], dict[str, int]]


def _alloc_uniform(ctx: ScoreCtx, orders: dict[str, np.ndarray], level: float) -> dict[str, int]:
    m = ctx.method.multiple_of
    counts = uniform_counts(ctx.graph, level, m)
    if m <= 1 or level <= 0:
        return counts
    model = flop_model(ctx.graph, len(ctx.classes))
    target = model.flops(model.vector(uniform_counts(ctx.graph, level)))  # the level's budget
    return fit_budget(model, counts, {g.root: g.size for g in ctx.graph.prunable}, target, m)


def _alloc_global(ctx: ScoreCtx, orders: dict[str, np.ndarray], level: float) -> dict[str, int]:
    uniform = uniform_counts(ctx.graph, level, ctx.method.multiple_of)
    if level <= 0:
        return uniform
    model = flop_model(ctx.graph, len(ctx.classes))
    curves, steps, caps, start = {}, {}, {}, {}
    for g in ctx.graph.prunable:
        if g.root not in ctx.curves:
            _, ctx.curves[g.root] = joint_elimination(_terms(ctx, g, centred=True), g.size, ctx.method.ridge,
                                                      order=orders[g.root])
        curves[g.root] = ctx.curves[g.root]
        m = max(1, ctx.method.multiple_of)
        steps[g.root] = m * max(1, g.size // 64)
        start[g.root] = g.size % m if g.size > m else 0  # kept counts stay multiples of m
        caps[g.root] = min(g.size - steps[g.root], int(g.size * ctx.method.max_remove_pct / 100.0))
    target = model.flops(model.vector(uniform_counts(ctx.graph, level)))  # the level's budget (any multiple_of)
    return allocate_global(curves, model, target, steps, caps, dict(ctx.method.layer_weights), start)


#: Allocation by name (``method.allocation``): channels removed per prunable group.
GRAPH_ALLOCATIONS: dict[str, AllocFn] = {"uniform": _alloc_uniform, "global": _alloc_global}


def plan_keep(graph: ChannelGraph, stats: GraphStats | None, classes: Sequence[int], level: float,
              method: GraphMethod) -> dict[str, list[int]]:
    """Kept channels per prunable group (root -> sorted indices): scores decide which, the allocation how many."""
    if not 0 <= level < 100:
        raise UsageError(f"level must be in [0, 100), got {level}")
    ctx = ScoreCtx(graph, stats, sorted(int(c) for c in classes), method)
    orders = {g.root: select.order_from_scores(np.asarray(GRAPH_SCORES[method.criterion](ctx, g), np.float64))
              for g in graph.prunable}
    counts = GRAPH_ALLOCATIONS[method.allocation](ctx, orders, level)
    return {g.root: sorted(int(i) for i in orders[g.root][counts.get(g.root, 0):]) for g in graph.prunable}


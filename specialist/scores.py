"""Channel scores by name: a registry of small functions (as Torch-Pruning's importance criteria).

A method's ``score`` names one entry of :data:`SCORES`.  Each entry takes a :class:`ScoreInput` (one prunable
layer, the method, the base model and the subset's statistics) and returns one score per output channel of
that layer: higher = keep.  Add a criterion with ``@register_score("name")``; the method validation and the
builder see it at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specialist import select
from specialist.allocation import EliminationPath, next_layer_factor, next_layer_matrix
from specialist.captor import captor_scores
from specialist.model import LAYER_NAMES, NinWeights
from specialist.stats import SubsetStats
from specialist.thinet import contribution_gram, greedy_order


def next_weights(base: NinWeights, L: str, classes) -> tuple[np.ndarray, np.ndarray | None]:
    """The next layer's full weights after L and the weight of each of its outputs in reconstruction
    objectives (CCCP6: only the target classes count; elsewhere all outputs equally)."""
    nxt = LAYER_NAMES[LAYER_NAMES.index(L) + 1]
    w = base.weights[nxt]
    if nxt == LAYER_NAMES[-1]:
        ow = np.zeros(w.shape[0])
        ow[np.asarray(classes, np.int64)] = 1.0
        return w, ow
    return w, None


def layer_cov(st: SubsetStats, L: str) -> np.ndarray:
    """Covariance of layer L's output around its per-position mean (target classes; made once per subset)."""
    return st.cov(L)


@dataclass(frozen=True)
class ScoreInput:
    """What a score function may read about one prunable layer."""

    layer: str
    method: Any  # specialist.methods.Method (which validates its names against this registry)
    base: NinWeights
    stats: SubsetStats
    classes: Sequence[int]
    #: gradient impacts on all ten classes per layer (CAPTOR's class preferences), when the whole artifact is at hand
    impact_all: dict[str, np.ndarray] | None = None
    #: filled with the reconstruction-error curve a score computes anyway (reused by global allocation)
    curves: dict[str, np.ndarray] | None = None

    def next_matrix(self) -> np.ndarray:
        """The next layer as a matrix over this layer's channels (CCCP6: target classes only)."""
        return next_layer_matrix(*next_weights(self.base, self.layer, self.classes))

    def next_factor(self) -> np.ndarray:
        """A [C, <= C] factor of :meth:`next_matrix`'s Gram matrix (memoised per base layer)."""
        return next_layer_factor(*next_weights(self.base, self.layer, self.classes))


ScoreFn = Callable[[ScoreInput], np.ndarray]
SCORES: dict[str, ScoreFn] = {}


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: add a score function to :data:`SCORES` under ``name``."""

    def add(fn: ScoreFn) -> ScoreFn:
        SCORES[name] = fn
        return fn

    return add


@register_score("impact")
def impact_score(s: ScoreInput) -> np.ndarray:
    """Paper 4.2.2: the max over target classes of the signed impact."""
    return select.paper_scores(s.stats.impacts(s.method.impact)[s.layer])


@register_score("impact_abs")
def impact_abs_score(s: ScoreInput) -> np.ndarray:
    """The max over target classes of the impact's magnitude."""
    return select.abs_scores(s.stats.impacts(s.method.impact)[s.layer])


@register_score("l1")
def l1_score(s: ScoreInput) -> np.ndarray:
    """Li et al.: the L1 norm of each filter."""
    return select.l1_scores(s.base.weights[s.layer])


@register_score("variance")
def variance_score(s: ScoreInput) -> np.ndarray:
    """Polyak & Wolf: activation variance on the target classes."""
    return select.variance_scores(s.stats.gram[s.layer], s.stats.mean[s.layer])


@register_score("thinet")
def thinet_score(s: ScoreInput) -> np.ndarray:
    """ThiNet: greedy order that keeps the next layer's output best (raw second moments)."""
    return select.scores_from_order(greedy_order(contribution_gram(s.stats.gram[s.layer], s.next_matrix())))


@register_score("captor")
def captor_score(s: ScoreInput) -> np.ndarray:
    """CAPTOR: filters clustered by class preference; with statistics of one subset only, preferences over the
    target classes."""
    imp = s.impact_all.get(s.layer) if s.impact_all else None
    if imp is None:
        imp = s.stats.impact_grad[s.layer]
        return captor_scores(imp, range(imp.shape[1]))
    return captor_scores(imp, s.classes)


@register_score("recon")
def recon_score(s: ScoreInput) -> np.ndarray:
    """Reconstruction-greedy: the elimination order of least next-layer error (its error curve is kept).

    Under the global allocation the curve kept is the lazy :class:`specialist.allocation.EliminationPath`:
    the allocation makes only the steps it reads (and takes the channels removed from the path itself), so
    the scores returned then rank the steps made so far first and the rest by the cost of removing each
    one next.
    """
    m = s.method
    path = EliminationPath(layer_cov(s.stats, s.layer), s.next_factor(), m.ridge)
    if m.allocation == "global" and s.curves is not None:
        s.curves[s.layer] = path
    else:
        path.extend(len(path))
        if s.curves is not None:
            s.curves[s.layer] = path.result()[1]
    return select.scores_from_order(path.result()[0])

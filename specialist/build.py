"""Build a specialist: select channels per layer, compensate, and cut a physically smaller network."""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from specialist import select
from specialist.compensate import COMPENSATIONS, ROWWISE
from specialist.errors import ArtifactError, UsageError
from specialist.flops import BASE_FLOPS, layer_costs
from specialist.methods import DEFAULT_METHOD, Method, get_method, validate_method
from specialist.model import LAYER_NAMES, NIN_LAYERS, PRUNABLE, NinWeights, load_weights
from specialist.plans import ALLOCATIONS, plan_global, plan_uniform  # noqa: F401 (re-exported)
from specialist.scores import SCORES, ScoreInput, next_weights
from specialist.stats import CalibStats, LayerMap, SubsetStats, default_stats_path, load_stats


@dataclass
class Specialist:
    """A physically smaller NIN for a class subset, with the plan that made it."""

    weights: NinWeights
    classes: list[int]
    level: float
    method: Method
    kept: dict[str, list[int]]  # kept output channel indices per layer (CCCP6: the target classes)
    flops_base: int
    flops: int
    layers: list[dict]
    hashes: dict[str, str] = field(default_factory=dict)
    build_ms: float = 0.0

    @property
    def flops_pruned_pct(self) -> float:
        return 100.0 * (1.0 - self.flops / self.flops_base)

    def summary(self) -> dict:
        return {
            "classes": self.classes, "level": self.level, "method": self.method.name,
            "compensation": self.method.compensation, "impact": self.method.impact, "fold": self.method.fold,
            "flops_base": self.flops_base, "flops": self.flops,
            "flops_pruned_pct": round(self.flops_pruned_pct, 3),
            "layers": self.layers, "build_ms": round(self.build_ms, 3), "hashes": self.hashes,
            "extra_nodes": len(self.weights.consts),
        }


def channel_scores(method: Method, base: NinWeights, st: SubsetStats, classes=None,
                   impact_all: dict[str, np.ndarray] | None = None,
                   curves_out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per prunable layer, one score per output channel (higher = keep): ``method.score`` from
    :data:`specialist.scores.SCORES`.

    ``impact_all``: gradient impacts on all ten classes per layer (CAPTOR's class preferences; without
    them CAPTOR clusters by preference over the target classes only).  ``curves_out``: filled with the
    reconstruction-error curves the ``recon`` score computes anyway (reused by global allocation).
    """
    classes = st.classes if classes is None else classes
    score = SCORES.get(method.score)
    if score is None:
        raise ArtifactError(f"unknown score {method.score!r}; known: {', '.join(SCORES)}")
    return {L: score(ScoreInput(L, method, base, st, classes, impact_all, curves_out)) for L in PRUNABLE}


def subset_arrays(st: SubsetStats, L: str, base: NinWeights | None = None, classes=None,
                  method: Method | None = None) -> dict:
    """What a compensation function may read about layer L (statistics; own filters; output weights): a
    mapping whose entries are made when first read (a compensation reads a few of them)."""
    make = {"mean": lambda: st.mean[L], "corr": lambda: st.corr[L], "gram": lambda: st.gram[L],
            "cand": lambda: st.cand.get(L), "xcorr": lambda: st.xcorr.get(L), "acorr": lambda: st.acorr.get(L),
            "cov": lambda: st.cov(L)}
    if base is not None:
        make["w_self"], make["b_self"] = (lambda: base.weights[L]), (lambda: base.biases[L])
        make["out_weight"] = lambda: next_weights(base, L, st.classes if classes is None else classes)[1]
    if method is not None:
        make["merge_threshold"] = lambda: method.merge_threshold
    return LayerMap(lambda k: make[k](), make)


def apply_plan(base: NinWeights, classes: list[int], pruned: dict[str, np.ndarray], st: SubsetStats,
               method: Method) -> tuple[NinWeights, dict[str, list[int]]]:
    """Model surgery: compensate each pruned layer into its successor and slice every layer.

    Row-wise compensations (:data:`specialist.compensate.ROWWISE`) see only the next layer's kept output
    channels (the same numbers for those rows, less work)."""
    comp = COMPENSATIONS[method.compensation]
    rowwise = method.compensation in ROWWISE
    kept = {L: select.kept_from_pruned(base.weights[L].shape[0], pruned.get(L, np.zeros(0, int)))
            for L in LAYER_NAMES}
    kept["CCCP6"] = np.asarray(classes)
    w64 = _weights64(base)
    new_w, new_b, consts = {}, {}, {}
    for i, spec in enumerate(NIN_LAYERS):
        rows = kept[spec.name]
        w = w64[spec.name]
        b = base.biases[spec.name].astype(np.float64)
        const = None
        prev = NIN_LAYERS[i - 1].name if i > 0 else None
        if prev in PRUNABLE:
            w_in, b = (w[rows], b[rows]) if rowwise else (w, b)
            w, delta, const = comp(w_in, kept[prev], pruned[prev], subset_arrays(st, prev, base, classes, method),
                                   spec.padding, fold=method.fold, threshold=method.corr_threshold,
                                   ridge=method.ridge)
            b = b + delta
            if not rowwise:
                w, b, const = w[rows], b[rows], (None if const is None else const[rows])
        else:
            w, b = w[rows], b[rows]
        new_w[spec.name] = np.ascontiguousarray(w, dtype=np.float32)
        new_b[spec.name] = b.astype(np.float32)
        if const is not None:
            consts[spec.name] = np.ascontiguousarray(const, dtype=np.float32)
    w_out = NinWeights(new_w, new_b, base.input_mean.copy(), base.input_std.copy(), consts, base.source)
    return w_out, {L: [int(v) for v in kept[L]] for L in LAYER_NAMES}


_W64: dict[int, tuple[weakref.ref, dict[str, np.ndarray]]] = {}


def _weights64(base: NinWeights) -> dict[str, np.ndarray]:
    """The base weights as float64 (read-only; converted once per weights object: base weights are never
    modified in place)."""
    key = id(base)
    hit = _W64.get(key)
    if hit is not None and hit[0]() is base:
        return hit[1]
    out = {}
    for name, w in base.weights.items():
        out[name] = w.astype(np.float64)
        out[name].flags.writeable = False
    _W64[key] = (weakref.ref(base, lambda _r, k=key: _W64.pop(k, None)), out)
    return out


def with_overrides(method: Method, overrides: dict[str, Any]) -> Method:
    """``method`` with the given fields replaced (None values ignored), validated; unknown fields refused."""
    known = {f.name for f in dataclasses.fields(Method)}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise UsageError(f"unknown method field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    m = method.replace(**overrides)
    validate_method(m)
    return m


_STATS_CACHE: dict[str, CalibStats] = {}


def load_default_stats(base: NinWeights, stats_path=None) -> CalibStats:
    """The artifact for ``base``: the given path, or the one shipped for the default model (cached)."""
    path = str(stats_path or default_stats_path())
    key = f"{path}:{base.content_hash()}"
    if key not in _STATS_CACHE:
        _STATS_CACHE[key] = load_stats(path, expect_model_hash=base.content_hash())
    return _STATS_CACHE[key]


_SCORES_CACHE: OrderedDict[tuple, tuple[SubsetStats, dict[str, np.ndarray], dict[str, np.ndarray]]] = OrderedDict()
_SCORES_CACHE_SIZE = 16


def _subset_scores(m: Method, base: NinWeights, stats: CalibStats | SubsetStats, classes: list[int]
                   ) -> tuple[SubsetStats, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The subset's statistics, channel scores and error curves: none depends on the level, so builds of one
    class subset at several levels (a sweep row, ``harness run --levels``) compute them once.  Memoised
    (least recently used, 16 entries) for artifacts loaded from a file, keyed by the artifact's sha256, the
    base model's hash, the classes and the method; the cached arrays are read-only.  The ``recon`` score's lazy
    elimination paths are cached with them and grow as later builds read further (at most ~4 MB per subset for
    NIN, beside ~4 MB of subset moments)."""
    sha = stats.meta.get("sha256") if isinstance(stats, CalibStats) else None
    key = (sha, base.content_hash(), tuple(classes), m) if sha else None
    if key is not None and key in _SCORES_CACHE:
        _SCORES_CACHE.move_to_end(key)
        return _SCORES_CACHE[key]
    sub = stats.subset(classes) if isinstance(stats, CalibStats) else stats
    curves: dict[str, np.ndarray] = {}
    scores = channel_scores(m, base, sub, classes,
                            stats.impact_grad if isinstance(stats, CalibStats) else None, curves)
    if key is not None:
        for a in (*scores.values(), *curves.values()):
            if isinstance(a, np.ndarray):  # (a lazy elimination path grows as later builds read it)
                a.flags.writeable = False
        _SCORES_CACHE[key] = (sub, scores, curves)
        while len(_SCORES_CACHE) > _SCORES_CACHE_SIZE:
            _SCORES_CACHE.popitem(last=False)
    return sub, scores, curves


_BLAS: list[ThreadpoolController] = []


def _blas_controller() -> ThreadpoolController:
    """One threadpoolctl controller per process (finding the BLAS libraries costs ~2 ms a call)."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0]


def build_specialist(classes, level: float, method: str | Method = DEFAULT_METHOD, *,
                     stats: CalibStats | SubsetStats | None = None, base: NinWeights | None = None,
                     stats_path=None, calib=None, **overrides: Any) -> Specialist:
    """Build a specialist for ``classes`` with ``level`` percent of channels removed (paper sections 4-5).

    The one way to build from options: ``method`` is a preset name, a TOML file or a :class:`Method`;
    ``overrides`` replace its fields (``compensation``, ``impact``, ``fold``, ``multiple_of``, ...; None
    keeps the method's).  Needs only the statistics artifact: ``stats``, or loaded from ``stats_path``
    (default: the one shipped for the default model; checked against ``base`` and cached).  Methods with
    ``calib_per_class`` (``recon``) also read calibration images: ``calib`` (a Split or data directory; default
    as :func:`specialist.data.resolve_data_dir`).
    """
    t0 = time.perf_counter()
    classes = select.check_classes(classes)
    level = select.check_level(level)
    m = with_overrides(get_method(method) if isinstance(method, str) else method, overrides)
    base = base if base is not None else load_weights()
    if stats is None:
        stats = load_default_stats(base, stats_path)
    if isinstance(stats, CalibStats) and stats.model_hash != base.content_hash():
        raise ArtifactError("the statistics artifact was made from another base model; "
                            "run 'harness stats --model M' for this model")
    # The linear algebra here is many small (<= 192 x 192) products and a sequential elimination: one BLAS
    # thread is faster than several, and on a busy machine several threads make a build 5-8x slower.
    with _blas_controller().limit(limits=1, user_api="blas"):
        sub, scores, curves = _subset_scores(m, base, stats, classes)
        pruned = ALLOCATIONS[m.allocation](m, base, sub, scores, level, classes, dict(curves))
        if m.calib_per_class and level > 0:  # sequential reconstruction: the same counts, refit on images
            from specialist.recon import build_reconstructed

            weights, kept = build_reconstructed(base, classes, pruned, m, calib,
                                                fallback=lambda: apply_plan(base, classes, pruned, sub, m))
        else:
            weights, kept = apply_plan(base, classes, pruned, sub, m)
    costs = layer_costs(weights.channels())
    spec = Specialist(
        weights=weights, classes=classes, level=level, method=m, kept=kept, flops_base=BASE_FLOPS,
        flops=sum(c.flops_after for c in costs),
        layers=[{"name": c.name, "maps_before": c.maps_before, "maps_after": c.maps_after,
                 "flops_before": c.flops_before, "flops_after": c.flops_after,
                 "params_after": c.params_after} for c in costs],
        hashes={"base_model": base.content_hash(),
                "stats": (stats.meta.get("sha256", "") if isinstance(stats, CalibStats) else "")},
    )
    spec.hashes["specialist"] = weights.content_hash()
    spec.build_ms = 1000 * (time.perf_counter() - t0)
    return spec

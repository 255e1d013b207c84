"""Named method presets: what scores channels, how many per layer, and how pruned channels are compensated."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from specialist.errors import UsageError


@dataclass(frozen=True)
class Method:
    """A specialist-building recipe.  Loadable from TOML (``[method]`` table with these field names)."""

    name: str
    description: str
    impact: str = "fd"  # fd | grad: which stored impact table the impact scores use
    # impact (paper: max signed impact) | impact_abs | l1 | variance | thinet | captor | recon
    score: str = "impact"
    compensation: str = "auto"  # none | mean | correlated | auto | lsq | scale | merge
    fold: str = "exact"  # exact (per-position constant, one add node) | bias (folded into the bias)
    corr_threshold: float = 0.5  # paper 4.3.3 heuristic threshold
    ridge: float = 1e-2
    # uniform: the level's share in every prunable layer; global: the same FLOPs spent across layers
    allocation: str = "uniform"
    multiple_of: int = 1  # round kept channel counts to a multiple (XNNPACK-friendly widths)
    max_remove_pct: float = 90.0  # global allocation: at most this share of any one layer
    layer_weights: tuple = ()  # global allocation: ((layer, weight), ...) on the layers' error curves
    merge_threshold: float = 0.0  # merge: cosine similarity below which a pruned filter is just dropped
    # > 0: sequential reconstruction on this many calibration images per target class (specialist.recon)
    calib_per_class: int = 0

    def replace(self, **changes) -> Method:
        clean = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **clean) if clean else self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("paper", "Guo & Potkonjak 2017 as published: finite-difference impacts, max over target classes, "
               "uniform per-layer percentile, correlated-or-mean heuristic with per-position mean constants"),
        Method("paper-grad", "the paper's method with exact autograd impacts instead of finite differences",
               impact="grad"),
        Method("mean", "paper selection, every pruned channel compensated by its mean (bias-folded)",
               compensation="mean", fold="bias"),
        Method("lsq", "paper selection; pruned channels reconstructed from all kept channels by ridge least "
               "squares plus per-position means, folded into the next layer", impact="grad",
               compensation="lsq", fold="exact"),
        Method("l1", "Li et al.: smallest filter L1 norms pruned, mean compensation", score="l1",
               compensation="mean", fold="bias"),
        Method("variance", "Polyak & Wolf: lowest activation variance pruned, mean compensation",
               score="variance", compensation="mean", fold="bias"),
        Method("thinet", "ThiNet seed: greedy selection minimising the next layer's reconstruction error, "
               "least-squares scales of the kept channels (both from the artifact's second moments)",
               impact="grad", score="thinet", compensation="scale", fold="bias"),
        Method("captor", "CAPTOR seed: filters clustered by class preference (gradient x activation per "
               "class); clusters that prefer other classes pruned first; mean compensation",
               impact="grad", score="captor", compensation="mean", fold="bias"),
        Method("merge", "Neuron Merging (data-free): smallest L1 filters pruned, each merged into its most "
               "similar kept filter (cosine), scale folded into the next layer", impact="grad", score="l1",
               compensation="merge", fold="bias"),
        Method("best", "reconstruction-greedy selection, least squares from all kept channels with "
               "per-position means (exact fold), global allocation of the uniform plan's FLOPs by "
               "normalised reconstruction error (at most 60% of a layer); artifact only", impact="grad",
               score="recon", compensation="lsq", fold="exact", allocation="global", max_remove_pct=60.0),
        Method("best-x16", "best with every kept channel count a multiple of 16 (the widths XNNPACK runs at full "
               "speed, docs/export.md): turns FLOPs saved into time saved; lands at or below the FLOPs budget",
               impact="grad", score="recon", compensation="lsq", fold="exact", allocation="global",
               max_remove_pct=60.0, multiple_of=16),
        Method("recon", "best's allocation with at most 40% of a layer's channels removed and CCCP5's error "
               "curve weighted 0.4 (same FLOPs); then layer by layer in order, channels chosen by "
               "elimination on the refitted objective and every consumer refit by ridge least squares from the "
               "specialist's own activations to the original network's, on calibration images of the target "
               "classes (200 per class and their mirror images), kept only where closer to the original class scores "
               "on them than best", impact="grad", score="recon", compensation="lsq", fold="exact",
               allocation="global", max_remove_pct=40.0, calib_per_class=200, layer_weights=(("CCCP5", 0.4),)),
    )
}
#: ``best`` beat ``paper`` in every cell measured (docs/methods.md); ``best-x16`` is ``best`` with the widths XNNPACK
#: runs at full speed, within the same FLOPs budget and as accurate (docs/methods.md), so it is the default of every
#: command.
DEFAULT_METHOD = "best-x16"
IMPACTS = ("fd", "grad")
FOLDS = ("exact", "bias")


def choices() -> dict[str, tuple[str, ...]]:
    """The names each named field of a :class:`Method` accepts: impacts and folds, and the keys of the
    registries the builder dispatches through (scores, compensations, allocations)."""
    from specialist.compensate import COMPENSATIONS
    from specialist.plans import ALLOCATIONS
    from specialist.scores import SCORES

    return {"impact": IMPACTS, "compensation": tuple(COMPENSATIONS), "fold": FOLDS, "score": tuple(SCORES),
            "allocation": tuple(ALLOCATIONS)}


def get_method(name: str) -> Method:
    """A preset by name, or a TOML file path; unknown names list the known ones."""
    if name in PRESETS:
        return PRESETS[name]
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return load_method_toml(p)
    raise UsageError(f"unknown method {name!r}; known: {', '.join(PRESETS)} (or a .toml file)")


def load_method_toml(path: Path) -> Method:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"method file {path}: not valid TOML ({exc})") from None
    table = data.get("method", data)
    base = PRESETS.get(table.get("base", DEFAULT_METHOD), PRESETS[DEFAULT_METHOD])
    fields = {f.name for f in dataclasses.fields(Method)}
    unknown = [k for k in table if k not in fields and k != "base"]
    if unknown:
        raise UsageError(f"method file {path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    vals = {k: v for k, v in table.items() if k in fields}
    if isinstance(vals.get("layer_weights"), dict):
        vals["layer_weights"] = tuple(sorted((str(k), float(v)) for k, v in vals["layer_weights"].items()))
    m = dataclasses.replace(base, **vals)
    validate_method(m, str(path))
    return m


def validate_method(m: Method, where: str = "method") -> None:
    for name, known in choices().items():
        value = getattr(m, name)
        if value not in known:
            raise UsageError(f"{where}: {name} {value!r} is not one of {', '.join(known)}")
    if not (isinstance(m.multiple_of, int) and m.multiple_of >= 1):
        raise UsageError(f"{where}: multiple_of must be a positive integer")
    if not (0 < m.max_remove_pct < 100):
        raise UsageError(f"{where}: max_remove_pct must be above 0 and below 100")
    if not (isinstance(m.calib_per_class, int) and m.calib_per_class >= 0):
        raise UsageError(f"{where}: calib_per_class must be a whole number >= 0")
    if m.ridge < 0:
        raise UsageError(f"{where}: ridge must not be negative")

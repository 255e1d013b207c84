"""Fast batched evaluation of many specialists on the same test images (the accuracy sweep's engine).

Every specialist keeps CONV1 and CCCP1 of its base model intact (paper 6.1), so they all see the same input
of CCCP2.  The engine therefore loops over image chunks outermost: per chunk it computes that shared prefix
once with the base model, then runs every specialist whose classes include the chunk's images from CCCP2 on
(:meth:`specialist.model.NinNet.forward_from`).  Only one chunk of CCCP1 outputs is alive at a time (the
whole test set's would be 6.5 GB).  A model whose first two layers differ from the base model's is run from
its input instead, so the result never depends on that assumption.

Images are grouped by class (chunks hold images of one class), so a model only ever sees its own classes.
Models given the same :class:`NinWeights` object (the unpruned column of many subsets) are run once per chunk.

Engines (every one gives the float32 arithmetic's correct counts, that of
:func:`specialist.accuracy.subset_accuracy`):

* ``torch``: the plain NCHW :class:`NinNet`.
* ``torch-cl``: the same modules and tensors in channels-last memory format (oneDNN's preferred layout;
  about 1.3x faster here).  Scores differ from ``torch`` by float rounding only (about 1e-6).
* ``bf16``: checked bfloat16.  Prefix and specialists run in bfloat16 channels-last (the last layer, CCCP6 and
  its global average pool, in float32: it is tiny, and bfloat16 scores would be rounded to 1/8 near 20);
  per model and image the margin between the winning column and the runner-up among the model's competing
  columns is compared with the model's threshold, and every image closer than that is evaluated again in
  float32 (the float32 prefix only for those images).  A margin above twice the largest score error cannot
  change the arg-max, so the counts are float32's.  The threshold of a model is the smaller of two bounds
  measured on the whole test set (docs/sweep.md, ``benchmarks/bench_bf16.py``), each with a safety factor:
  :data:`BF16_TAU`, from the largest error of any model measured, and :data:`BF16_REL` times the model's own
  largest error on a calibration batch (:data:`BF16_CALIB_IMAGES` of its images, all its classes), which
  follows the model's scale (``paper`` specialists' scores, and errors, are several times smaller).
  About 3-4x faster than ``torch-cl`` where the CPU computes bfloat16 natively (AVX512-BF16, AMX; Arm BF16).
* ``auto`` (the default): ``bf16`` where the CPU has native bfloat16 (:func:`native_bf16`), else ``torch-cl``.

ExecuTorch's XNNPACK runtime is faster per image, but needs one export per specialist (tens of seconds
each) and fixed batch-1 whole-network programs, so for a sweep of hundreds of specialists it loses; see
``benchmarks/bench_sweep.py`` for the measured figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from specialist.data import Split
from specialist.engines import (  # noqa: F401 (re-exported: the engines' names are part of this module's API)
    BF16_CALIB_IMAGES,
    BF16_REL,
    BF16_TAU,
    DEFAULT_ENGINE,
    ENGINE_SPECS,
    ENGINES,
    SHARED_LAYERS,
    EngineSpec,
    _as_engine,
    _Net,
    _prefix,
    calibration_rows,
    margins,
    native_bf16,
    resolve_engine,
)
from specialist.errors import UsageError
from specialist.model import N_CLASSES, NinWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate: engine, torch threads, images per chunk.  Loadable from TOML (``[eval]``)."""

    engine: str = DEFAULT_ENGINE
    threads: int = 0  # torch intra-op threads; 0 leaves torch's setting alone
    chunk_images: int = 32  # small chunks keep the 0.65 MB/image CCCP1 outputs in cache (measured faster)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise UsageError(f"threads must be a whole number >= 0, got {self.threads!r}")
        if not isinstance(self.chunk_images, int) or self.chunk_images < 1:
            raise UsageError(f"chunk_images must be a whole number >= 1, got {self.chunk_images!r}")


@dataclass
class EvalModel:
    """One model to evaluate.

    ``classes``: the classes whose images it is evaluated on.  ``columns``: which of its outputs compete in
    the argmax (default all); ``outputs``: the class each of those columns stands for (default: ``classes``
    sorted, a specialist's outputs in order).  The base model restricted to a subset S (the "None" column)
    is ``EvalModel(base, S, columns=S, outputs=S)``.
    """

    weights: NinWeights
    classes: Sequence[int]
    columns: Sequence[int] | None = None
    outputs: Sequence[int] | None = None

    def output_classes(self) -> np.ndarray:
        return np.asarray(sorted(self.classes) if self.outputs is None else list(self.outputs), np.int64)


@dataclass
class EvalResult:
    """Per model: correct answers and images per class (``[models, 10]``), and timing."""

    correct: np.ndarray  # int64 [models, 10]
    n: np.ndarray  # int64 [models, 10]
    seconds: float = 0.0
    image_evals: int = 0  # model x image evaluations performed
    prefix_images: int = 0  # images that went through the shared prefix
    engine: str = DEFAULT_ENGINE
    extra: dict = field(default_factory=dict)

    def accuracy(self) -> np.ndarray:
        """Accuracy per model in [0, 1] over all its images (NaN for a model with none)."""
        tot = self.n.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tot > 0, self.correct.sum(axis=1) / np.maximum(tot, 1), np.nan)


def shares_prefix(base: NinWeights, w: NinWeights) -> bool:
    """True when ``w`` computes exactly the base model's CONV1 and CCCP1 (so it can start at CCCP2)."""
    if w is base:
        return True
    for name in SHARED_LAYERS:
        if name in w.consts or name in base.consts:
            return False
        if w.weights[name].shape != base.weights[name].shape:
            return False
        if not (np.array_equal(w.weights[name], base.weights[name])
                and np.array_equal(w.biases[name], base.biases[name])):
            return False
    return True


def chunk_plan(y: np.ndarray, classes: Sequence[int], chunk_images: int) -> list[tuple[int, np.ndarray]]:
    """Split the rows of each class into chunks of at most ``chunk_images`` (class, row indices), in order."""
    out = []
    for c in sorted(set(int(v) for v in classes)):
        idx = np.flatnonzero(y == c)
        for i in range(0, len(idx), chunk_images):
            out.append((c, idx[i : i + chunk_images]))
    return out



@torch.no_grad()
def evaluate_models(base: NinWeights, models: Sequence[EvalModel], split: Split,
                    options: EvalOptions = EvalOptions(), tau: float | None = None) -> EvalResult:
    """Accuracy of every model on its classes' images in ``split`` (see the module docstring).

    ``split`` holds the images to use (already limited per class / to exact images by the caller).  ``tau``:
    one margin threshold for every model of a checked engine instead of the calibrated ones (tests force or
    skip the float32 path with it).  ``extra`` of the result, for a checked engine: ``rerun_images`` (images
    whose float32 prefix was computed again), ``rerun_evals`` (model x image evaluations redone in float32),
    ``calib_evals`` (model x image evaluations of the calibration batches, in both precisions) and
    ``tau_min``/``tau_max`` (the thresholds used).
    """
    t0 = time.perf_counter()
    engine = resolve_engine(options.engine)
    spec = ENGINE_SPECS[engine]
    if options.threads:
        torch.set_num_threads(options.threads)
    m = len(models)
    correct = np.zeros((m, N_CLASSES), np.int64)
    n = np.zeros((m, N_CLASSES), np.int64)
    extra = {"rerun_images": 0, "rerun_evals": 0, "calib_evals": 0} if spec.checked else {}
    if m == 0:
        return EvalResult(correct, n, engine=engine, extra=extra)
    base_net = _Net(base, spec, True)
    # One module per distinct weights object; models sharing weights share the forward pass.
    uniq: dict[int, int] = {}
    nets: list[_Net] = []
    model_net = np.zeros(m, np.int64)
    members = np.zeros((m, N_CLASSES), bool)
    for j, mod in enumerate(models):
        key = id(mod.weights)
        if key not in uniq:
            uniq[key] = len(nets)
            nets.append(base_net if mod.weights is base else _Net(mod.weights, spec, shares_prefix(base, mod.weights)))
        model_net[j] = uniq[key]
        members[j, np.asarray(list(mod.classes), np.int64)] = True
    cols = [None if mod.columns is None else torch.as_tensor(list(mod.columns), dtype=torch.long)
            for mod in models]
    outs = [mod.output_classes() for mod in models]
    needed = np.flatnonzero(members.any(axis=0))
    taus = np.zeros(len(nets))
    if spec.checked:
        for k, net in enumerate(nets):
            classes = np.flatnonzero(members[model_net == k].any(axis=0))
            taus[k] = float(tau) if tau is not None else net.threshold(base, split, classes, base_net)
            extra["calib_evals"] += 0 if tau is not None else len(calibration_rows(split.y, classes))
        extra.update(tau_min=float(taus.min()), tau_max=float(taus.max()))
    evals = prefix_images = 0
    for c, rows in chunk_plan(split.y, needed, options.chunk_images):
        x32 = _as_engine(torch.from_numpy(base.normalize(split.x[rows])), spec)
        x = x32 if spec.dtype == torch.float32 else x32.to(spec.dtype)
        users = np.flatnonzero(members[:, c])
        nets_here = np.unique(model_net[users])
        prefix = None
        if any(nets[k].from_prefix for k in nets_here):
            prefix = base_net.prefix(x)
            prefix_images += len(rows)
        scores = {}
        for k in nets_here:
            scores[k] = nets[k].scores(prefix if nets[k].from_prefix else x)
            evals += len(rows)
        picked = {j: scores[model_net[j]] if cols[j] is None else scores[model_net[j]].index_select(1, cols[j])
                  for j in users}
        if spec.checked:
            close = {}
            for j in users:
                k = model_net[j]
                lo = margins(picked[j]) < taus[k]
                close[k] = lo if k not in close else close[k] | lo
            if any(bool(v.any()) for v in close.values()):
                _recheck(nets, scores, close, x32, base_net, extra)
                picked = {j: scores[model_net[j]] if cols[j] is None
                          else scores[model_net[j]].index_select(1, cols[j]) for j in users}
        for j in users:
            pred = outs[j][picked[j].argmax(dim=1).numpy()]
            correct[j, c] += int((pred == c).sum())
            n[j, c] += len(rows)
    return EvalResult(correct, n, time.perf_counter() - t0, evals, prefix_images, engine, extra)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``x`` in ``x``'s memory format (index_select returns NCHW, and oneDNN then falls back to
    torch's slow convolution for float32 1x1 layers)."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else \
        torch.contiguous_format
    return x.index_select(0, idx).contiguous(memory_format=fmt)


def _recheck(nets: list[_Net], scores: dict, close: dict, x32: torch.Tensor, base_net: _Net, extra: dict) -> None:
    """Replace the scores of the close calls (``close[k]``: rows of net ``k``) by float32 scores, computing the
    float32 prefix once for the union of those rows."""
    union = torch.zeros_like(next(iter(close.values())))
    for k, rows in close.items():
        if nets[k].from_prefix:
            union |= rows
    idx = torch.nonzero(union).flatten()
    prefix32 = _prefix(base_net.net32, _rows(x32, idx)) if len(idx) else None
    pos = torch.full((len(union),), -1, dtype=torch.long)
    pos[idx] = torch.arange(len(idx))
    extra["rerun_images"] += len(idx)
    for k, rows in close.items():
        sel = torch.nonzero(rows).flatten()
        if not len(sel):
            continue
        inp = _rows(prefix32, pos[sel]) if nets[k].from_prefix else _rows(x32, sel)
        scores[k][sel] = nets[k].scores32(inp)
        extra["rerun_evals"] += len(sel)


@torch.no_grad()
def score_error(base: NinWeights, weights: Sequence[NinWeights], split: Split, engine: str = "bf16",
                chunk_images: int = 32) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per model: the largest |engine score - float32 score| over all images of ``split`` and all columns, the
    engine's margin (winner minus runner-up over all columns) of every image, and the largest error on the
    model's calibration batch (:func:`calibration_rows` of ``split``'s classes): the measurement behind
    :data:`BF16_TAU` and :data:`BF16_REL` (``benchmarks/bench_bf16.py``)."""
    spec = ENGINE_SPECS[resolve_engine(engine)]
    base_net = _Net(base, spec, True)
    nets = [base_net if w is base else _Net(w, spec, shares_prefix(base, w)) for w in weights]
    err = np.zeros(len(nets))
    marg: list[list[np.ndarray]] = [[] for _ in nets]
    for i in range(0, len(split.y), chunk_images):
        x32 = _as_engine(torch.from_numpy(base.normalize(split.x[i : i + chunk_images])), spec)
        x = x32 if spec.dtype == torch.float32 else x32.to(spec.dtype)
        p, p32 = base_net.prefix(x), _prefix(base_net.net32, x32)
        for k, net in enumerate(nets):
            s = net.scores(p if net.from_prefix else x)
            s32 = net.scores32(p32 if net.from_prefix else x32)
            err[k] = max(err[k], float((s - s32).abs().max()))
            marg[k].append(margins(s).numpy())
    rows = calibration_rows(split.y, np.unique(split.y))
    xc = _as_engine(torch.from_numpy(base.normalize(split.x[rows])), spec)
    calib = np.asarray([net.error(xc, base_net) for net in nets])
    return err, [np.concatenate(v) if v else np.zeros(0) for v in marg], calib

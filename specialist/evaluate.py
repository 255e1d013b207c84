"""Fast batched evaluation of many specialists on the same test images (the accuracy sweep's engine).

Every specialist keeps CONV1 and CCCP1 of its base model intact (paper 6.1), so they all see the same input
of CCCP2.  The engine therefore loops over image chunks outermost: per chunk it computes that shared prefix
once with the base model, then runs every specialist whose classes include the chunk's images from CCCP2 on
(:meth:`specialist.model.NinNet.forward_from`).  Only one chunk of CCCP1 outputs is alive at a time (the
whole test set's would be 6.5 GB).  A model whose first two layers differ from the base model's is run from
its input instead, so the result never depends on that assumption.

Images are grouped by class (chunks hold images of one class), so a model only ever sees its own classes.
Models given the same :class:`NinWeights` object (the unpruned column of many subsets) are run once per chunk.

Engines (all float32, the same arithmetic as :func:`specialist.accuracy.subset_accuracy`):

* ``torch``: the plain NCHW :class:`NinNet`.
* ``torch-cl``: the same modules and tensors in channels-last memory format (oneDNN's preferred layout;
  about 1.3x faster here).  Scores differ from ``torch`` by float rounding only (about 1e-6).

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
from specialist.errors import UsageError
from specialist.model import LAYER_NAMES, N_CLASSES, NIN_LAYERS, NinNet, NinWeights, build_module

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("torch", "torch-cl")
DEFAULT_ENGINE = "torch-cl"
#: Layers computed once per chunk with the base model: CONV1 and CCCP1 (specialists start at CCCP2).
SHARED_LAYERS: tuple[str, ...] = LAYER_NAMES[:2]


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


def _prepare(w: NinWeights, engine: str) -> NinNet:
    net = build_module(w)
    if engine == "torch-cl":
        net = net.to(memory_format=torch.channels_last)
    return net


def _as_engine(x: torch.Tensor, engine: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if engine == "torch-cl" else x.contiguous()


def _prefix(net: NinNet, x: torch.Tensor) -> torch.Tensor:
    """CONV1 and CCCP1 of the base model: convolution then ReLU in place (they have no pool and no constant:
    the same numbers as ``net.layer``, without a second 0.8 MB/image tensor per layer)."""
    for i in range(len(SHARED_LAYERS)):
        if NIN_LAYERS[i].post or LAYER_NAMES[i] in getattr(net, "const_names", ()):
            x = net.layer(i, x)
        else:
            x = net.convs[i](x).relu_()
    return x


def _forward_from(net: NinNet, start: int, x: torch.Tensor) -> torch.Tensor:
    """``net.forward_from(start, x)`` with the constant add and the ReLU in place on each convolution's own
    output (no grad here: the same numbers, one allocation less per layer; ~8% of a sweep's CPU time)."""
    for i in range(start, len(net.convs)):
        y = net.convs[i](x)
        if i in net._const_idx:
            y.add_(getattr(net, net._const_idx[i]))
        x = net._post(i, y.relu_())
    return x


@torch.no_grad()
def evaluate_models(base: NinWeights, models: Sequence[EvalModel], split: Split,
                    options: EvalOptions = EvalOptions()) -> EvalResult:
    """Accuracy of every model on its classes' images in ``split`` (see the module docstring).

    ``split`` holds the images to use (already limited per class / to exact images by the caller).
    """
    t0 = time.perf_counter()
    engine = options.engine
    if options.threads:
        torch.set_num_threads(options.threads)
    m = len(models)
    correct = np.zeros((m, N_CLASSES), np.int64)
    n = np.zeros((m, N_CLASSES), np.int64)
    if m == 0:
        return EvalResult(correct, n, engine=engine)
    base_net = _prepare(base, engine)
    # One module per distinct weights object; models sharing weights share the forward pass.
    uniq: dict[int, int] = {}
    nets: list[NinNet] = []
    from_prefix: list[bool] = []
    model_net = np.zeros(m, np.int64)
    members = np.zeros((m, N_CLASSES), bool)
    for j, mod in enumerate(models):
        key = id(mod.weights)
        if key not in uniq:
            uniq[key] = len(nets)
            nets.append(base_net if mod.weights is base else _prepare(mod.weights, engine))
            from_prefix.append(shares_prefix(base, mod.weights))
        model_net[j] = uniq[key]
        members[j, np.asarray(list(mod.classes), np.int64)] = True
    cols = [None if mod.columns is None else torch.as_tensor(list(mod.columns), dtype=torch.long)
            for mod in models]
    outs = [mod.output_classes() for mod in models]
    needed = np.flatnonzero(members.any(axis=0))
    evals = prefix_images = 0
    for c, rows in chunk_plan(split.y, needed, options.chunk_images):
        x = _as_engine(torch.from_numpy(base.normalize(split.x[rows])), engine)
        users = np.flatnonzero(members[:, c])
        nets_here = np.unique(model_net[users])
        prefix = None
        if any(from_prefix[k] for k in nets_here):
            prefix = _prefix(base_net, x)
            prefix_images += len(rows)
        scores = {}
        for k in nets_here:
            net = nets[k]
            scores[k] = _forward_from(net, 2, prefix) if from_prefix[k] else _forward_from(net, 0, x)
            evals += len(rows)
        for j in users:
            s = scores[model_net[j]]
            if cols[j] is not None:
                s = s.index_select(1, cols[j])
            pred = outs[j][s.argmax(dim=1).numpy()]
            correct[j, c] += int((pred == c).sum())
            n[j, c] += len(rows)
    return EvalResult(correct, n, time.perf_counter() - t0, evals, prefix_images, engine)

"""ExecuTorch export of a (specialist) NIN: the only module that imports ExecuTorch's exporter.

Pipeline: ``NinWeights`` -> :class:`ExportNet` (the same function as :class:`specialist.model.NinNet`,
written so that XNNPACK takes the whole graph) -> ``torch.export`` -> optional int8 post-training
quantization (XNNPACK quantizer, PT2E) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner
(or none: portable kernels) -> ``.pte`` bytes -> verified with the ExecuTorch runtime against the
PyTorch model before anything is written under the final name.

Why :class:`ExportNet` and not ``NinNet``: ExecuTorch 1.5's XNNPACK partitioner leaves
``avg_pool2d(3, 2, 1)`` with ``count_include_pad=True`` and ``mean(dim=(2, 3))`` without ``keepdim`` to
the portable kernels, which splits the program in two delegate calls with two slow portable operators
between them.  The average pool is exactly a 3x3 depthwise convolution with weights 1/9 (zero padding
counted), and the global pool a ``keepdim`` mean followed by a flatten: same numbers, one delegate call.

Mean compensation: a specialist built with per-position constants (``NinWeights.consts``, one extra add
node) is by default folded into the next layer's bias (the constant's spatial mean, exactly the
builder's ``fold="bias"`` variant); the border error this causes is measured on the verification batch
and reported.  ``fold="exact"`` keeps the constants (one add node per compensated layer).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specialist.errors import DataError, UsageError
from specialist.model import CLASS_NAMES, INPUT_SHAPE, NIN_LAYERS, NinWeights, build_module, nin_convs

log = logging.getLogger(__name__)

BACKENDS = ("xnnpack", "portable")
QUANTIZE = ("none", "int8")
FOLDS = ("bias", "exact")
#: Export check: max abs difference between the .pte and the PyTorch model (float programs).
VERIFY_ATOL = 1e-4


@dataclass(frozen=True)
class ExportOptions:
    """How to export.  Loadable from TOML (an ``[export]`` table with these field names)."""

    backend: str = "xnnpack"
    quantize: str = "none"
    fold: str = "bias"
    atol: float = VERIFY_ATOL
    #: int8 programs are checked against the quantized PyTorch reference with this tolerance, relative to
    #: the largest reference score (max abs diff <= atol_int8 * max(1, max |score|)).
    atol_int8: float = 0.05
    verify_images: int = 16
    quant_calib_images: int = 64
    accuracy_images: int = 1000
    #: also measure test accuracy of the exact vs the bias-folded specialist (PyTorch, ``accuracy_images``)
    measure_accuracy: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.quantize not in QUANTIZE:
            raise UsageError(f"quantize {self.quantize!r} is not one of {', '.join(QUANTIZE)}")
        if self.fold not in FOLDS:
            raise UsageError(f"compensation fold {self.fold!r} is not one of {', '.join(FOLDS)}")
        if self.quantize == "int8" and self.backend != "xnnpack":
            raise UsageError("--quantize int8 needs --backend xnnpack (the portable kernels have no int8 convolution)")
        if self.verify_images < 1 or self.quant_calib_images < 1:
            raise UsageError("verify_images and quant_calib_images must be at least 1")
        if not self.atol > 0:
            raise UsageError(f"atol must be positive, got {self.atol}")


class ExportNet(nn.Module):
    """NIN (any widths, optional per-position constants) in the form XNNPACK delegates whole.

    Computes exactly what :class:`specialist.model.NinNet` computes for the same weights.
    """

    def __init__(self, w: NinWeights):
        super().__init__()
        self.convs = nin_convs(w)
        self.posts = [s.post for s in NIN_LAYERS]
        self.const_at: dict[int, str] = {}
        for i, spec in enumerate(NIN_LAYERS):
            if spec.name in w.consts:
                name = f"const_{spec.name}"
                self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(w.consts[spec.name]))[None])
                self.const_at[i] = name
            if spec.post == "avgpool":
                ch = int(w.weights[spec.name].shape[0])
                self.register_buffer("avg_kernel", torch.full((ch, 1, 3, 3), 1.0 / 9.0))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i in self.const_at:
                x = x + getattr(self, self.const_at[i])
            x = torch.relu(x)
            post = self.posts[i]
            if post == "maxpool":
                x = F.max_pool2d(x, 3, 2, 1)
            elif post == "avgpool":  # avg_pool2d(3, 2, 1, count_include_pad=True) as a depthwise conv
                x = F.conv2d(x, self.avg_kernel, None, 2, 1, 1, x.shape[1])
            elif post == "gap":
                x = torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1)
        return x


# --------------------------------------------------------------------------- compensation folding


def fold_consts(w: NinWeights) -> tuple[NinWeights, dict[str, float]]:
    """Fold every per-position constant into its layer's bias (its spatial mean): no extra node.

    Returns the folded weights and, per layer, the largest deviation of the constant from its mean
    (the pre-ReLU error at the padded borders that folding introduces).
    """
    if not w.consts:
        return w, {}
    out = w.copy()
    dev = {}
    for name, c in w.consts.items():
        c64 = np.asarray(c, dtype=np.float64)
        mean = c64.mean(axis=(1, 2))
        out.biases[name] = (out.biases[name].astype(np.float64) + mean).astype(np.float32)
        dev[name] = float(np.abs(c64 - mean[:, None, None]).max())
    out.consts = {}
    return out, dev


# --------------------------------------------------------------------------- lowering


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation/experimental warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _example() -> torch.Tensor:
    return torch.zeros((1, *INPUT_SHAPE), dtype=torch.float32)


def quantize_int8(module: nn.Module, calib_x: np.ndarray) -> nn.Module:
    """Post-training int8 quantization (XNNPACK quantizer, per-channel symmetric weights), calibrated
    on ``calib_x`` (normalised NCHW float32, one image at a time)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    gm = torch.export.export(module, (_example(),)).module()
    gm = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(len(calib_x)):
            gm(torch.from_numpy(calib_x[i : i + 1]))
    return convert_pt2e(gm)


def lower(module: nn.Module, backend: str = "xnnpack") -> bytes:
    """``torch.export`` + ExecuTorch lowering of a module taking ``[1, 3, 32, 32]``; the ``.pte`` bytes."""
    from executorch.exir import to_edge_transform_and_lower

    with _quiet():
        ep = torch.export.export(module, (_example(),))
        part = []
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            part = [XnnpackPartitioner()]
        edge = to_edge_transform_and_lower(ep, partitioner=part)
        return bytes(edge.to_executorch().buffer)


def edge_op_counts(w: NinWeights) -> dict[str, int]:
    """Operators of the exported graph before any delegation (edge dialect), name -> count."""
    from executorch.exir import to_edge

    with _quiet():
        ep = torch.export.export(ExportNet(w), (_example(),))
        g = to_edge(ep).exported_program().graph
    counts: dict[str, int] = {}
    for n in g.nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            counts[name] = counts.get(name, 0) + 1
    return counts


def portable_op_count(pte_bytes: bytes) -> int:
    """Number of operator calls a program leaves to the portable kernels (0: the delegate runs everything)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(pte_bytes)
    prog = getattr(prog, "program", prog)
    plan = prog.execution_plan[0]
    return sum(1 for c in plan.chains for i in c.instructions if type(i.instr_args).__name__ == "KernelCall")


# --------------------------------------------------------------------------- verification


@torch.no_grad()
def _torch_scores(module: nn.Module, x: np.ndarray) -> np.ndarray:
    return np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])


@dataclass
class ExportReport:
    """What an export did and measured (also the JSON of ``harness export``)."""

    pte: str
    backend: str
    quantize: str
    fold: str
    pte_bytes: int = 0
    pte_sha256: str = ""
    verified: bool = False
    max_abs_diff: float = float("nan")
    atol: float = VERIFY_ATOL
    verify_images: int = 0
    verify_input: str = ""
    border_error: dict[str, Any] = field(default_factory=dict)
    extra_nodes: int = 0
    portable_ops: int = 0
    accuracy: dict[str, Any] = field(default_factory=dict)
    export_s: float = 0.0
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_input(weights: NinWeights, classes, n: int, data=None, seed: int = 0, split: str = "calib"):
    """Normalised images of the target classes from the calibration split, or synthetic ones (with
    the kind returned) when no CIFAR-10 is available."""
    from specialist.data import load_split

    try:
        s = load_split(split, data).select(list(classes))
        per = max(1, -(-n // max(1, len(classes))))
        s = s.select(list(classes), per_class=per)
        x = weights.normalize(s.x[:n])
        return x, f"{split} images of classes {list(classes)}"
    except DataError as exc:
        log.warning("no CIFAR-10 for the export check (%s); using synthetic inputs", exc)
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, *INPUT_SHAPE)).astype(np.float32), "synthetic N(0,1)"


@dataclass
class BuiltExport:
    """A lowered program and what checking it needs (no file written, nothing run yet).

    ``harness`` writes ``blob``, runs it on ``x`` through the runner contract and compares with ``ref``
    (max abs diff <= ``tolerance``): the check that runs a program lives beside the runner, not here.
    """

    blob: bytes
    x: np.ndarray
    ref: np.ndarray
    tolerance: float
    report: ExportReport
    exported: NinWeights
    started_s: float


def build_export(weights: NinWeights, out_path: str | Path, options: ExportOptions = ExportOptions(),
                 classes=tuple(range(10)), data=None) -> BuiltExport:
    """Lower ``weights`` to an ExecuTorch program with its reference scores; nothing is written."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    report = ExportReport(pte=str(out_path), backend=options.backend, quantize=options.quantize,
                          fold=options.fold if weights.consts else "none", atol=options.atol)
    exact = weights
    folded, dev = fold_consts(weights) if options.fold == "bias" else (weights, {})
    report.extra_nodes = len(folded.consts)
    x, kind = verify_input(weights, classes, options.verify_images, data, options.seed)
    report.verify_input, report.verify_images = kind, len(x)
    ref_net = build_module(folded)
    ref = _torch_scores(ref_net, x)
    if dev:
        exact_scores = _torch_scores(build_module(exact), x)
        err = np.abs(exact_scores - ref)
        report.border_error = {
            "max_abs_scores": float(err.max()), "mean_abs_scores": float(err.mean()),
            "top1_agreement_pct": float(100 * np.mean(exact_scores.argmax(1) == ref.argmax(1))),
            "max_const_deviation": dev,
        }
        acc = float_accuracy({"exact": exact, "folded": folded}, classes, options, data) \
            if options.measure_accuracy else {}
        if acc:
            report.border_error["accuracy"] = acc
    module: nn.Module = ExportNet(folded)
    if options.quantize == "int8":
        cx, _ = verify_input(weights, classes, options.quant_calib_images, data, options.seed + 1)
        with _quiet():
            module = quantize_int8(module, cx)
        ref = _torch_scores(module, x)
    blob = lower(module, options.backend)
    # int8: relative to the output range (integer requantization through 9 layers vs the PT2E reference)
    tol = options.atol if options.quantize == "none" else options.atol_int8 * max(1.0, float(np.abs(ref).max()))
    report.atol = tol
    report.pte_bytes = len(blob)
    report.pte_sha256 = hashlib.sha256(blob).hexdigest()
    report.portable_ops = portable_op_count(blob)
    return BuiltExport(blob=blob, x=x, ref=ref, tolerance=tol, report=report, exported=folded, started_s=t0)


def int8_accuracy(weights: NinWeights, run_scores, classes, options: ExportOptions, data=None) -> dict[str, Any]:
    """Top-1 accuracy (%) on the target classes' test images: float PyTorch model vs the int8 program.

    ``run_scores(x) -> scores`` runs the program (the caller owns the runner).
    """
    from specialist.model import predict_scores

    sub = _test_subset(classes, options, data)
    if sub is None:
        return {"skipped": "no CIFAR-10 test images found"}
    x_u8, y = sub
    x = weights.normalize(x_u8)
    fa = _top1_pct(predict_scores(build_module(weights), x), y, classes)
    qa = _top1_pct(run_scores(x), y, classes)
    return {"images": int(len(y)), "float_pct": fa, "int8_pct": qa, "change_pct": qa - fa}


def _test_subset(classes, options: ExportOptions, data=None):
    """(images u8, labels) of the target classes from the test split (a fixed random subset), or None."""
    from specialist.data import load_split

    try:
        test = load_split("test", data).select(list(classes))
    except DataError:
        return None
    n = min(len(test), options.accuracy_images)
    idx = np.random.default_rng(options.seed).permutation(len(test))[:n]
    return test.x[idx], test.y[idx].astype(int)


def _top1_pct(scores: np.ndarray, y: np.ndarray, classes) -> float:
    cls = np.asarray(sorted(classes))
    if scores.shape[1] == 10 and len(cls) < 10:
        scores = scores[:, cls]
    return float(100 * np.mean(cls[scores.argmax(1)] == y))


def float_accuracy(variants: dict[str, NinWeights], classes, options: ExportOptions, data=None) -> dict[str, Any]:
    """Top-1 accuracy (%) of PyTorch models on the target classes' test images ({} without CIFAR-10)."""
    from specialist.model import predict_scores

    sub = _test_subset(classes, options, data)
    if sub is None:
        return {}
    x_u8, y = sub
    out: dict[str, Any] = {"images": int(len(y))}
    for name, w in variants.items():
        out[f"{name}_pct"] = _top1_pct(predict_scores(build_module(w), w.normalize(x_u8)), y, classes)
    return out


def manifest_for(report: ExportReport, weights: NinWeights, *, base_hash: str, stats_hash: str,
                 classes, level: float, method: str, flops: int, flops_base: int):
    """The :class:`~specialist.manifest.Manifest` of an exported program (the caller writes it)."""
    from importlib.metadata import version

    from specialist.manifest import NORMALISATION, Manifest

    try:
        et_version = version("executorch")
    except Exception:  # noqa: BLE001 - metadata lookups fail in odd installs
        et_version = "unknown"
    m = Manifest(
        pte_sha256=report.pte_sha256, pte_bytes=report.pte_bytes, backend=report.backend,
        quantize=report.quantize, model_sha256=weights.content_hash(), base_model_sha256=base_hash,
        stats_sha256=stats_hash, classes=tuple(int(c) for c in classes),
        class_names=tuple(CLASS_NAMES[int(c)] for c in classes), level=float(level), method=method,
        compensation_fold=report.fold, extra_nodes=report.extra_nodes, flops=int(flops),
        flops_base=int(flops_base), flops_pruned_pct=round(100.0 * (1 - flops / flops_base), 4),
        channels=weights.channels(), input_shape=(1, *INPUT_SHAPE), input_dtype="float32", input_layout="NCHW",
        input_mean=tuple(float(v) for v in weights.input_mean), input_std=tuple(float(v) for v in weights.input_std),
        normalisation=NORMALISATION, executorch_version=et_version, torch_version=torch.__version__,
        verify={"max_abs_diff": report.max_abs_diff, "atol": report.atol, "images": report.verify_images,
                "input": report.verify_input, "border_error": report.border_error, "accuracy": report.accuracy},
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return m

"""How the evaluation engines compute a NIN (:mod:`specialist.evaluate` runs them over the test images).

``torch`` (plain NCHW), ``torch-cl`` (channels-last), ``bf16`` (checked bfloat16 with oneDNN's fused
convolution + ReLU, close calls re-run in float32) and ``auto``; the engines are described in
:mod:`specialist.evaluate`'s docstring and docs/sweep.md.  Here: the engine table and its thresholds, the CPU
probe for native bfloat16, the per-layer forward paths (shared prefix, in-place, fused, float32 last layer),
and :class:`_Net`, one weights object as an engine runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from specialist.data import Split
from specialist.errors import UsageError
from specialist.model import LAYER_NAMES, NIN_LAYERS, NinNet, NinWeights, build_module

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EngineSpec:
    """How an engine computes: memory format, the dtype of its convolutions, and whether close calls are
    checked in float32 (a low-precision engine)."""

    channels_last: bool
    dtype: torch.dtype = torch.float32
    checked: bool = False


#: The concrete engines; ``auto`` picks one of them (:func:`resolve_engine`).
ENGINE_SPECS: dict[str, EngineSpec] = {
    "torch": EngineSpec(channels_last=False),
    "torch-cl": EngineSpec(channels_last=True),
    "bf16": EngineSpec(channels_last=True, dtype=torch.bfloat16, checked=True),
}
ENGINES: tuple[str, ...] = ("auto", *ENGINE_SPECS)
DEFAULT_ENGINE = "auto"
#: bfloat16 engine: an image whose bfloat16 margin (winner minus runner-up among a model's competing columns)
#: is below its model's threshold is evaluated again in float32; the threshold is at most this.  Measured
#: (docs/sweep.md, benchmarks/bench_bf16.py): the largest |bfloat16 - float32| score error over the whole test
#: set was 0.084 for the unpruned NIN and best, best-x16 and paper specialists at levels 10-50; twice that is
#: 0.167, so 0.5 is a safety factor of 3.
BF16_TAU = 0.5
#: The model's threshold is at most this times its largest error on its calibration batch.  Measured: the
#: whole test set's largest error was at most 3.03 times the calibration batch's (46 models), so twice that (a
#: margin must exceed twice the error) is 6.06, and 20 is a safety factor of 3.3 on top.
BF16_REL = 20.0
#: Images of a model's calibration batch (spread evenly over its classes: the first images of each).
BF16_CALIB_IMAGES = 32
#: Layers computed once per chunk with the base model: CONV1 and CCCP1 (specialists start at CCCP2).
SHARED_LAYERS: tuple[str, ...] = LAYER_NAMES[:2]


def _cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return set()
    out: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            out.update(value.split())
    return out


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively, so the ``bf16`` engine is fast (elsewhere oneDNN emulates
    it, slower than float32).  x86: AVX512-BF16 or AMX-BF16, asked of torch
    (``torch.cpu._is_avx512_bf16_supported``/``_is_amx_tile_supported``) and else read from /proc/cpuinfo
    (``avx512_bf16``, ``amx_bf16``); Arm: the ``bf16`` feature.  ``HARNESS_BF16=0``/``1`` overrides."""
    env = os.environ.get("HARNESS_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a private probe that misbehaves only means "ask /proc/cpuinfo"
            continue
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_engine(engine: str) -> str:
    """The concrete engine ``engine`` stands for (``auto``: ``bf16`` with native bfloat16, else ``torch-cl``)."""
    if engine == "auto":
        return "bf16" if native_bf16() else "torch-cl"
    if engine not in ENGINE_SPECS:
        raise UsageError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    return engine


def _prepare(w: NinWeights, spec: EngineSpec, dtype: torch.dtype | None = None) -> NinNet:
    net = build_module(w)
    if spec.channels_last:
        net = net.to(memory_format=torch.channels_last)
    dtype = spec.dtype if dtype is None else dtype
    return net if dtype == torch.float32 else net.to(dtype)


def _as_engine(x: torch.Tensor, spec: EngineSpec) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if spec.channels_last else x.contiguous()


def _prefix(net: NinNet, x: torch.Tensor) -> torch.Tensor:
    """CONV1 and CCCP1 of the base model: convolution then ReLU in place (they have no pool and no constant:
    the same numbers as ``net.layer``, without a second 0.8 MB/image tensor per layer)."""
    for i in range(len(SHARED_LAYERS)):
        if NIN_LAYERS[i].post or LAYER_NAMES[i] in getattr(net, "const_names", ()):
            x = net.layer(i, x)
        else:
            x = net.convs[i](x).relu_()
    return x


def _forward_from(net: NinNet, start: int, x: torch.Tensor, stop: int | None = None) -> torch.Tensor:
    """``net.forward_from(start, x)`` (layers ``start..stop-1``, default to the end) with the constant add and
    the ReLU in place on each convolution's own output (no grad here: the same numbers, one allocation less per
    layer; ~8% of a sweep's CPU time)."""
    for i in range(start, len(net.convs) if stop is None else stop):
        y = net.convs[i](x)
        if i in net._const_idx:
            y.add_(getattr(net, net._const_idx[i]))
        x = net._post(i, y.relu_())
    return x


def _fused_layers(net: NinNet, start: int, x: torch.Tensor, stop: int) -> torch.Tensor:
    """Layers ``start..stop-1`` with oneDNN's fused convolution + [constant add] + ReLU
    (``torch.ops.mkldnn._convolution_pointwise``, the op torch.compile's CPU backend fuses to): in bfloat16 an
    unfused ReLU costs as much as the convolution.  The constant is added to the float32 accumulator."""
    op = torch.ops.mkldnn._convolution_pointwise
    for i in range(start, stop):
        conv = net.convs[i]
        pad, one = list(conv.padding), [1, 1]
        if i in net._const_idx:
            const = getattr(net, net._const_idx[i]).expand(x.shape[0], -1, -1, -1)
            y = op.binary(x, const, conv.weight, conv.bias, pad, one, one, 1, "add", None, "relu", [], "")
        else:
            y = op(x, conv.weight, conv.bias, pad, one, one, 1, "relu", [], "")
        x = net._post(i, y)
    return x


def _last_layer32(net: NinNet, h: torch.Tensor) -> torch.Tensor:
    """The last layer (a 1x1 convolution, [constant], ReLU, global average pool) of a float32 ``net`` as one
    matrix product over the positions of channels-last ``h``: the same arithmetic in float32 as the convolution
    up to summation order (~1e-6), and at 8x8 positions and 10 outputs several times cheaper than oneDNN's
    convolution on so small a tensor."""
    i = len(net.convs) - 1
    conv = net.convs[i]
    if tuple(conv.kernel_size) != (1, 1) or net.posts[i] != "gap":
        return _forward_from(net, i, h)
    n, c, hh, ww = h.shape
    z = torch.addmm(conv.bias, h.permute(0, 2, 3, 1).reshape(n * hh * ww, c), conv.weight.view(-1, c).t())
    z = z.view(n, hh, ww, -1)
    if i in net._const_idx:
        z += getattr(net, net._const_idx[i]).permute(0, 2, 3, 1)
    return z.relu_().mean(dim=(1, 2))


_FUSED_OK: dict[torch.dtype, bool] = {}


def _fused_ok(dtype: torch.dtype) -> bool:
    """Whether the fused op runs here in ``dtype`` and agrees with the unfused layers (probed once)."""
    if dtype not in _FUSED_OK:
        ok = False
        try:
            g = torch.Generator().manual_seed(0)
            conv = torch.nn.Conv2d(8, 16, 3, padding=1).to(dtype)
            x = torch.randn(2, 8, 6, 6, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
            c = torch.randn(1, 16, 6, 6, generator=g).to(dtype)
            with torch.no_grad():
                op = torch.ops.mkldnn._convolution_pointwise
                y = op(x, conv.weight, conv.bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
                yb = op.binary(x, c.expand(2, -1, -1, -1), conv.weight, conv.bias, [1, 1], [1, 1], [1, 1], 1, "add",
                               None, "relu", [], "")
                ref, refb = conv(x).relu(), (conv(x).float() + c.float()).relu()
            tol = 0.05 * float(refb.abs().max()) + 1e-3
            ok = bool((y.float() - ref.float()).abs().max() <= tol and (yb.float() - refb).abs().max() <= tol)
        except Exception:  # noqa: BLE001 - no mkldnn, or an op this build lacks: the unfused path
            ok = False
        if not ok:
            log.info("fused oneDNN convolutions unavailable for %s: unfused layers", dtype)
        _FUSED_OK[dtype] = ok
    return _FUSED_OK[dtype]


class _Net:
    """One distinct weights object as the engine runs it: the module in the engine's dtype, and for a checked
    engine the float32 module (its last layer, and the close calls)."""

    def __init__(self, w: NinWeights, spec: EngineSpec, from_prefix: bool):
        self.net = _prepare(w, spec)
        self.net32 = self.net if spec.dtype == torch.float32 else _prepare(w, spec, torch.float32)
        self.from_prefix = from_prefix
        self.start = 2 if from_prefix else 0
        self.fused = spec.checked and spec.channels_last and _fused_ok(spec.dtype)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The shared prefix (CONV1, CCCP1) in the engine's dtype."""
        return _fused_layers(self.net, 0, x, len(SHARED_LAYERS)) if self.fused else _prefix(self.net, x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """float32 scores of the engine's computation from ``x`` (the prefix's output, or the image)."""
        if self.net is self.net32:
            return _forward_from(self.net, self.start, x)
        last = len(self.net.convs) - 1
        if self.fused:
            h = _fused_layers(self.net, self.start, x, last)
        else:
            h = _forward_from(self.net, self.start, x, stop=last)
        return _last_layer32(self.net32, h.to(torch.float32))

    def scores32(self, x32: torch.Tensor) -> torch.Tensor:
        return _forward_from(self.net32, self.start, x32)

    def error(self, x32: torch.Tensor, base_net: _Net) -> float:
        """Largest |engine score - float32 score| on the images ``x32`` (every column)."""
        if self.from_prefix:
            s = self.scores(base_net.prefix(x32.to(self.net.convs[0].weight.dtype)))
            s32 = self.scores32(_prefix(base_net.net32, x32))
        else:
            s, s32 = self.scores(x32.to(self.net.convs[0].weight.dtype)), self.scores32(x32)
        return float((s - s32).abs().max()) if s.numel() else 0.0

    def threshold(self, base: NinWeights, split: Split, classes: Sequence[int], base_net: _Net) -> float:
        """The margin threshold of this model: ``min(BF16_TAU, BF16_REL x its calibration batch's error)``
        (``BF16_TAU`` when that error is 0: a batch that says nothing about the model's scale)."""
        rows = calibration_rows(split.y, classes)
        if not len(rows):
            return BF16_TAU
        x32 = torch.from_numpy(base.normalize(split.x[rows])).contiguous(memory_format=torch.channels_last)
        err = self.error(x32, base_net)
        return min(BF16_TAU, BF16_REL * err) if err > 0 else BF16_TAU


def calibration_rows(y: np.ndarray, classes: Sequence[int], images: int = BF16_CALIB_IMAGES) -> np.ndarray:
    """A model's calibration batch: the first ``images // len(classes)`` (at least 2) images of each class."""
    classes = sorted(int(c) for c in classes)
    if not classes:
        return np.zeros(0, np.int64)
    per = max(2, images // len(classes))
    return np.concatenate([np.flatnonzero(y == c)[:per] for c in classes])


def margins(s: torch.Tensor) -> torch.Tensor:
    """Per row: the largest score minus the second largest (infinite with a single column)."""
    if s.shape[1] < 2:
        return torch.full((s.shape[0],), float("inf"))
    top = s.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


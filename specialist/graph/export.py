"""ExecuTorch lowering of a graph module (any input shape): ``torch.export`` + XNNPACK or portable kernels.

Only produces bytes and the PyTorch reference; ``harness.exportcheck`` runs the program and compares.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

BACKENDS = ("xnnpack", "portable")


def lower_module(module: nn.Module, input_shape: tuple[int, ...], backend: str = "xnnpack") -> bytes:
    """The ``.pte`` bytes of ``module`` taking one ``[1, *input_shape]`` float32 input."""
    from executorch.exir import to_edge_transform_and_lower

    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(_eval(module), (example,))
        part = []
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            part = [XnnpackPartitioner()]
        edge = to_edge_transform_and_lower(ep, partitioner=part)
        return bytes(edge.to_executorch().buffer)


def _eval(module: nn.Module) -> nn.Module:
    """``module`` in eval mode (a quantized PT2E graph module refuses ``.eval()``: it is in eval mode already)."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


@torch.no_grad()
def reference(module: nn.Module, x: torch.Tensor):
    """PyTorch scores of ``module`` on ``x`` (numpy, float32), one input at a time (as the program runs)."""
    module = _eval(module)
    return torch.cat([module(x[i : i + 1]) for i in range(len(x))]).numpy()


QUANTIZE = ("none", "int8")


def quantize_int8(module: nn.Module, input_shape: tuple[int, ...], calib_x) -> nn.Module:
    """Post-training int8 quantization of any graph module (XNNPACK quantizer, per-channel symmetric weights,
    PT2E), calibrated on ``calib_x`` (normalised float32 ``[N, *input_shape]``, one input at a time)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(module.eval(), (example,)).module()
        gm = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for i in range(len(calib_x)):
                gm(torch.as_tensor(calib_x[i : i + 1], dtype=torch.float32))
        return convert_pt2e(gm)


def class_names(classes, num_classes: int) -> tuple[str, ...]:
    """CIFAR-10 names for a 10-class model, else the indices as text."""
    from specialist.model import CLASS_NAMES

    return tuple(CLASS_NAMES[int(c)] if num_classes == len(CLASS_NAMES) else str(int(c)) for c in classes)


def graph_manifest(*, pte_sha256: str, pte_bytes: int, backend: str, quantize: str, model_sha256: str,
                   base_hash: str, stats_hash: str, classes, num_classes: int, level: float, method: str,
                   fold: str, extra_nodes: int, flops: int, flops_base: int, channels: dict[str, int],
                   input_shape: tuple[int, ...], mean, std, verify: dict):
    """The :class:`~specialist.manifest.Manifest` of an exported graph program (same schema as NIN's)."""
    import time
    from importlib.metadata import version

    from specialist.manifest import NORMALISATION, Manifest

    try:
        et_version = version("executorch")
    except Exception:  # noqa: BLE001 - metadata lookups fail in odd installs
        et_version = "unknown"
    return Manifest(
        pte_sha256=pte_sha256, pte_bytes=int(pte_bytes), backend=backend, quantize=quantize,
        model_sha256=model_sha256, base_model_sha256=base_hash, stats_sha256=stats_hash,
        classes=tuple(int(c) for c in classes), class_names=class_names(classes, num_classes), level=float(level),
        method=method, compensation_fold=fold, extra_nodes=int(extra_nodes), flops=int(flops),
        flops_base=int(flops_base), flops_pruned_pct=round(100.0 * (1 - flops / flops_base), 4) if flops_base else 0.0,
        channels={k: int(v) for k, v in channels.items()}, input_shape=(1, *(int(d) for d in input_shape)),
        input_dtype="float32", input_layout="NCHW", input_mean=tuple(float(v) for v in mean),
        input_std=tuple(float(v) for v in std), normalisation=NORMALISATION, executorch_version=et_version,
        torch_version=torch.__version__, verify=dict(verify),
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def out_channels(module: nn.Module) -> dict[str, int]:
    """Output channels of every convolution and linear layer (the manifest's ``channels``)."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
    return out

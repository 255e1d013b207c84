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
        ep = torch.export.export(module.eval(), (example,))
        part = []
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            part = [XnnpackPartitioner()]
        edge = to_edge_transform_and_lower(ep, partitioner=part)
        return bytes(edge.to_executorch().buffer)


@torch.no_grad()
def reference(module: nn.Module, x: torch.Tensor):
    """PyTorch scores of ``module`` on ``x`` (numpy, float32)."""
    return module.eval()(x).numpy()

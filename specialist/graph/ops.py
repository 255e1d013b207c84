"""The supported-op check: refuse, before any work, a graph the builder cannot prune and compensate.

The model is traced with ``torch.export`` (ATen ops).  Every op must be in :data:`SUPPORTED` (channel-wise or
shape-only ops whose channel mapping torch-pruning follows, and the channel-mixing conv/linear whose inputs
are compensated), with two extra rules:

- a multiply or divide of two activations (both computed from the input) is refused: a channel-wise gate such
  as squeeze-excitation (``x * sigmoid(fc(pool(x)))``) makes a removed channel's contribution depend on another
  branch, so mean compensation of the gated input would not be the network the statistics describe;
- a grouped convolution other than depthwise (1 < groups < channels) is refused (its channel groups would have
  to be pruned in equal blocks).

Refusal is one :class:`~specialist.errors.InputError` naming the op, the node and the module it sits in.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from specialist.errors import InputError

log = logging.getLogger(__name__)

#: ATen op packets (``aten.<name>``) the builder understands.
SUPPORTED = frozenset({
    # channel mixing (compensated at their inputs) and BatchNorm (sliced with its producer)
    "conv1d", "conv2d", "convolution", "linear", "batch_norm", "_native_batch_norm_legit_no_training",
    # element-wise, per channel
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "clamp", "clone", "dropout", "alias", "detach", "contiguous", "_to_copy",
    # residual adds (two activations tie their channels) and arithmetic with constants
    "add", "add_", "sub", "mul", "div",
    # pooling and shape ops torch-pruning maps channel by channel
    "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "mean",
    "flatten", "view", "reshape", "_unsafe_view", "cat", "squeeze", "unsqueeze",
})
#: ops allowed only with at most one activation operand
_ONE_ACTIVATION = frozenset({"mul", "div"})


def _packet(target) -> str:
    name = getattr(target, "__name__", str(target))  # e.g. "conv2d.default"
    return name.split(".")[0]


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        return f"in module {path or '<root>'} ({str(cls).rsplit('.', 1)[-1]})"
    return "at the top level"


def trace(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval) on ``example``; one-line InputError when it cannot be traced."""
    try:
        return torch.export.export(model.eval(), (example,), strict=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's problem
        raise InputError(f"the model cannot be traced with torch.export: {str(exc).splitlines()[0][:200]}") \
            from None


def check_supported(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Trace ``model`` and refuse the first op the builder cannot handle; return the program when all are."""
    ep = trace(model, example)
    user = set(ep.graph_signature.user_inputs)
    active: set[str] = set()  # nodes computed from the input image
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in user:
                active.add(node.name)
            continue
        if node.op != "call_function":
            continue
        ins = [a for a in node.all_input_nodes if a.name in active]
        if not ins:
            continue
        active.add(node.name)
        name = _packet(node.target)
        if name == "getitem" or name.startswith("_assert") or name.startswith("sym_"):
            continue
        if name not in SUPPORTED:
            raise InputError(f"unsupported op aten.{name} at node {node.name!r} {_where(node)}: the builder "
                             "cannot map its channels (see docs/anycnn.md for what is supported)")
        if name in _ONE_ACTIVATION and len(ins) > 1:
            raise InputError(f"unsupported op aten.{name} of two activations at node {node.name!r} "
                             f"{_where(node)}: a channel-wise multiply (squeeze-excitation-like gating) "
                             "cannot be pruned with compensation")
        if name in ("conv1d", "conv2d", "convolution"):
            x, w = (a.meta.get("val") if isinstance(a, torch.fx.Node) else None for a in node.args[:2])
            if x is not None and w is not None and w.shape[1] != 1 and x.shape[1] != w.shape[1]:
                raise InputError(f"grouped convolution (groups={x.shape[1] // w.shape[1]}) at node {node.name!r} "
                                 f"{_where(node)} is not supported (only groups=1 and depthwise)")
    log.debug("supported-op check passed: %d nodes", len(ep.graph.nodes))
    return ep

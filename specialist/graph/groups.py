"""Coupled channel groups of any CNN, from torch-pruning's ``DependencyGraph`` on the traced model.

A *group* is a set of channels that must be removed together: the output channels of one or more producing
convolutions/linears (several when residual adds tie them), every BatchNorm and depthwise convolution that
carries them (sliced with them), and the inputs of every *consumer*, a convolution (groups=1) or linear that
mixes channels and reads them (through concatenation offsets or a flatten, one input index per group channel
and spatial position).  Mean compensation happens at the consumers' inputs.

torch-pruning 1.6.1 builds the dependencies (residual adds, depthwise in/out ties, ``cat`` offsets,
``flatten`` -> Linear, BatchNorm); :mod:`specialist.graph.ops` refuses the graphs it would get wrong for
compensation before any of this runs.  The classifier (the last conv/linear, producing the class scores) is
not in any group: a specialist keeps only its target classes' outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from specialist.errors import InputError
from specialist.graph.ops import check_supported

log = logging.getLogger(__name__)

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MIXING = (*CONV_TYPES, nn.Linear)


def is_depthwise(m: nn.Module) -> bool:
    """A convolution whose every output channel reads exactly one input channel."""
    return isinstance(m, CONV_TYPES) and m.groups > 1 and m.groups == m.in_channels


def is_mixing(m: nn.Module) -> bool:
    """A layer whose outputs mix its input channels (a compensation point)."""
    return isinstance(m, MIXING) and not is_depthwise(m)


@dataclass(frozen=True)
class Consumer:
    """A channel-mixing layer reading a group: ``in_idx[j]`` of its input is group channel ``root_idx[j]``."""

    module: str
    in_idx: tuple[int, ...]
    root_idx: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together (see the module docstring)."""

    gid: int
    root: str
    size: int
    producers: tuple[str, ...]
    members: tuple[str, ...]
    consumers: tuple[Consumer, ...]
    prunable: bool
    note: str = ""


@dataclass
class ChannelGraph:
    """The groups of a model plus what surgery and statistics need to find their way around it."""

    model: nn.Module
    example: torch.Tensor
    groups: list[ChannelGroup]
    classifier: str
    first: str
    order: list[str]  # mixing layers in execution order
    modules: dict[str, nn.Module] = field(repr=False, default_factory=dict)

    @property
    def prunable(self) -> list[ChannelGroup]:
        """The groups a uniform level prunes."""
        return [g for g in self.groups if g.prunable]

    def consumers(self) -> list[str]:
        """Every consumer layer of any group, in execution order."""
        names = {c.module for g in self.groups for c in g.consumers}
        return [n for n in self.order if n in names]

    def summary(self) -> list[dict]:
        """One row per group (JSON-ready)."""
        return [{"group": g.gid, "root": g.root, "channels": g.size, "producers": list(g.producers),
                 "consumers": [c.module for c in g.consumers], "prunable": g.prunable, "note": g.note}
                for g in self.groups]


@torch.no_grad()
def execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv/linear layers in the order a forward pass calls them (each once; shared refused)."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: order.append(names[mod]))
             for m in model.modules() if isinstance(m, MIXING)]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    seen = set()
    for n in order:
        if n in seen:
            raise InputError(f"layer {n!r} is called more than once per forward pass (shared weights are not "
                             "supported)")
        seen.add(n)
    return order


def build_dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (eval) on ``example``."""
    with torch.enable_grad():  # torch-pruning traces the autograd graph
        return tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example)


def root_pruner(dg: tp.DependencyGraph, module: nn.Module):
    """The out-channel pruning function torch-pruning uses for a group rooted at ``module``."""
    return dg.get_pruner_of_module(module).prune_out_channels


def _group(gid: int, group, dg: tp.DependencyGraph, names: dict[nn.Module, str]) -> ChannelGroup:
    root_mod = group[0].dep.target.module
    size = len(group[0].idxs)
    producers, members = [], []
    cons: dict[str, tuple[list[int], list[int]]] = {}
    for item in group.items:
        mod, fn = item.dep.target.module, item.dep.handler
        if not isinstance(mod, nn.Module) or mod not in names:
            continue  # element-wise / concat / reshape nodes: torch-pruning maps their indices
        name = names[mod]
        if name not in members:
            members.append(name)
        if dg.is_out_channel_pruning_fn(fn) and is_mixing(mod) and name not in producers:
            producers.append(name)
        elif dg.is_in_channel_pruning_fn(fn) and is_mixing(mod):
            ins, roots = cons.setdefault(name, ([], []))
            ins.extend(int(i) for i in item.idxs)
            roots.extend(int(r) for r in item.root_idxs)
    consumers = tuple(Consumer(n, tuple(i), tuple(r)) for n, (i, r) in cons.items())
    return ChannelGroup(gid, names[root_mod], size, tuple(producers), tuple(members), consumers, True)


def _find_classifier(model: nn.Module, example: torch.Tensor, order: list[str], modules) -> str:
    with torch.no_grad():
        out = model(example)
    k = int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
    for name in reversed(order):
        m = modules[name]
        width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if width == k:
            return name
    raise InputError(f"no final convolution or linear layer produces the model's {k} class scores")


def analyse(model: nn.Module, example: torch.Tensor, keep_first: bool = True,
            classifier: str | None = None) -> ChannelGraph:
    """Check the model's ops, then find its channel groups.

    ``keep_first``: the group holding the first convolution's outputs stays intact (the default: the first
    layer sees the raw image and is cheap; see docs/anycnn.md).  ``classifier``: the layer producing the
    class scores (default: the last conv/linear whose width is the output's).
    """
    model.eval()
    check_supported(model, example)
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    order = execution_order(model, example)
    if not order:
        raise InputError("the model has no convolution or linear layer")
    if classifier is None:
        classifier = _find_classifier(model, example, order, modules)
    elif classifier not in modules:
        raise InputError(f"classifier {classifier!r} is not a layer of the model")
    dg = build_dependency_graph(model, example)
    raw = dg.get_all_groups(ignored_layers=[modules[classifier]], root_module_types=MIXING)
    rank = {n: i for i, n in enumerate(order)}
    found = sorted((_group(0, group, dg, names) for group in raw),
                   key=lambda g: min((rank.get(p, len(rank)) for p in g.producers), default=len(rank)))
    groups = []
    for gid, g in enumerate(found):
        g = ChannelGroup(gid, g.root, g.size, g.producers, g.members, g.consumers, True)
        note = ""
        if not g.consumers:
            note = "no channel-mixing layer reads these channels (they reach the output)"
        elif keep_first and order[0] in g.producers:
            note = "holds the first layer's outputs (kept intact by default)"
        if note:
            g = ChannelGroup(g.gid, g.root, g.size, g.producers, g.members, g.consumers, False, note)
        groups.append(g)
    log.info("%d channel groups (%d prunable), classifier %s", len(groups), sum(g.prunable for g in groups),
             classifier)
    return ChannelGraph(model, example, groups, classifier, order[0], order, modules)

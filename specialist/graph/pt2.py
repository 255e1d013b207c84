"""A ``torch.export`` program (``.pt2``) back into a module graph the rest of :mod:`specialist.graph` can prune.

An exported program calls ``aten.conv2d`` / ``aten.batch_norm`` / ``aten.linear`` as functions on lifted
parameters; pruning, statistics hooks and torch-pruning's tracer need ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
``nn.Linear`` modules.  :func:`program_to_module` rebuilds an ``fx.GraphModule``: each of those calls becomes
a ``call_module`` of a new module that holds the program's tensors, named after the parameter's owner in the
original model (``layer1.0.conv1.weight`` -> module ``layer1.0.conv1``), every other op is kept as the same
``aten`` call.  The result computes exactly what the program computes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import fx, nn

from specialist.errors import DataError, InputError

log = logging.getLogger(__name__)

aten = torch.ops.aten


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """``torch.export.load`` with a one-line :class:`DataError` for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported program {path} does not exist")
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file
        raise DataError(f"{path} is not a torch.export program: {str(exc).splitlines()[0][:200]}") from None


def _owner(target: str) -> str:
    return target.rsplit(".", 1)[0] if "." in target else target


def _unique(name: str, taken: set[str]) -> str:
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _conv(w: torch.Tensor, b, stride, padding, dilation, groups) -> nn.Module:
    nd = w.dim() - 2
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(nd)
    if cls is None:
        raise InputError(f"convolution with a {w.dim()}-d weight is not supported")
    if isinstance(padding, str):
        raise InputError(f"convolution padding {padding!r} is not supported in .pt2 programs")
    m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=b is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m


def _bn(w, b, rm, rv, eps) -> nn.Module:
    c = rm.shape[0]
    m = nn.BatchNorm2d(c, eps=float(eps), affine=w is not None)
    with torch.no_grad():
        if w is not None:
            m.weight.copy_(w)
            m.bias.copy_(b if b is not None else torch.zeros(c))
        m.running_mean.copy_(rm)
        m.running_var.copy_(rv)
    return m


def _linear(w, b) -> nn.Module:
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)
    return m


def program_to_module(ep: torch.export.ExportedProgram) -> tuple[fx.GraphModule, tuple[int, ...]]:
    """The program as an eval-mode ``GraphModule`` with real conv/BN/linear modules, and its input shape
    (one image, batch dimension dropped)."""
    sig = ep.graph_signature
    tensors: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}  # placeholder name -> fully qualified target
    for spec in sig.input_specs:
        arg = getattr(spec.arg, "name", None)
        if spec.target is None or arg is None:
            continue
        names[arg] = spec.target
        if spec.target in ep.state_dict:
            tensors[arg] = ep.state_dict[spec.target]
        elif spec.target in ep.constants:
            tensors[arg] = ep.constants[spec.target]
    user = list(sig.user_inputs)
    if len(user) != 1:
        raise InputError(f"the exported program takes {len(user)} inputs; one image tensor is supported")

    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    modules: dict[str, nn.Module] = {}
    taken: set[str] = set()
    consts: dict[str, torch.Tensor] = {}
    shape: tuple[int, ...] = ()

    def tensor(a):
        return tensors.get(a.name) if isinstance(a, fx.Node) else None

    def arg(a):
        if isinstance(a, fx.Node):
            if a.name in env:
                return env[a.name]
            if a.name in tensors:  # a parameter used as a plain operand: keep it as an attribute
                attr = _unique("const_" + a.name, taken)
                consts[attr] = tensors[a.name]
                env[a.name] = graph.get_attr(attr)
                return env[a.name]
            raise InputError(f"exported program node {a.name} has no value")
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in user:
                env[node.name] = graph.placeholder(node.name)
                val = node.meta.get("val")
                if val is not None:
                    shape = tuple(int(d) for d in val.shape[1:])
            continue
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (list, tuple)) and len(out) == 1:  # export wraps a single output in a tuple
                out = out[0]
            graph.output(arg(out))
            continue
        if node.op != "call_function":
            raise InputError(f"exported program node {node.name} ({node.op}) is not supported")
        a = node.args
        target = node.target
        mod = None
        if target in (aten.conv2d.default, aten.conv1d.default) and tensor(a[1]) is not None:
            w = tensor(a[1])
            b = tensor(a[2]) if len(a) > 2 and a[2] is not None else None
            nd = w.dim() - 2
            stride, padding, dilation, groups = (list(a[3:]) + [None] * 4)[:4]
            mod = _conv(w, b, stride or [1] * nd, padding if padding is not None else [0] * nd,
                        dilation or [1] * nd, groups or 1)
        elif target == aten.batch_norm.default and tensor(a[3]) is not None and not a[5]:
            mod = _bn(tensor(a[1]), tensor(a[2]), tensor(a[3]), tensor(a[4]), a[7])
        elif target == aten.linear.default and tensor(a[1]) is not None:
            mod = _linear(tensor(a[1]), tensor(a[2]) if len(a) > 2 and a[2] is not None else None)
        if mod is not None:
            name = _unique(_owner(names.get(a[1].name, node.name)), taken)
            modules[name] = mod.eval()
            env[node.name] = graph.call_module(name, (arg(a[0]),))
        else:
            env[node.name] = graph.call_function(target, arg(a), {k: arg(v) for k, v in node.kwargs.items()})
    root = nn.Module()
    for name, m in modules.items():
        parent = root
        *path, last = name.split(".")
        for p in path:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(last, m)
    for name, t in consts.items():
        root.register_buffer(name, t.clone())
    gm = fx.GraphModule(root, graph, class_name="ExportedCNN")
    log.debug("program -> module: %d modules, %d constants", len(modules), len(consts))
    return gm.eval(), shape

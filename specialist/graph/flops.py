"""FLOPs of any model on its traced forward pass (``torch.utils.flop_counter.FlopCounterMode``), per layer.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions, linears and matrix products (the
convention of the paper's Table 1 and of ``specialist.flops`` for NIN); element-wise ops, pooling and
BatchNorm count 0.  :func:`flop_table` gives one row per leaf layer that does FLOPs, Table-1-like:
layer, type, in -> out channels, kernel, output size, FLOPs and share of the total.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopRow:
    """One layer of the FLOPs table."""

    layer: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: str
    output: str
    flops: int
    share_pct: float


@torch.no_grad()
def layer_flops(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, int], dict[str, tuple]]:
    """FLOPs per leaf module name for one forward pass on ``example`` (batch 1 gives per-image FLOPs), and
    each leaf's output shape."""
    shapes: dict[str, tuple] = {}
    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, _i, out: shapes.__setitem__(names[mod], tuple(out.shape)))
             for m in leaves]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    per_module = counter.get_flop_counts()
    out: dict[str, int] = {}
    for name in shapes:
        key = f"{type(model).__name__}.{name}" if name else type(model).__name__
        # FlopCounterMode keys modules by their path under the root's class name ("Global" = everything)
        counts = per_module.get(key) or per_module.get(name) or {}
        total = int(sum(counts.values()))
        if total:
            out[name] = total
    return out, shapes


def total_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example`` (all ops FlopCounterMode counts)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(example)
    return int(counter.get_total_flops())


def _describe(m: nn.Module) -> tuple[str, int, int, str]:
    if isinstance(m, nn.Linear):
        return "linear", m.in_features, m.out_features, "-"
    if isinstance(m, nn.modules.conv._ConvNd):
        kind = "depthwise conv" if m.groups > 1 and m.groups == m.in_channels else "conv"
        return kind, m.in_channels, m.out_channels, "x".join(str(k) for k in m.kernel_size)
    return type(m).__name__, 0, 0, "-"


def flop_table(model: nn.Module, example: torch.Tensor) -> list[FlopRow]:
    """Table-1-like rows, in forward order, for every layer that does FLOPs (``example``: batch 1)."""
    flops, shapes = layer_flops(model, example)
    modules = dict(model.named_modules())
    total = sum(flops.values()) or 1
    rows = []
    for name, f in flops.items():
        m = modules[name]
        inner = getattr(m, "layer", m)  # a compensated layer (surgery.ConstAdd) counts as its layer
        kind, cin, cout, kernel = _describe(inner)
        out = "x".join(str(d) for d in shapes[name][1:])
        rows.append(FlopRow(name, kind, cin, cout, kernel, out, f, 100.0 * f / total))
    return rows


def format_table(rows: list[FlopRow]) -> str:
    """The rows as aligned text with a total line."""
    head = f"{'layer':<28} {'type':<15} {'in->out':>11} {'kernel':>6} {'output':>10} {'MFLOPs':>9} {'%':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.layer:<28} {r.kind:<15} {f'{r.in_channels}->{r.out_channels}':>11} {r.kernel:>6} "
                     f"{r.output:>10} {r.flops / 1e6:9.3f} {r.share_pct:6.2f}")
    lines.append(f"{'total':<28} {'':<15} {'':>11} {'':>6} {'':>10} {sum(r.flops for r in rows) / 1e6:9.3f} "
                 f"{100.0 if rows else 0.0:6.2f}")
    return "\n".join(lines)


def rows_as_dicts(rows: list[FlopRow]) -> list[dict]:
    """JSON-ready rows."""
    return [asdict(r) for r in rows]

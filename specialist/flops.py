"""FLOPs and parameters per layer, in the paper's Table 1 format (2 FLOPs per MAC, convolutions only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from specialist.model import NIN_LAYERS, LayerSpec


@dataclass(frozen=True)
class LayerCost:
    name: str
    output_size: str
    maps_before: int
    maps_after: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    @property
    def flops_pruned_pct(self) -> float:
        return 100.0 * (1 - self.flops_after / self.flops_before) if self.flops_before else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["flops_pruned_pct"] = round(self.flops_pruned_pct, 3)
        return d


def conv_flops(spec: LayerSpec, in_ch: int, out_ch: int) -> int:
    """2 x MACs of one convolution at its (stride 1, same-size) output resolution."""
    return 2 * spec.kernel * spec.kernel * in_ch * out_ch * spec.in_hw * spec.in_hw


def conv_params(spec: LayerSpec, in_ch: int, out_ch: int) -> int:
    return spec.kernel * spec.kernel * in_ch * out_ch + out_ch


def layer_costs(channels: dict[str, int]) -> list[LayerCost]:
    """Per-layer costs of a network whose layer output widths are ``channels`` vs the full NIN."""
    out = []
    prev_before, prev_after = 3, 3
    for spec in NIN_LAYERS:
        after = int(channels[spec.name])
        out.append(LayerCost(
            spec.name, f"{spec.in_hw}x{spec.in_hw}", spec.out_ch, after,
            conv_params(spec, prev_before, spec.out_ch), conv_params(spec, prev_after, after),
            conv_flops(spec, prev_before, spec.out_ch), conv_flops(spec, prev_after, after),
        ))
        prev_before, prev_after = spec.out_ch, after
    return out


def total_flops(channels: dict[str, int]) -> int:
    return sum(c.flops_after for c in layer_costs(channels))


BASE_FLOPS: int = sum(c.flops_before for c in layer_costs({s.name: s.out_ch for s in NIN_LAYERS}))


def flops_table_markdown(costs: list[LayerCost]) -> str:
    """Table 1 layout: layer, output size, maps, params, FLOPs before/after, % pruned."""
    lines = ["| layer | output | maps before | maps after | params after | FLOPs before | FLOPs after | FLOPs pruned % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in costs:
        lines.append(f"| {c.name} | {c.output_size} | {c.maps_before} | {c.maps_after} | {c.params_after:,} | "
                     f"{c.flops_before:.3g} | {c.flops_after:.3g} | {c.flops_pruned_pct:.1f} |")
    fb = sum(c.flops_before for c in costs)
    fa = sum(c.flops_after for c in costs)
    lines.append(f"| TOTAL | | | | {sum(c.params_after for c in costs):,} | {fb:.3g} | {fa:.3g} | "
                 f"{100 * (1 - fa / fb):.1f} |")
    return "\n".join(lines)

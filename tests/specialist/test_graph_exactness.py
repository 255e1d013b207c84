"""Exactness of the graph machinery on NIN (zoo name ``nin``) and on every zoo model's exported program.

- NIN as a torch module (the shipped weights) goes through the same graph builder as the ResNets: its groups
  are the chain of nine convolutions, a mean-compensated specialist equals the unpruned NIN with the removed
  channels replaced by their per-position means (the hooked reference of ``graphref``) within 1e-4, and it
  equals the ORIGINAL NIN path's exact mean compensation (``specialist.build.apply_plan``) for the same plan.
- Exported programs (torch.export + ExecuTorch XNNPACK, run by the ExecuTorch runtime) of pruned,
  compensated NIN, ResNet-20/56, MobileNetV2, VGG-16-BN and the concatenation model match PyTorch within 1e-4
  (slow: one lowering each).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from specialist.errors import DataError
from specialist.graph.groups import analyse
from specialist.graph.source import load_model, model_kind
from specialist.graph.stats import collect_stats, uniform_keep
from specialist.graph.surgery import ConstAdd, prune
from specialist.model import LAYER_NAMES, PRUNABLE, build_module, load_weights
from specialist.zoo import zoo_model
from tests.specialist.graphref import ConcatNet, hooked_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = [1, 3, 5]


def _pixels(n: int, seed: int) -> torch.Tensor:
    """``n`` random 0-255 RGB images normalised as NIN expects (real-scale inputs, no data files needed)."""
    g = torch.Generator().manual_seed(seed)
    lm_desc = load_model("nin").description
    return lm_desc.normalize(torch.randint(0, 256, (n, 32, 32, 3), generator=g))


@pytest.fixture(scope="module")
def nin():
    """The shipped NIN through the graph builder, with statistics of 30 images (3 per class)."""
    lm = load_model("nin")
    graph = analyse(lm.module, lm.example())
    x = _pixels(30, 0)
    stats = collect_stats(graph, x, torch.arange(30) % 10, 10)
    return lm, graph, stats


def test_nin_zoo_name_is_the_shipped_network(tmp_path):
    lm = load_model("nin")
    assert model_kind("nin") == "zoo" and lm.description.num_classes == 10
    base = load_weights()
    assert lm.description.mean == pytest.approx(tuple(base.input_mean)) and lm.description.source.endswith(".npz")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(lm.module(x), build_module(base)(x))  # the same module, bit for bit
    rnd, _ = zoo_model("nin", pretrained=False, seed=1)
    assert not torch.equal(rnd.convs[0].weight, lm.module.convs[0].weight)
    bad = tmp_path / "bad.npz"
    np.savez(bad, junk=np.zeros(3))
    with pytest.raises(DataError, match="lack CONV1.weight") as info:
        load_model("nin", weights=bad)
    assert "\n" not in str(info.value)


def test_nin_groups_are_the_chain(nin):
    _, graph, _ = nin
    assert graph.classifier == "convs.8" and len(graph.groups) == 8
    for i, g in enumerate(graph.groups):
        assert g.producers == (f"convs.{i}",) and [c.module for c in g.consumers] == [f"convs.{i + 1}"]
        assert list(g.consumers[0].in_idx) == list(range(g.size)) == list(g.consumers[0].root_idx)
    assert not graph.groups[0].prunable and all(g.prunable for g in graph.groups[1:])  # CONV1 intact


def test_nin_prunes_exactly_against_the_hooked_reference(nin):
    _, graph, stats = nin
    keep = uniform_keep(graph, 30, stats, CLASSES)
    pruned, report = prune(graph, keep, CLASSES, stats)
    x = _pixels(4, 1)
    ref = hooked_reference(graph, stats, keep, CLASSES, x)
    with torch.no_grad():
        out = pruned(x)
        full = graph.model(x)[:, CLASSES]
    err, effect = float((out - ref).abs().max()), float((full - ref).abs().max())
    assert out.shape == (4, 3) and err < 1e-4, err
    assert effect > 100 * max(err, 1e-6), effect  # the pruning changed the scores: the check could fail
    assert report.per_position  # padded 5x5 / 3x3 convolutions: per-position constants, as the NIN path makes
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9 and convs[-1].out_channels == 3
    assert [c.out_channels for c in convs[1:8]] == [len(keep[f"convs.{i}"]) for i in range(1, 8)]


def test_nin_graph_specialist_equals_the_nin_path(nin):
    """Same plan (the paper's: CONV1 and CCCP1 intact), exact mean compensation: the graph surgery and the
    original NIN surgery (``apply_plan``, numpy) give the same network."""
    from specialist.build import apply_plan, with_overrides
    from specialist.methods import get_method
    from specialist.stats import SubsetStats

    lm, graph, stats = nin
    keep = uniform_keep(graph, 40, stats, CLASSES)
    keep.pop("convs.1")  # CCCP1 is intact on the NIN path (PRUNABLE)
    assert [LAYER_NAMES[int(r.split(".")[1])] for r in keep] == list(PRUNABLE)
    pruned_g, _ = prune(graph, keep, CLASSES, stats)
    sub = SubsetStats(np.asarray(CLASSES), 9)
    pruned_idx = {}
    for i, name in enumerate(LAYER_NAMES[:-1]):
        mean = stats.subset(stats.mean, f"convs.{i + 1}", CLASSES).numpy()  # layer i's output = i+1's input
        c = mean.shape[0]
        sub.mean[name], sub.corr[name], sub.gram[name] = mean, np.zeros((c, c)), np.zeros((c, c))
        if name in PRUNABLE:
            pruned_idx[name] = np.setdiff1d(np.arange(c), keep[f"convs.{i}"])
    method = with_overrides(get_method("mean"), {"fold": "exact"})
    w_nin, kept = apply_plan(load_weights(), CLASSES, pruned_idx, sub, method)
    assert all(kept[LAYER_NAMES[i]] == list(keep[f"convs.{i}"]) for i in range(2, 8))
    assert set(w_nin.consts) == {"CONV2", "CCCP3", "CCCP4", "CONV3", "CCCP5", "CCCP6"}
    x = _pixels(4, 2)
    with torch.no_grad():
        a, b, full = pruned_g(x), build_module(w_nin)(x), graph.model(x)[:, CLASSES]
    assert float((a - b).abs().max()) < 1e-5  # measured 0.0: the same float64 constants, the same slicing
    assert float((full - b).abs().max()) > 1e-2  # and the pruning changed the scores


# ------------------------------------------------------------------------ exported programs (slow)


def _pruned(name: str):
    """A pruned, mean-compensated (exact fold) model and its input shape."""
    torch.manual_seed(0)
    if name == "concat":
        model, shape = ConcatNet().eval(), (3, 8, 8)
    else:
        model, desc = zoo_model(name, pretrained=name == "nin")
        shape = desc.input_shape
    graph = analyse(model, torch.zeros(1, *shape))
    x = _pixels(10, 3) if name == "nin" else torch.randn(10, *shape)
    stats = collect_stats(graph, x, torch.arange(10), 10)
    pruned, report = prune(graph, uniform_keep(graph, 30, stats, CLASSES), CLASSES, stats)
    return model, pruned, report, shape


def _conv_width(m: nn.Module) -> int:
    return sum(c.in_channels + c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.slow  # one ExecuTorch lowering each: 20-90 s on the shared 2-core machine
@pytest.mark.parametrize("name", ["nin", "resnet20", "resnet56", "mobilenetv2", "vgg16_bn", "concat"])
def test_exported_program_matches_pytorch(name, tmp_path):
    from executorch.runtime import Runtime

    from specialist.graph.export import lower_module

    model, pruned, report, shape = _pruned(name)
    assert _conv_width(pruned) < 0.85 * _conv_width(model)  # physically smaller (concat: 0.80, zoo: 0.70-0.74)
    path = tmp_path / f"{name}.pte"
    path.write_bytes(lower_module(pruned, shape, "xnnpack"))
    method = Runtime.get().load_program(str(path)).load_method("forward")
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        x = torch.randn((1, *shape), generator=g)
        got = method.execute([x])[0]
        with torch.no_grad():
            want = pruned(x)
        assert got.shape == (1, len(CLASSES))
        assert float((got - want).abs().max()) < 1e-4 * max(1.0, float(want.abs().max())), name
    if name in ("nin", "concat"):  # padded convolutions after a pruned group: the per-position constants travel
        assert report.per_position and any(isinstance(m, ConstAdd) for m in pruned.modules())

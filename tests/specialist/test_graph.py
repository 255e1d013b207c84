"""Any CNN: channel groups, refusal, FLOPs, statistics, surgery with mean compensation (exactness), export.

Exactness: the pruned network equals the ORIGINAL network in which every consumer of a removed channel sees
that channel's per-position mean (over the target classes' images) instead of its value: a reference built
here with forward pre-hooks on the unpruned model, independent of the surgery code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specialist.errors import InputError, UsageError
from specialist.graph.flops import flop_table, format_table, total_flops
from specialist.graph.groups import analyse
from specialist.graph.stats import collect_stats, uniform_keep
from specialist.graph.surgery import ConstAdd, prune
from specialist.zoo import zoo_model
from tests.specialist.graphref import ConcatNet, hooked_reference

CLASSES = [1, 3, 5]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SENet(nn.Module):
    """A squeeze-excitation gate: ``x * sigmoid(fc(pool(x)))``, which the builder refuses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        s = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        return self.head(x * s).mean((2, 3))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.grouped(torch.relu(self.conv(x))).mean((2, 3)))


def _exactness(model, shape, level=30, n_stats=20, fold="exact"):
    torch.manual_seed(0)
    graph = analyse(model.eval(), torch.zeros(1, *shape))
    x = torch.randn(n_stats, *shape)
    y = torch.arange(n_stats) % 10
    stats = collect_stats(graph, x, y, 10)
    keep = uniform_keep(graph, level, stats, CLASSES)
    pruned, report = prune(graph, keep, CLASSES, stats, fold=fold)
    xt = torch.randn(4, *shape)
    ref = hooked_reference(graph, stats, keep, CLASSES, xt)
    with torch.no_grad():
        out = pruned(xt)
        full = graph.model(xt)[:, CLASSES]
    assert out.shape == (4, len(CLASSES))
    err = float((out - ref).abs().max())
    effect = float((full - ref).abs().max())
    return graph, pruned, report, err, effect


@pytest.fixture(scope="module")
def mobilenet_graph():
    model, _ = zoo_model("mobilenetv2", pretrained=False)
    return analyse(model, torch.zeros(1, 3, 16, 16))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 16, 16)), ("resnet56", (3, 8, 8)),
                                        ("mobilenetv2", (3, 16, 16)), ("vgg16_bn", (3, 32, 32))])
def test_zoo_models_prune_exactly(name, shape):
    model, _ = zoo_model(name, pretrained=False)
    graph, pruned, report, err, effect = _exactness(model, shape, n_stats=20 if name in ("resnet20", "mobilenetv2") else 10)
    assert err < 1e-4, (name, err)
    assert effect > 100 * max(err, 1e-6), (name, effect)  # the pruning mattered: the test could fail
    assert _params(pruned) < 0.8 * _params(model)
    assert not any(isinstance(m, nn.Identity) for m in pruned.modules())
    assert report.compensated and set(report.removed) == {g.root for g in graph.prunable}


def test_resnet20_groups_follow_the_residual_streams():
    model, _ = zoo_model("resnet20", pretrained=False)
    graph = analyse(model, torch.zeros(1, 3, 16, 16))
    by_root = {g.root: g for g in graph.groups}
    stream1 = next(g for g in graph.groups if "conv1" in g.producers)
    assert set(stream1.producers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert not stream1.prunable and "first layer" in stream1.note
    stream3 = next(g for g in graph.groups if "layer3.0.shortcut.0" in g.producers)
    assert {c.module for c in stream3.consumers} == {"layer3.1.conv1", "layer3.2.conv1", "fc"}
    assert "layer3.0.shortcut.1" in stream3.members  # the shortcut's BatchNorm is sliced with it
    assert len(graph.groups) == 12 and len(graph.prunable) == 11 and graph.classifier == "fc"
    assert by_root["layer1.0.conv1"].consumers[0].module == "layer1.0.conv2"


def test_mobilenetv2_depthwise_ties_input_to_output(mobilenet_graph):
    graph = mobilenet_graph
    g = next(g for g in graph.groups if "features.2.conv.0.0" in g.producers)  # an expansion 1x1
    assert "features.2.conv.1.0" in g.members  # its depthwise conv is sliced with it...
    assert [c.module for c in g.consumers] == ["features.2.conv.2"]  # ...and compensation is at the projection


def test_concat_and_flatten_map_channels_by_offset_and_position():
    torch.manual_seed(1)
    graph = analyse(ConcatNet().eval(), torch.zeros(1, 3, 8, 8))
    gb = next(g for g in graph.groups if g.producers == ("b.0",))
    (mix,) = gb.consumers
    assert mix.module == "mix" and list(mix.in_idx) == [6 + r for r in mix.root_idx]
    gm = next(g for g in graph.groups if g.producers == ("mix",))
    (fc,) = gm.consumers
    assert fc.module == "fc" and sorted(zip(fc.root_idx, fc.in_idx, strict=True)) == [(c, 4 * c + p) for c in range(12)
                                                                        for p in range(4)]


def test_concat_model_prunes_exactly_with_per_position_constants():
    torch.manual_seed(1)
    model = ConcatNet().eval()
    graph, pruned, report, err, effect = _exactness(model, (3, 8, 8), level=40)
    assert err < 1e-4 and effect > 100 * max(err, 1e-6)
    assert "mix" in report.per_position and isinstance(pruned.mix, ConstAdd)  # padded borders: not constant
    assert pruned.mix.layer.in_channels < 11 and pruned.fc.in_features < 48


def test_bias_fold_is_the_spatial_mean_and_leaves_no_extra_node():
    torch.manual_seed(1)
    graph, pruned, report, err, _ = _exactness(ConcatNet().eval(), (3, 8, 8), level=40, fold="bias")
    assert not report.per_position and not any(isinstance(m, ConstAdd) for m in pruned.modules())
    assert report.max_fold_deviation and err > 0


@pytest.mark.parametrize("model,match", [(SENet(), "aten.mul of two activations.*squeeze"),
                                         (GroupedNet(), "grouped convolution.*grouped")])
def test_unsupported_ops_are_refused_before_any_work(model, match, monkeypatch):
    import specialist.graph.groups as groups

    def must_not_run(*a, **k):
        raise AssertionError("dependency graph built for a refused model")

    monkeypatch.setattr(groups, "build_dependency_graph", must_not_run)
    with pytest.raises(InputError, match=match) as info:
        analyse(model.eval(), torch.zeros(1, 3, 8, 8))
    assert "\n" not in str(info.value)


def test_unknown_op_is_named_with_its_node():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.cumsum(self.conv(x), 1).mean((2, 3))

    with pytest.raises(InputError, match=r"aten\.cumsum at node 'cumsum'"):
        analyse(Odd().eval(), torch.zeros(1, 3, 4, 4))


def test_surgery_refuses_bad_plans():
    torch.manual_seed(1)
    graph = analyse(ConcatNet().eval(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UsageError, match="roots no channel group"):
        prune(graph, {"nope": [0]}, CLASSES, None)
    stem = next(g for g in graph.groups if not g.prunable)
    with pytest.raises(UsageError, match="not prunable"):
        prune(graph, {stem.root: [0]}, CLASSES, None)
    with pytest.raises(UsageError, match="classes"):
        prune(graph, {}, [10], None)
    with pytest.raises(UsageError, match="level"):
        uniform_keep(graph, 100)


def test_statistics_are_per_class_means():
    torch.manual_seed(2)
    graph = analyse(ConcatNet().eval(), torch.zeros(1, 3, 8, 8))
    x, y = torch.randn(12, 3, 8, 8), torch.tensor([0, 1, 2] * 4)
    stats = collect_stats(graph, x, y, 3, batch=5, gram=True)
    seen = []
    h = graph.modules["mix"].register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        graph.model(x)
    h.remove()
    a = seen[0].double()
    assert torch.allclose(stats.mean["mix"][1], a[y == 1].mean(0), atol=1e-6)
    assert torch.allclose(stats.abs_mean["mix"][2], a[y == 2].abs().mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(stats.sq_mean["mix"][0], a[y == 0].square().mean((0, 2, 3)), atol=1e-6)
    f = a[y == 0].permute(1, 0, 2, 3).reshape(11, -1)
    assert torch.allclose(stats.gram["mix"][0], f @ f.T / (4 * 64), atol=1e-6)
    assert set(stats.mean) == set(graph.consumers())
    sub = stats.subset(stats.mean, "fc", [0, 2])
    assert torch.allclose(sub, (stats.mean["fc"][0] + stats.mean["fc"][2]) / 2)


def test_flops_table_counts_the_traced_graph():
    model, _ = zoo_model("resnet20", pretrained=False)
    ex = torch.zeros(1, 3, 32, 32)
    rows = flop_table(model, ex)
    assert rows[0].layer == "conv1" and rows[0].flops == 2 * 16 * 3 * 9 * 32 * 32
    assert rows[-1].layer == "fc" and rows[-1].flops == 2 * 64 * 10
    assert sum(r.flops for r in rows) == total_flops(model, ex) == 81_626_368
    assert abs(sum(r.share_pct for r in rows) - 100) < 1e-6 and "total" in format_table(rows)

"""Graph specialists without the CLI: artifact round trip, least-squares refit, criteria, save/rebuild."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from specialist.errors import ArtifactError, UsageError
from specialist.graph.artifact import load_stats, model_hash, read_stats, stats_to_bytes
from specialist.graph.groups import analyse
from specialist.graph.source import LoadedModel
from specialist.graph.specialize import (
    build_graph_specialist,
    graph_method,
    rebuild,
    specialist_bytes,
)
from specialist.graph.stats import collect_stats
from specialist.graph.surgery import prune
from specialist.zoo import ModelDescription


class FlatNet(nn.Module):
    """conv -> conv (prunable group) -> flatten -> Linear classifier (the group's only consumer)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.c1 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = torch.relu(self.c0(x))
        x = torch.relu(self.c1(x))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = FlatNet().eval()
    desc = ModelDescription("flat", (3, 8, 8), 5, (0.0,) * 3, (1.0,) * 3, "test")
    loaded = LoadedModel(model, desc)
    graph = analyse(model, loaded.example())
    # correlated inputs: a few latent factors, so kept channels predict removed ones
    z = torch.randn(600, 4, 8, 8)
    x = torch.einsum("nfhw,fc->nchw", z, torch.randn(4, 3)) + 0.1 * torch.randn(600, 3, 8, 8)
    y = torch.arange(600) % 5
    stats = collect_stats(graph, x, y, 5, gram=True)
    return loaded, graph, stats, x, y


def test_artifact_round_trip_and_model_check(setup, tmp_path):
    loaded, graph, stats, _, _ = setup
    h = model_hash(loaded.module, loaded.description)
    p = tmp_path / "a.npz"
    p.write_bytes(stats_to_bytes(stats, graph, h, loaded.description, {"per_class": 120}))
    back, meta = load_stats(p, h)
    assert meta["schema_version"] == 2 and meta["per_class"] == 120
    assert [g["root"] for g in meta["groups"]] == [g.root for g in graph.groups]
    for table in ("mean", "abs_mean", "sq_mean", "gram"):
        a, b = getattr(stats, table), getattr(back, table)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = FlatNet()
    with pytest.raises(ArtifactError, match="another model"):
        load_stats(p, model_hash(other, loaded.description))
    p.write_bytes(b"not an npz")
    with pytest.raises(ArtifactError, match="not a statistics artifact"):
        read_stats(p)


def test_lsq_beats_mean_compensation_in_sample(setup):
    """OLS residuals are minimal in the PSD order, so the classifier's output error of an lsq refit is below
    mean compensation's on the calibration images (ridge small)."""
    loaded, graph, stats, x, y = setup
    keep = {graph.prunable[0].root: [0, 2, 5, 7]}
    classes = [0, 1, 2, 3, 4]
    with torch.no_grad():
        ref = loaded.module(x)
        errs = {}
        for comp in ("none", "mean", "lsq"):
            m, rep = prune(graph, keep, classes, stats, compensation=comp, ridge=1e-6)
            errs[comp] = float((m(x) - ref).square().mean())
    assert rep.refit == ["fc"]
    assert errs["lsq"] < errs["mean"] < errs["none"], errs


@pytest.mark.parametrize("criterion", ["l1", "activation", "variance", "wvar"])
def test_methods_build_and_rebuild(setup, criterion):
    loaded, graph, stats, x, _ = setup
    name = {"activation": "activation", "l1": "l1", "variance": "variance", "wvar": "lsq"}[criterion]
    spec = build_graph_specialist(loaded, stats, [1, 3], 50, graph_method(name), graph=graph,
                                  base={"spec": "test"})
    assert spec.method.criterion == criterion
    assert spec.report.kept == {graph.prunable[0].root: 4} and spec.flops < spec.flops_base
    d = torch.load(io.BytesIO(specialist_bytes(spec)), weights_only=True)
    again = rebuild(loaded, d)
    with torch.no_grad():
        assert torch.equal(again(x[:7]), spec.module(x[:7]))
        assert spec.module(x[:7]).shape == (7, 2)


def test_unsupported_method_refused():
    with pytest.raises(UsageError, match="supported on graph models: paper, paper-grad"):
        graph_method("nope")
    with pytest.raises(UsageError, match="--compensation bogus"):
        graph_method("l1", compensation="bogus")


def test_impact_criterion_orders_by_variance_times_weight(setup):
    from specialist.graph.stats import channel_scores, within_variance

    loaded, graph, stats, _, _ = setup
    g = graph.prunable[0]
    s = channel_scores(graph, stats, g, [0, 1], "wvar")
    var = within_variance(stats, "fc", [0, 1]).numpy()
    w = loaded.module.fc.weight.detach().double()[[0, 1]].square().sum(0).numpy()
    expect = np.zeros(g.size)
    c = g.consumers[0]
    np.add.at(expect, np.asarray(c.root_idx), (var * w)[np.asarray(c.in_idx)])
    np.testing.assert_allclose(s, expect, rtol=1e-10)

"""Calibration-driven sequential reconstruction on graph models (``recon``, specialist/graph/recon.py).

Exactness on small models (nothing pruned: the original; a duplicated channel: absorbed exactly), the shipped
ResNet-20 on calibration images (best's FLOPs, a smaller reconstruction error of the target-class scores than
``best``, save and rebuild), torch.export of the result on the concatenation model, VGG-16-BN and MobileNetV2,
and the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from specialist.errors import UsageError
from specialist.graph.groups import analyse
from specialist.graph.recon import Moments, measure, reconstruct, refit
from specialist.graph.source import LoadedModel, load_model
from specialist.graph.specialize import (
    build_graph_specialist,
    graph_method,
    read_specialist_file,
    rebuild,
    specialist_bytes,
)
from specialist.graph.stats import collect_stats
from specialist.zoo import ModelDescription, zoo_model
from tests.harness.userpkg import run
from tests.specialist.graphref import ConcatNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loaded(model: nn.Module, shape=(3, 16, 16)) -> LoadedModel:
    return LoadedModel(model.eval(), ModelDescription("test", shape, 10, (0.0,) * 3, (1.0,) * 3, "test"))


def _stats(graph, n: int, shape, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(n, *shape)
    return collect_stats(graph, x, torch.arange(n) % 10, 10, gram=True)


def _concat(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ConcatNet().eval()
    with torch.no_grad():  # BatchNorm statistics that keep unit-scale activations
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def test_refit_is_the_identity_when_nothing_changed():
    """x_s = x_o and every input kept: every consumer's refit gives back its weights and no constant."""
    model = _concat()
    graph = analyse(model, torch.zeros(1, 3, 16, 16))
    x = torch.randn(40, 3, 16, 16)
    mom = measure(model, model, x, graph.consumers(), graph.consumers())
    for name, m in mom.items():
        assert isinstance(m, Moments) and m.drift == 0.0
        m_s, m_o, g, c, _ = m.centred()
        layer = graph.modules[name]
        new, const = refit(layer, m_s, m_o, g, c, list(range(g.shape[0])), ridge=1e-2, spatial=m.spatial)
        np.testing.assert_allclose(new.numpy(), layer.weight.detach().double().numpy(), atol=1e-9, rtol=1e-7)
        assert float(const.abs().max()) < 1e-9


def test_nothing_pruned_gives_back_the_original_outputs():
    model = _concat()
    graph = analyse(model, torch.zeros(1, 3, 16, 16))
    x = torch.randn(30, 3, 16, 16)
    keep, module, report = reconstruct(graph, {}, [2, 5, 7], x)
    assert all(len(v) == g.size for g in graph.prunable for v in [keep[g.root]])
    t = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(t), model(t)[:, [2, 5, 7]], atol=1e-5, rtol=1e-5)


def test_a_duplicated_channel_is_pruned_and_absorbed_exactly():
    """Branch ``a`` (read by ``mix`` through a concatenation) gets channel 4 = channel 2 (filter and BatchNorm):
    pruning one channel of its group removes one of the two and the refit reproduces the original on any input."""
    model = _concat(1)
    with torch.no_grad():
        conv, bn = model.a[0], model.a[1]
        for p in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            p[4] = p[2]
    graph = analyse(model, torch.zeros(1, 3, 16, 16))
    root = next(g.root for g in graph.prunable if "a.0" in g.producers)
    x = torch.randn(200, 3, 16, 16)
    keep, module, _ = reconstruct(graph, {root: 1}, list(range(10)), x, ridge=1e-10)
    assert len(keep[root]) == 5 and {2, 4} - set(keep[root])
    t = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        ref = model(t)
        torch.testing.assert_close(module(t), ref, atol=1e-4 * max(1.0, float(ref.abs().max())), rtol=0)


@pytest.fixture(scope="module")
def r20(data_dir):
    """The shipped ResNet-20, a small artifact (10 calibration images per class) and calibration images."""
    from specialist.data import load_split

    loaded = load_model("resnet20")
    graph = analyse(loaded.module, loaded.example())
    calib = load_split("calib", data_dir)
    sub = calib.select(range(10), per_class=10)
    st = collect_stats(graph, loaded.description.normalize(sub.x), sub.y.astype(np.int64), 10, gram=True)
    return loaded, graph, st, calib


def test_resnet20_recon_has_best_flops_and_reconstructs_the_scores_better(r20, data_dir, tmp_path):
    loaded, graph, st, calib = r20
    classes, level = [2, 3, 5], 40
    best = build_graph_specialist(loaded, st, classes, level, graph_method("best"), graph=graph)
    recon = build_graph_specialist(loaded, st, classes, level, graph_method("recon", calib_per_class=16),
                                   graph=graph, calib=data_dir)
    assert recon.flops == best.flops and recon.flops_pruned_pct > 40
    assert {r: len(v) for r, v in recon.keep.items()} == {r: len(v) for r, v in best.keep.items()}
    assert recon.report.refit and "fc" in recon.report.refit
    x = loaded.description.normalize(calib.select(classes, per_class=16).x)
    with torch.no_grad():
        ref = loaded.module(x)[:, classes]
        err_best = float((best.module(x) - ref).square().mean())
        err_recon = float((recon.module(x) - ref).square().mean())
    assert err_recon < 0.7 * err_best, (err_recon, err_best)
    d = read_specialist_file(_write(tmp_path / "r.pt", specialist_bytes(recon)))
    again = rebuild(loaded, d, graph)
    with torch.no_grad():
        torch.testing.assert_close(again(x), recon.module(x), atol=0, rtol=0)


def _write(path, blob: bytes):
    path.write_bytes(blob)
    return path


def _exported_matches(spec, shape) -> None:
    x = torch.randn(3, *shape)
    prog = torch.export.export(spec.module.eval(), (x,))
    with torch.no_grad():
        ref = spec.module(x)
        torch.testing.assert_close(prog.module()(x), ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=0)


def _zoo_recon(name: str, shape, fold: str = "exact"):
    torch.manual_seed(0)
    model, _ = zoo_model(name, pretrained=False)
    loaded = _loaded(model, shape)
    graph = analyse(loaded.module, loaded.example())
    st = _stats(graph, 20, shape)
    x = torch.randn(24, *shape)
    best = build_graph_specialist(loaded, st, [1, 3, 5], 30, graph_method("best"), graph=graph)
    spec = build_graph_specialist(loaded, st, [1, 3, 5], 30, graph_method("recon", fold=fold), graph=graph, calib=x)
    assert spec.flops == best.flops < spec.flops_base
    return spec


def test_concat_model_recon_exports():
    shape = (3, 16, 16)
    loaded = _loaded(_concat(2), shape)
    graph = analyse(loaded.module, loaded.example())
    st = _stats(graph, 30, shape)
    x = torch.randn(30, *shape)
    best = build_graph_specialist(loaded, st, [0, 4], 40, graph_method("best"), graph=graph)
    spec = build_graph_specialist(loaded, st, [0, 4], 40, graph_method("recon"), graph=graph, calib=x)
    assert spec.flops == best.flops < spec.flops_base
    assert spec.report.per_position  # exact fold: per-position constants (ConstAdd) survive torch.export
    _exported_matches(spec, shape)


@pytest.mark.slow  # ~23 s on the loaded machine (best's allocation on VGG-16-BN is most of it)
def test_vgg16_bn_recon_exports_bias_fold():
    spec = _zoo_recon("vgg16_bn", (3, 32, 32), fold="bias")
    assert not spec.report.per_position
    _exported_matches(spec, (3, 32, 32))


@pytest.mark.slow
def test_mobilenetv2_recon_exports():
    spec = _zoo_recon("mobilenetv2", (3, 16, 16))
    _exported_matches(spec, (3, 16, 16))


def test_calib_per_class_is_validated():
    with pytest.raises(UsageError, match="calib-per-class"):
        graph_method("recon", calib_per_class=0)
    assert graph_method("recon", calib_per_class=7).calib_per_class == 7
    assert graph_method("recon").calib_per_class == 100 and graph_method("best").calib_per_class == 0


def test_cli_build_and_one_line_errors(tmp_path, data_dir, capsys):
    from harness.cli import main

    art = tmp_path / "r20.npz"
    assert main(["stats", "--model", "resnet20", "--per-class", "2", "--data", str(data_dir), "-o", str(art)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "build", "--model", "resnet20", "--stats", art, "--classes", "0,1", "--level", "30",
                       "--method", "recon", "--calib-per-class", "4", "--json", "-o", tmp_path / "s.pt")
    d = json.loads(out)
    assert code == 0 and d["method"] == "recon" and d["refit"] and (tmp_path / "s.pt").is_file()
    for extra, msg in ((["--calib-per-class", "0"], "--calib-per-class"),
                       (["--input-shape", "3,16,16"], "CIFAR-10")):
        out_file = tmp_path / "bad.pt"
        code, _, err = run(capsys, "build", "--model", "resnet20", "--stats", art, "--classes", "0,1", "--level",
                           "30", "--method", "recon", *extra, "-o", out_file)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and not out_file.exists(), err


def test_pt2_program_recon(tmp_path):
    """A user's ``.pt2`` program (rebuilt as a module of nn layers) reconstructs like the module it came from."""
    model = _concat(3)
    prog = tmp_path / "concat.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 16, 16),)), str(prog))
    loaded = load_model(str(prog))
    graph = analyse(loaded.module, loaded.example())
    st = _stats(graph, 30, (3, 16, 16))
    x = torch.randn(30, 3, 16, 16)
    best = build_graph_specialist(loaded, st, [1, 2], 40, graph_method("best"), graph=graph)
    spec = build_graph_specialist(loaded, st, [1, 2], 40, graph_method("recon"), graph=graph, calib=x)
    assert spec.flops == best.flops < spec.flops_base and spec.report.refit
    with torch.no_grad():
        ref = model(x)[:, [1, 2]]
        assert float((spec.module(x) - ref).square().mean()) < float((best.module(x) - ref).square().mean())

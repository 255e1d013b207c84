"""ExecuTorch export: the XNNPACK-whole module, compensation folding, verification, manifest, CLI, int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.exportcheck import ExportCheckError, export_weights, write_manifest_for
from specialist.errors import ArtifactError
from specialist.export import ExportNet, ExportOptions, edge_op_counts, fold_consts
from specialist.manifest import check_manifest, load_manifest, manifest_path_for
from specialist.model import build_module, weights_npz_bytes


def test_export_net_computes_what_ninnet_computes(tiny_weights):
    w = tiny_weights(16, consts=True)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(ExportNet(w)(x).numpy(), build_module(w)(x).numpy(), atol=2e-5)


def test_fold_consts_moves_the_spatial_mean_into_the_bias(tiny_weights):
    w = tiny_weights(8, consts=True)
    folded, dev = fold_consts(w)
    assert folded.consts == {} and w.consts  # the input is untouched
    for name, c in w.consts.items():
        np.testing.assert_allclose(folded.biases[name] - w.biases[name], c.mean(axis=(1, 2)), atol=1e-6)
        assert dev[name] == pytest.approx(float(np.abs(c - c.mean(axis=(1, 2), keepdims=True)).max()), rel=1e-5)
    same, none = fold_consts(tiny_weights(8))
    assert none == {} and same.consts == {}


def test_bias_folded_graph_has_no_more_nodes_than_uncompensated(tiny_weights):
    plain = edge_op_counts(tiny_weights(8))
    folded = edge_op_counts(fold_consts(tiny_weights(8, consts=True))[0])
    exact = edge_op_counts(tiny_weights(8, consts=True))
    assert sum(folded.values()) <= sum(plain.values()) and folded == plain
    assert sum(exact.values()) == sum(plain.values()) + 2  # one add per compensated layer
    assert exact.get("aten.add.Tensor", 0) == 2 and "aten.add.Tensor" not in folded
    assert "aten.avg_pool2d.default" not in plain  # the avg pool is a depthwise conv XNNPACK takes


def test_tiny_export_is_verified_and_fully_delegated(tmp_path, tiny_weights):
    report, exported = export_weights(tiny_weights(16, consts=True), tmp_path / "c.pte", ExportOptions(verify_images=3))
    assert report.verified and report.max_abs_diff <= 1e-4
    assert report.portable_ops == 0  # XNNPACK runs the whole graph: no portable operator between delegates
    assert report.fold == "bias" and report.extra_nodes == 0 and exported.consts == {}
    be = report.border_error
    assert be["max_abs_scores"] > 0 and set(be["max_const_deviation"]) == {"CONV2", "CONV3"}
    assert be["max_const_deviation"]["CONV2"] == pytest.approx(0.3, abs=0.02)
    write_manifest_for(report, exported, base_hash="b" * 64, stats_hash="", classes=[0, 3], level=30.0,
                       method="paper", flops=1000, flops_base=4000)
    m = check_manifest(tmp_path / "c.pte")
    assert m.class_names == ("airplane", "cat") and m.flops_pruned_pct == 75.0 and m.compensation_fold == "bias"
    assert m.input_shape == (1, 3, 32, 32) and m.input_dtype == "float32" and m.executorch_version.startswith("1.")
    assert m.model_sha256 == exported.content_hash() and m.verify["max_abs_diff"] == report.max_abs_diff


def test_failed_check_writes_nothing(tmp_path, tiny_weights):
    with pytest.raises(ExportCheckError, match="differs from the PyTorch model") as ei:
        export_weights(tiny_weights(8), tmp_path / "bad.pte", ExportOptions(backend="portable", verify_images=2,
                                                                           atol=1e-30))
    assert ei.value.report.verified is False and ei.value.report.max_abs_diff > 0
    assert list(tmp_path.iterdir()) == []


def test_manifest_refuses_changed_pte_newer_schema_and_junk(tmp_path, tiny_weights):
    pte = tmp_path / "m.pte"
    report, w = export_weights(tiny_weights(8), pte, ExportOptions(backend="portable", verify_images=1))
    write_manifest_for(report, w, base_hash="", stats_hash="", classes=range(10), level=0, method="base",
                       flops=10, flops_base=10)
    check_manifest(pte)
    blob = bytearray(pte.read_bytes())
    blob[-1] ^= 0xFF
    pte.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match"):
        check_manifest(pte)
    mp = manifest_path_for(pte)
    d = json.loads(mp.read_text())
    d["schema_version"] = 99
    mp.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="newer"):
        load_manifest(mp)
    mp.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(mp)


def test_cli_export_level0_then_bench_then_tamper(tmp_path, capsys, tiny_weights):
    npz = tmp_path / "tiny.npz"
    npz.write_bytes(weights_npz_bytes(tiny_weights(16)))
    out = tmp_path / "base.pte"
    assert main(["export", "--model", str(npz), "--level", "0", "-o", str(out), "--backend", "portable", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verified"] is True and d["max_abs_diff"] <= 1e-4 and d["level"] == 0 and d["classes"] == list(range(10))
    assert d["flops_pruned_pct"] > 0 and d["backend"] == "portable"  # tiny: smaller than the shipped NIN
    assert main(["bench", str(out), "--iterations", "5", "--warmup", "1", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["iterations"] == 5 and b["level"] == 0 and b["time_ms"] > 0 and b["time_ms_ci"] >= 0
    assert b["time_ms_p50"] <= b["time_ms_p90"] and len(b["output"]) == 10
    out.write_bytes(out.read_bytes()[:-10])
    assert main(["bench", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and str(out) in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,match", [
    (["export", "--level", "0", "-o", "x.onnx"], "must end in .pte"),
    (["export", "--level", "20", "-o", "x.pte"], "needs --classes"),
    (["export", "-o", "x.pte"], "give a specialist file"),
    (["export", "missing.pt", "-o", "x.pte"], "missing.pt not found"),
    (["export", "--level", "0", "--quantize", "int8", "--backend", "portable", "-o", "x.pte"], "int8 needs"),
])
def test_cli_export_bad_input(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_int8_export_reports_accuracy_next_to_float(tmp_path, tiny_weights):
    report, _ = export_weights(tiny_weights(16), tmp_path / "q.pte",
                               ExportOptions(quantize="int8", verify_images=4, quant_calib_images=16,
                                             accuracy_images=60), classes=[0, 1])
    assert report.verified and report.quantize == "int8" and report.portable_ops == 0
    assert report.max_abs_diff <= report.atol and report.atol >= ExportOptions().atol_int8
    acc = report.accuracy
    if "skipped" not in acc:  # needs CIFAR-10
        assert acc["images"] == 60 and 0 <= acc["int8_pct"] <= 100
        assert acc["change_pct"] == pytest.approx(acc["int8_pct"] - acc["float_pct"])

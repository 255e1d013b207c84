"""Graph-model exports: XNNPACK, portable and int8 programs of a user's model, verified against PyTorch by the
ExecuTorch runtime, with a manifest (plan, hashes, FLOPs) that ``harness bench`` checks; refusals one-line."""

import json
import textwrap

import numpy as np
import pytest
import torch

from harness.cli import main
from tests.harness.userpkg import run, user_package

SMALL = textwrap.dedent('''
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(12, 12, 3, padding=1)
            self.fc = nn.Linear(12, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(self.c2(x))
            y = torch.relu(self.c3(y) + y)
            return self.fc(y.mean((2, 3)))

    def make():
        return Small()
''')


@pytest.fixture(scope="module")
def small(tmp_path_factory, data_dir):
    """``exportpkg.nets:make`` with a state_dict and a 2-images-per-class statistics artifact."""
    root = tmp_path_factory.mktemp("exportpkg")
    with user_package(root, "exportpkg", SMALL) as nets:
        torch.manual_seed(3)
        m = nets.make()
        torch.nn.init.uniform_(m.b1.weight, 0.5, 1.5)
        weights = root / "small.pt"
        torch.save(m.state_dict(), weights)
        art = root / "small.npz"
        assert main(["stats", "--model", "exportpkg.nets:make", "--weights", str(weights), "--per-class", "2",
                     "--data", str(data_dir), "-o", str(art)]) == 0
        yield ["--model", "exportpkg.nets:make", "--weights", weights], art


@pytest.mark.parametrize("backend,quantize", [("xnnpack", "none"), ("portable", "none"), ("xnnpack", "int8")])
def test_graph_export_backends_manifest_bench(small, tmp_path, data_dir, capsys, backend, quantize):
    from specialist.manifest import check_manifest, manifest_path_for

    model, art = small
    pte = tmp_path / f"s-{backend}-{quantize}.pte"
    code, out, err = run(capsys, "export", *model, "--stats", art, "--classes", "1,4,7", "--level", "40",
                         "--method", "lsq", "--backend", backend, "--quantize", quantize, "--data", data_dir,
                         *(["--multiple-of", "4"] if backend == "portable" else []), "-o", pte, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["verified"] and d["max_abs_diff"] <= d["atol"] and d["verify_input"] == "calibration images"
    assert d["atol"] == (1e-4 if quantize == "none" else pytest.approx(0.05 * max(1.0, d["atol"] / 0.05)))
    m = check_manifest(pte)  # the manifest describes this very file
    assert (m.backend, m.quantize, m.classes, m.level, m.method) == (backend, quantize, (1, 4, 7), 40.0, "lsq")
    assert m.class_names == ("automobile", "deer", "horse") and m.input_shape == (1, 3, 32, 32)
    assert 0 < m.flops < m.flops_base and m.flops_pruned_pct == pytest.approx(d["flops_pruned_pct"], abs=1e-3)
    assert m.channels["fc"] == 3 and m.channels["c1"] == 8 and m.channels["c2"] < 12  # first layer intact
    if backend == "portable":  # --multiple-of 4: the kept width is a multiple
        assert m.channels["c2"] % 4 == 0
    assert len(m.base_model_sha256) == 64 and len(m.stats_sha256) == 64 and m.model_sha256 != m.base_model_sha256
    # bench finds and checks the manifest; a changed program is refused
    code, out, err = run(capsys, "bench", pte, "--iterations", "5", "--warmup", "1", "--json")
    assert code == 0, err
    b = json.loads(out)
    assert b["manifest"] == str(manifest_path_for(pte)) and b["level"] == 40.0 and len(b["output"]) == 3
    if quantize == "none":
        pte.write_bytes(pte.read_bytes() + b"\0")
        code, _, err = run(capsys, "bench", pte, "--iterations", "2")
        assert code == 2 and "does not match" in err


def test_graph_export_base_and_refusals(small, tmp_path, data_dir, capsys):
    model, _ = small
    pte = tmp_path / "base.pte"
    code, out, err = run(capsys, "export", *model, "--level", "0", "--data", data_dir, "-o", pte, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["method"] == "base" and d["classes"] == list(range(10)) and d["flops"] == d["flops_base"]
    man = json.loads((tmp_path / "base.manifest.json").read_text())
    assert man["level"] == 0.0 and man["pte_bytes"] == pte.stat().st_size
    for argv, msg in ((["--quantize", "int8", "--backend", "portable"], "needs --backend xnnpack"),
                      (["--multiple-of", "4"], "applies when building")):
        out_file = tmp_path / "x.pte"
        code, _, err = run(capsys, "export", *model, "--level", "0", *argv, "-o", out_file)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
        assert not out_file.exists()


def test_graph_export_job_matches_pytorch_on_random_inputs(tmp_path):
    """A model whose input is not CIFAR-shaped is verified on seeded N(0, 1) inputs."""
    from harness.exportcheck import run_pte
    from harness.graphexport import GraphExportJob, export_graph
    from specialist.zoo import ModelDescription

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    desc = ModelDescription("tiny", (1, 8, 8), 5, (0.0,), (1.0,))
    job = GraphExportJob(net, desc, (0, 1, 2, 3, 4), 0.0, "base", 1, 1)
    d = export_graph(job, tmp_path / "t.pte")
    assert d["verify_input"] == "random N(0,1)" and d["input_shape"] == [1, 8, 8]
    x = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(run_pte(tmp_path / "t.pte", x) - ref).max() <= 1e-4

"""``harness sweep`` on a graph model (a user's factory + state_dict): a tiny subset of Table 2 built by the graph
machinery, resumed from its store on a second call; graph-only refusals."""

import json
import textwrap

import pytest
import torch

from harness.cli import main
from tests.harness.userpkg import run, user_package

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.c2(x))
            x = torch.relu(self.c3(x))
            return self.fc(x.mean((2, 3)))

    def make():
        return Net()
''')


@pytest.fixture(scope="module")
def model(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("sweeppkg")
    with user_package(root, "sweeppkg", NETS) as nets:
        torch.manual_seed(11)
        weights = root / "net.pt"
        torch.save(nets.make().state_dict(), weights)
        art = root / "net.npz"
        argv = ["--model", "sweeppkg.nets:make", "--weights", str(weights)]
        assert main(["stats", *argv, "--per-class", "2", "--data", str(data_dir), "-o", str(art)]) == 0
        yield argv, art


@pytest.mark.slow  # 298 s on the shared 2-core machine at load 18 (12 builds, each traced by torch.export)
def test_graph_sweep_tiny_then_resumed(model, tmp_path, data_dir, capsys):
    argv, art = model
    flags = [*argv, "--stats", art, "--sizes", "2,3", "--subsets", "2", "--levels", "30,60", "--per-class", "20",
             "--workers", "1", "--data", data_dir, "--out", tmp_path / "sw", "--json"]
    code, out, err = run(capsys, "sweep", *flags)
    assert code == 0, err
    d = json.loads(out)
    (m,) = d["methods"]
    assert m["method"] == "lsq" and m["definition"]["kind"] == "graph" and m["cells_missing"] == 0
    lvl = m["level_flops_pruned_pct"]
    assert 0 < lvl[0] < lvl[1] < 100  # level 60 prunes more FLOPs than level 30
    assert d["timing"]["jobs_total"] == 2 * 2 * 3 and d["timing"]["jobs_run"] == 12
    assert d["timing"]["image_evals"] == 2 * 40 * 3 + 2 * 60 * 3  # each job on its classes' 20 images each
    assert len(d["hashes"]["base_model"]) == 64 and len(d["hashes"]["stats"]) == 64
    code, out, err = run(capsys, "sweep", *flags)  # the same sweep again: everything from the store
    assert code == 0, err
    d2 = json.loads(out)
    assert d2["timing"]["jobs_run"] == 0 and d2["timing"]["jobs_resumed"] == 12
    assert d2["methods"][0]["cells"] == m["cells"]


@pytest.mark.parametrize("extra,msg", [
    (["--method", "nosuch"], "unknown method 'nosuch'; supported on graph models"),
    (["--input-shape", "3,32,32"], "not supported"),
])
def test_graph_sweep_refusals(model, tmp_path, capsys, extra, msg):
    argv, _ = model
    code, _, err = run(capsys, "sweep", *argv, *extra, "--out", tmp_path / "sw")
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


def test_nin_sweep_refuses_weights(tmp_path, capsys):
    code, _, err = run(capsys, "sweep", "--weights", "w.pt", "--out", tmp_path / "sw")
    assert code == 2 and "applies to graph models" in err


def test_calib_per_class_replaces_graph_recons_image_count_and_only_its():
    from harness.errors import UsageError
    from harness.sweep.graph import graph_methods

    default = dict(graph_methods(["recon"])[0].fields)
    assert default["calib_per_class"] == 100  # graph recon's own default (NIN's recon: 200 + mirror images)
    lsq, recon = graph_methods(["lsq", "recon"], calib_per_class=7)
    assert dict(recon.fields)["calib_per_class"] == 7
    assert dict(lsq.fields)["calib_per_class"] == 0
    with pytest.raises(UsageError, match="none of the methods \\(lsq\\) reconstructs"):
        graph_methods(["lsq"], calib_per_class=7)

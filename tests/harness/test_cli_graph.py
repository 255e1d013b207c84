"""Graph models through the real CLI: stats -> build -> file -> reload, accuracy, user factory + state_dict,
.pt2, export, and one-line refusals (exit 2, nothing written)."""

import json
import textwrap

import numpy as np
import pytest
import torch

from tests.harness.userpkg import run, user_package

TINY = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.c2(x))
            x = torch.relu(self.c3(x))
            return self.fc(x.mean((2, 3)))

    def make():
        return Tiny()

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = x * torch.sigmoid(self.g(x))
            return self.fc(x.mean((2, 3)))

    def gated():
        return Gate()
''')


@pytest.fixture(scope="module")
def tiny_pkg(tmp_path_factory):
    """A user package ``userpkg.nets`` with factories ``make`` (supported) and ``gated`` (refused), and a
    state_dict of ``make``."""
    root = tmp_path_factory.mktemp("pkg")
    with user_package(root, "userpkg", TINY) as nets:
        torch.manual_seed(1)
        m = nets.make()
        torch.nn.init.uniform_(m.b1.weight, 0.5, 1.5)
        m.b1.running_mean.uniform_(-0.5, 0.5)
        weights = root / "tiny.pt"
        torch.save(m.state_dict(), weights)
        yield root, weights, m


def test_resnet20_stats_build_file_reload(r20_stats, tmp_path, capsys):
    from specialist.graph.artifact import read_stats
    from specialist.graph.source import load_model
    from specialist.graph.specialize import read_specialist_file, rebuild

    stats, meta = read_stats(r20_stats)
    assert meta["schema_version"] == 2 and meta["per_class"] == 2 and stats.counts.tolist() == [2] * 10
    assert len(meta["groups"]) == 12 and all(g["consumers"] for g in meta["groups"])
    out_file = tmp_path / "spec.pt"
    code, out, _ = run(capsys, "build", "--model", "resnet20", "--stats", r20_stats, "--classes", "0,1,2",
                       "--level", "30", "--method", "lsq", "-o", out_file, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["classes"] == [0, 1, 2] and d["method"] == "lsq" and d["refit"]
    assert 25 < d["flops_pruned_pct"] < 60 and d["flops_base"] > 8e7
    assert d["layers"][0]["layer"] == "conv1" and d["layers"][0]["out_channels"] == 16  # first conv intact
    assert d["layers"][-1]["out_channels"] == 3  # classifier keeps the three target classes
    saved = read_specialist_file(out_file)
    loaded = load_model("resnet20")
    module = rebuild(loaded, saved)
    x = torch.randn(4, 3, 32, 32)
    state = saved["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        y = module(x)
    assert y.shape == (4, 3) and torch.isfinite(y).all()


@pytest.mark.parametrize("method", ["l1", "impact"])
def test_resnet20_accuracy(r20_stats, data_dir, capsys, method):
    code, out, _ = run(capsys, "accuracy", "--model", "resnet20", "--stats", r20_stats, "--classes", "0,1",
                       "--level", "20", "--method", method, "--per-class", "30", "--data", data_dir, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["n"] == 60 and d["method"] == method
    assert 0.8 <= d["accuracy_unpruned"] <= 1.0 and 0.0 <= d["accuracy"] <= 1.0


def test_level0_equals_unpruned(r20_stats, data_dir, capsys):
    code, out, _ = run(capsys, "accuracy", "--model", "resnet20", "--stats", r20_stats, "--classes", "3,5",
                       "--level", "0", "--per-class", "20", "--data", data_dir, "--json")
    d = json.loads(out)
    assert code == 0 and d["n"] == 40 and d["accuracy"] == pytest.approx(d["accuracy_unpruned"])


def test_factory_with_state_dict(tiny_pkg, tmp_path, data_dir, capsys):
    root, weights, ref = tiny_pkg
    art = tmp_path / "tiny.npz"
    code, out, _ = run(capsys, "stats", "--model", "userpkg.nets:make", "--weights", weights, "--per-class", "3",
                       "--data", data_dir, "-o", art, "--json")
    assert code == 0 and json.loads(out)["images"] == 30
    spec = tmp_path / "tiny_spec.pt"
    code, out, _ = run(capsys, "build", "--model", "userpkg.nets:make", "--weights", weights, "--stats", art,
                       "--classes", "2,7", "--level", "50", "--method", "lsq", "-o", spec, "--json")
    assert code == 0
    d = json.loads(out)
    widths = {r["layer"]: r["out_channels"] for r in d["layers"]}
    assert widths["c1"] == 8 and widths["c2"] == 6 and widths["fc"] == 2
    # the artifact belongs to these weights: the same factory with random weights is refused
    code, _, err = run(capsys, "build", "--model", "userpkg.nets:make", "--stats", art, "--classes", "2,7",
                       "--level", "50")
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1


def test_pt2_program(tmp_path, r20_stats, capsys):
    from specialist.graph.source import load_model

    loaded = load_model("resnet20")
    prog = tmp_path / "r20.pt2"
    torch.export.save(torch.export.export(loaded.module, (loaded.example(),)), str(prog))
    code, out, err = run(capsys, "build", "--model", prog, "--classes", "4,5,6", "--level", "40", "--method", "l1",
                         "--compensation", "none", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["layers"][-1]["out_channels"] == 3 and d["compensation"] == "none"
    assert {r["layer"] for r in d["layers"]} >= {"conv1", "layer3.2.conv2", "fc"}  # named after the parameters
    # the program's module is not the zoo module: the zoo's artifact is refused one-line
    code, _, err = run(capsys, "build", "--model", prog, "--stats", r20_stats, "--classes", "4,5,6",
                       "--level", "40", "--method", "impact")
    assert code == 2 and "another model" in err


@pytest.mark.parametrize("argv,msg", [
    (["build", "--model", "resnet99", "--classes", "0,1", "--level", "30"], "neither a zoo name"),
    (["build", "--model", "resnet20", "--classes", "0,1", "--level", "30", "--method", "nope",
      "--stats", "x.npz"], "unknown method 'nope'"),
    (["build", "--model", "resnet20", "--classes", "0,1", "--level", "30", "--method", "lsq"], "needs --stats"),
    (["build", "--model", "resnet20", "--classes", "0,12", "--level", "30", "--method", "l1", "--compensation",
      "none"], "out of range"),
    (["build", "--model", "resnet20", "--classes", "0,1", "--level", "100", "--method", "l1"], "level"),
    (["build", "--model", "nonexistent_pkg_x.mod:make", "--classes", "0,1", "--level", "30"], "cannot import"),
    (["build", "--classes", "0,1", "--level", "30", "--weights", "w.pt"], "applies to graph models"),
    (["build", "--model", "nin", "--classes", "0,1", "--level", "30", "--input-shape", "3,32,32"],
     "applies to graph models"),
])
def test_bad_input_one_line(argv, msg, tmp_path, capsys):
    out_file = tmp_path / "out.pt"
    code, _, err = run(capsys, *argv, "-o", out_file)
    assert code == 2 and msg in err, err
    assert len(err.strip().splitlines()) == 1 and not out_file.exists()


def test_weights_of_another_shape(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, bad)
    out_file = tmp_path / "s.npz"
    code, _, err = run(capsys, "stats", "--model", "resnet20", "--weights", bad, "--per-class", "1", "-o", out_file)
    assert code == 2 and "does not fit" in err and len(err.strip().splitlines()) == 1
    assert not out_file.exists()


def test_unsupported_op_model(tiny_pkg, tmp_path, capsys):
    out_file = tmp_path / "g.npz"
    code, _, err = run(capsys, "stats", "--model", "userpkg.nets:gated", "--per-class", "1", "-o", out_file)
    assert code == 2 and "two activations" in err and len(err.strip().splitlines()) == 1
    assert not out_file.exists()


def test_artifact_newer_version_and_corruption_refused(r20_stats, tmp_path):
    from specialist.errors import ArtifactError
    from specialist.graph.artifact import read_stats

    with np.load(r20_stats) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    for change, msg in ((lambda m, a: m.update(schema_version=99), "newer"),
                        (lambda m, a: a.update(counts=a["counts"] + 1), "hash mismatch")):
        m, a = dict(meta), dict(arrays)
        change(m, a)
        a["meta"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
        p = tmp_path / "x.npz"
        np.savez(p, **a)
        with pytest.raises(ArtifactError, match=msg):
            read_stats(p)


@pytest.mark.slow
def test_export_factory_specialist(tiny_pkg, tmp_path, data_dir, capsys):
    root, weights, _ = tiny_pkg
    art = tmp_path / "tiny.npz"
    assert run(capsys, "stats", "--model", "userpkg.nets:make", "--weights", weights, "--per-class", "2",
               "--data", data_dir, "-o", art)[0] == 0
    spec = tmp_path / "spec.pt"
    assert run(capsys, "build", "--model", "userpkg.nets:make", "--weights", weights, "--stats", art,
               "--classes", "1,2", "--level", "50", "--method", "impact", "-o", spec)[0] == 0
    pte = tmp_path / "tiny.pte"
    code, out, err = run(capsys, "export", spec, "-o", pte, "--data", data_dir, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["verified"] and d["max_abs_diff"] <= 1e-4 and pte.is_file() and d["classes"] == [1, 2]

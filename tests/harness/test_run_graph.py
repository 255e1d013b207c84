"""``harness run`` on graph models: the specialists built by the graph machinery, exported (XNNPACK, verified,
with a manifest), cached, pushed to the virtual phone and measured; Tables 3 and 4 written.

- a user's factory model + ``--weights`` on the virtual lab without ``--stats`` (the artifact is built once,
  announced and cached), then again on the host (cache hits: no statistics, no exports);
- refusals before any work (exit 2, one line, no database written);
- ``--model resnet20`` on the virtual lab (slow: exports ResNet-20 twice; HARNESS_SLOW=1).
"""

import json
import textwrap

import pytest
import torch

from harness.cli import main
from tests.harness.userpkg import run, user_package

FAST = ["--window-s", "0.3", "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2", "--threads", "1"]

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.b2 = nn.BatchNorm2d(16)
            self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.b2(self.c2(x)))
            x = torch.relu(self.c3(x))
            return self.fc(x.mean((2, 3)))

    def make():
        return Net()
''')


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("runpkg")
    with user_package(root, "runpkg", NETS) as nets:
        torch.manual_seed(7)
        weights = root / "net.pt"
        torch.save(nets.make().state_dict(), weights)
        yield ["--model", "runpkg.nets:make", "--weights", weights]


@pytest.fixture
def env(monkeypatch, tmp_path, data_dir):
    monkeypatch.setenv("HARNESS_EXPORT_WORKERS", "0")  # export in this process: no worker start-up
    monkeypatch.setenv("HARNESS_PROGRESS", "0")
    monkeypatch.setenv("HARNESS_LOCK_DIR", str(tmp_path / "locks"))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{data_dir}"\nmin_inference_s_per_model = 2.0\nmin_inferences_per_model = 8\n'
                   'warmup_inferences = 1\n')
    return cfg


@pytest.mark.slow  # 220-440 s on the shared 2-core machine at load 17-24
def test_user_model_virtual_then_host_from_cache(user_model, env, tmp_path, capsys, caplog):
    from harness.store import Store
    from specialist.graph.artifact import read_stats
    from specialist.manifest import check_manifest

    db = tmp_path / "results" / "h.db"
    code, out, err = run(capsys, "run", "--device", "virtual", *user_model, "--levels", "50", "--classes", "2,3",
                         "--config", env, *FAST, "--db", db, "--no-report", "--accuracy", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "complete" and res["virtual"] is True
    base, spec = res["rows"]
    assert (base["level"], spec["level"]) == (0, 50) and 30 < spec["flops_pruned_pct"] < 80
    for r in (base, spec):  # a model this small is within the virtual monsoon's noise: windows may be invalid
        assert r["valid_windows"] + r["invalid_windows"] == 2
        assert r["accuracy_pct"] is not None and 0 <= r["accuracy_pct"] <= 100
    assert "computing the statistics artifact" in caplog.text and "100 calibration images per class" in caplog.text
    cache = tmp_path / "results" / "cache"
    arts = list((cache / "stats").glob("*-100pc.npz"))
    assert len(arts) == 1 and read_stats(arts[0])[0].counts.tolist() == [100] * 10
    with Store(db, readonly=True) as st:
        models = st.models(res["run_id"])
    assert {m.method for m in models} == {"lsq"}  # the run's method (as for NIN)
    for m in models:  # every program has its manifest, and the manifest names it and its plan
        man = check_manifest(m.artifact_path)
        assert man.level == m.level_pct and man.flops_pruned_pct == pytest.approx(m.flops_pruned_pct, abs=1e-3)
        assert man.classes == ((2, 3) if m.level_pct else tuple(range(10))) and man.stats_sha256
        if m.level_pct:  # the run's graph default: mean constants in the biases (no add node)
            assert (man.compensation_fold, man.extra_nodes) == ("bias", 0)
    ptes = sorted(p.stat().st_mtime_ns for p in cache.glob("*.pte"))
    caplog.clear()
    code, out, err = run(capsys, "run", "--device", "host", *user_model, "--levels", "50", "--classes", "2,3",
                         "--config", env, *FAST, "--db", db, "--no-report", "--json")
    assert code == 0, err
    assert [(r["level"], r["valid_windows"]) for r in json.loads(out)["rows"]] == [(0, 2), (50, 2)]
    assert all(r["time_ms"] > 0 for r in json.loads(out)["rows"])
    assert "computing the statistics" not in caplog.text
    assert sorted(p.stat().st_mtime_ns for p in cache.glob("*.pte")) == ptes  # cache hits: nothing re-exported


@pytest.mark.parametrize("argv,msg", [
    (["--weights", "w.pt"], "applies to graph models"),
    (["--model", "resnet20", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["--model", "resnet20", "--stats", "{stats}"], "another model"),
    (["--model", "resnet99"], "neither a zoo name"),
    (["--model", "resnet20", "--stats", "missing.npz"], "no such file"),
])
def test_refusals_before_any_work(argv, msg, user_model, env, tmp_path, capsys, data_dir):
    stats = tmp_path / "other.npz"
    if "{stats}" in argv:  # an artifact of another model
        assert main(["stats", *map(str, user_model), "--per-class", "1", "--data", str(data_dir),
                     "-o", str(stats)]) == 0
        capsys.readouterr()
    db = tmp_path / "results" / "h.db"
    argv = [a.replace("{stats}", str(stats)) for a in argv]
    code, _, err = run(capsys, "run", "--device", "virtual", *argv, "--levels", "50", "--db", db)
    assert code == 2 and msg in err, err
    assert len(err.strip().splitlines()) == 1 and not db.exists()


@pytest.mark.slow
def test_resnet20_virtual_run(env, tmp_path, capsys, r20_stats):
    db = tmp_path / "results" / "h.db"
    code, out, err = run(capsys, "run", "--device", "virtual", "--model", "resnet20", "--stats", r20_stats,
                         "--levels", "30", "--config", env, *FAST, "--db", db)
    assert code == 0, err
    assert "**Table 3.**" in out and "**Table 4.**" in out and "| 43.4 | 30 |" in out and "paper" not in out
    assert (tmp_path / "results").glob("*/report.html")

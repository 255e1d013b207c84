"""harness sweep end to end on real data: a tiny sweep, resumption after an interruption, bad input."""

from __future__ import annotations

import json
import multiprocessing
import time

import numpy as np
import pytest

from harness import sweep as sw
from harness.cli import main
from harness.sweep.run import nin_methods


def _run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_tiny_sweep_best_not_worse_than_paper_and_resumes(tmp_path, data_dir, base_weights, capsys):
    from specialist.methods import PRESETS

    methods = "paper,best" if "best" in PRESETS else "paper,lsq"
    out = tmp_path / "sweep"
    argv = ["sweep", "--sizes", "2,3", "--levels", "30,50", "--subsets", "2", "--per-class", "100",
            "--method", methods, "--data", str(data_dir), "--out", str(out), "--compare-paper"]
    code, stdout, err = _run(capsys, [*argv, "--json", "--workers", "2"])
    assert code == 0, err
    res = json.loads(stdout)
    assert [m["method"] for m in res["methods"]] == methods.split(",")
    assert res["timing"]["jobs_run"] == res["timing"]["jobs_total"] == 2 * 2 * (1 + 2 * 2)
    for m in res["methods"]:
        assert m["cells_missing"] == 0
        assert len(m["cells"]) == 2 * 3
        for c in m["cells"]:
            assert c["n"] == 2 and len(c["values_pct"]) == 2 and 0 <= c["mean_pct"] <= 100
            assert c["paper_mean_pct"] is not None
            if c["level"] == 30.0:
                assert 37.5 < c["flops_pruned_pct"] < 40.5  # the paper's 38.9% within rounding
            if c["level"]:
                assert c["images"] == [100 * c["size"]] * 2
    # the test: best (the last method) is not worse than paper in any cell
    cmp = res["comparison"][0]
    assert cmp["versus"] == "paper" and cmp["cells_worse"] == 0, cmp["cells"]
    for kind in ("table2_paper.md", "table2_paper.csv", "accuracy_vs_flops_paper.png", "compare_paper_paper.md",
                 "methods.md", "sweep.json"):
        assert (out / kind).is_file(), kind
    assert json.loads((out / "sweep.json").read_text())["methods"][0]["cells"] == res["methods"][0]["cells"]

    # one cell checked against the reference accuracy path (build + specialist.accuracy)
    from specialist.accuracy import subset_accuracy
    from specialist.build import build_specialist
    from specialist.data import load_split

    cell = next(c for c in res["methods"][0]["cells"] if c["size"] == 3 and c["level"] == 50.0)
    subset = cell["subsets"][1]
    spec = build_specialist(subset, 50, "paper", base=base_weights)
    test = load_split("test", data_dir).select(subset, per_class=100)
    ref = subset_accuracy(spec.weights, spec.classes, test, class_outputs=spec.classes)
    assert cell["values_pct"][1] == pytest.approx(100 * ref.accuracy)

    # a second run finds everything in the store and recomputes nothing
    code, stdout, err = _run(capsys, [*argv, "--workers", "1"])
    assert code == 0, err
    assert "0 jobs run, 20 resumed" in stdout and "| classes |" in stdout
    again = json.loads((out / "sweep.json").read_text())
    assert again["methods"][1]["cells"] == res["methods"][1]["cells"]


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_sweep_continues_where_it_stopped(tmp_path, data_dir, workers):
    opts = sw.SweepOptions(sizes=(2, 3), levels=(30.0,), subsets=2, per_class=20, methods=("paper",),
                           workers=workers, task_jobs=2)
    calls = []

    def stop_after_first(done, total):
        calls.append((done, total))
        raise KeyboardInterrupt  # as Ctrl-C in the parent

    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(opts, data_dir=str(data_dir), out_dir=tmp_path, progress=stop_after_first)
    assert calls == [(1, 3)]  # tasks: the unpruned column, then one per size
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:  # workers are stopped at once
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    res = sw.run_sweep(opts.replace(workers=1), data_dir=str(data_dir), out_dir=tmp_path)
    assert res.jobs_total == 8 and res.jobs_resumed >= 2 and res.jobs_run == 8 - res.jobs_resumed
    assert not any(np.isnan(t.acc_pct).any() for t in res.tables)
    # --fresh discards the stored jobs of this sweep
    res = sw.run_sweep(opts, data_dir=str(data_dir), out_dir=tmp_path, fresh=True)
    assert res.jobs_resumed == 0 and res.jobs_run == 8


def test_more_subsets_than_exist_are_all_used_with_a_note(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DB", raising=False)
    out = tmp_path / "o"
    code, stdout, err = _run(capsys, ["sweep", "--sizes", "10", "--levels", "50", "--subsets", "3",
                                      "--per-class", "5", "--data", str(data_dir), "--out", str(out),
                                      "--workers", "1", "--json"])
    assert code == 0, err
    # without --db the cells live in OUT/sweep.sqlite, never in the results database of the working directory
    assert (out / "sweep.sqlite").is_file()
    assert not (tmp_path / "results").exists()
    res = json.loads(stdout)
    assert res["subsets"] == {"10": [list(range(10))]}
    assert any("only 1 distinct subset" in n for n in res["notes"])
    cell = res["methods"][0]["cells"][0]
    assert cell["n"] == 1 and cell["ci_pct"] is None and cell["images"] == [50]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "1-3"], "--sizes: 1 is out of range 2..10"),
    (["--sizes", "2-x"], "--sizes: '2-x' is not a whole number"),
    (["--method", "nope"], "unknown method 'nope'; known: paper"),
    (["--levels", "0,10"], "--levels: 0 is out of range"),
    (["--subsets", "0"], "--subsets must be"),
    (["--compare-paper", "--paper-table", "/nonexistent/t.csv"], "cannot read"),
    (["--method", "best,paper", "--calib-per-class", "5"], "--calib-per-class 5: none of the methods (best, paper)"),
    (["--method", "recon", "--calib-per-class", "0"], "--calib-per-class must be a whole number >= 1"),
    (["--model", "resnet20", "--calib-per-class", "5"], "--calib-per-class 5: none of the methods (lsq)"),
    (["--engine", "fp8"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    code, stdout, err = _run(capsys, ["sweep", "--out", str(out), "--json", *argv])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert stdout == "" and not out.exists()


def test_calib_per_class_reaches_the_methods_that_reconstruct(tmp_path, data_dir, capsys):
    code, stdout, err = _run(capsys, ["sweep", "--sizes", "2", "--levels", "50", "--subsets", "1", "--per-class", "5",
                                      "--method", "recon,best", "--calib-per-class", "3", "--data", str(data_dir),
                                      "--out", str(tmp_path), "--db", str(tmp_path / "cells.sqlite"), "--workers",
                                      "1", "--json"])
    assert code == 0, err
    res = json.loads(stdout)
    recon, best = (m["definition"] for m in res["methods"])
    assert (recon["name"], recon["calib_per_class"]) == ("recon", 3)
    assert (best["name"], best["calib_per_class"]) == ("best", 0)  # a method without calibration is unchanged
    assert res["options"]["calib_per_class"] == 3
    p = tmp_path / "s.toml"
    p.write_text('[sweep]\nmethods = ["recon"]\ncalib_per_class = 7\n')
    opts = sw.SweepOptions.from_toml(p)
    assert [m.calib_per_class for m in nin_methods(opts)] == [7]


def test_a_sweep_resumed_with_another_engine_reuses_its_cells(tmp_path, data_dir, capsys):
    """The engine is not part of the resume keys: every engine gives float32's counts, checked here."""
    argv = ["sweep", "--sizes", "2,4", "--levels", "30,50", "--subsets", "2", "--per-class", "30", "--method", "paper",
            "--data", str(data_dir), "--workers", "1", "--json"]
    a, b = (["--out", str(tmp_path / d), "--db", str(tmp_path / d / "cells.sqlite")] for d in "ab")
    code, stdout, err = _run(capsys, [*argv, *a, "--engine", "torch-cl"])
    assert code == 0, err
    first = json.loads(stdout)
    assert first["timing"]["engine"] == "torch-cl"
    code, stdout, err = _run(capsys, [*argv, *a, "--engine", "bf16"])
    assert code == 0, err
    again = json.loads(stdout)
    assert again["timing"]["jobs_run"] == 0 and again["timing"]["jobs_resumed"] == first["timing"]["jobs_total"]
    code, stdout, err = _run(capsys, [*argv, *b, "--engine", "bf16"])
    assert code == 0, err
    fresh = json.loads(stdout)
    assert fresh["timing"]["engine"] == "bf16" and fresh["timing"]["jobs_run"] == first["timing"]["jobs_total"]
    assert [c["values_pct"] for c in fresh["methods"][0]["cells"]] == \
        [c["values_pct"] for c in first["methods"][0]["cells"]]

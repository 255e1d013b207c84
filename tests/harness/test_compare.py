import json
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.plan import make_plan
from harness.runloop import WindowResult, create_run, run_experiment
from harness.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_run_backend import ScriptedBackend, models  # noqa: E402

FAST = {"window_s": 0.01, "idle_s": 0.01, "min_reps": 4, "max_reps": 4, "min_inferences_per_model": 4,
        "min_inference_s_per_model": 0.01, "levels": [10, 50]}


class Slower(ScriptedBackend):
    """The same device after a 'regression': model L50 runs 20% slower."""

    def run_window(self, model, n, warmup):
        res = super().run_window(model, n, warmup)
        if model.key == "L50":
            res.latencies_ms = res.latencies_ms * 1.2
        return res


def _run(st, backend):
    plan = make_plan("virtual", "scripted", FAST)
    rid = create_run(st, backend, plan)
    run_experiment(st, backend, plan, models(), rid, progress=False)
    return rid


@pytest.fixture()
def db(tmp_path):
    db = tmp_path / "h.db"
    with Store(db) as st:
        a = _run(st, ScriptedBackend(noise=0.01, seed=1))
        b = _run(st, ScriptedBackend(noise=0.01, seed=2))
        c = _run(st, Slower(noise=0.01, seed=3))
    return db, a, b, c


def test_compare_gates_on_regression(db, capsys):
    path, a, b, c = db
    assert main(["compare", a, b, "--db", str(path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    verdicts = {(x["model"], x["metric"]): x["verdict"] for x in res["comparisons"]}
    assert verdicts[("L50", "time_ms")] in ("same", "unknown") and not res["regressed"]
    assert main(["compare", a, c, "--db", str(path), "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    got = {(x["model"], x["metric"]): x for x in res["comparisons"]}
    assert got[("L50", "time_ms")]["verdict"] == "regressed"
    assert got[("L50", "time_ms")]["effect_pct"] == pytest.approx(20.0, abs=3.0)
    assert got[("L0", "time_ms")]["verdict"] != "regressed"
    assert main(["compare", c, a, "--db", str(path)]) == 0  # the other way round it improved
    assert "improved" in capsys.readouterr().out


def test_history_and_listing_commands(db, capsys, tmp_path):
    path, a, b, c = db
    assert main(["runs", "--db", str(path), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run_id"] for r in runs] == [a, b, c] and all(r["status"] == "complete" for r in runs)
    assert main(["show", a, "--db", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == a and len(shown["rows"]) == 3 and shown["windows"]["total"] == 25
    assert main(["history", "--device", "scripted", "--metric", "time", "--model-key", "50", "--db", str(path),
                 "--json"]) == 0
    hist = json.loads(capsys.readouterr().out)
    assert [s["model"] for s in hist["series"]] == ["L50"] and len(hist["series"][0]["points"]) == 3
    assert Path(hist["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert main(["report", a, "--db", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert Path(rep["files"]["report.html"]).is_file()
    out = tmp_path / "exp"
    assert main(["export-results", "--db", str(path), "--out", str(out), "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert exp["windows"] == 75
    import pandas as pd

    w = pd.read_parquet(out / "windows.parquet")
    assert len(w) == 75 and set(w["status"]) == {"valid"}
    assert len(pd.read_csv(out / "rows.csv")) == 9


def test_history_finds_a_step(tmp_path, capsys):
    db = tmp_path / "h.db"
    with Store(db) as st:
        for i in range(8):
            _run(st, (Slower if i >= 4 else ScriptedBackend)(noise=0.002, seed=i))
    assert main(["history", "--device", "scripted", "--metric", "time", "--db", str(db), "--json",
                 "--no-plot"]) == 0
    res = json.loads(capsys.readouterr().out)
    by = {s["model"]: s for s in res["series"]}
    assert [s["index"] for s in by["L50"]["steps"]] == [4]
    assert by["L50"]["steps"][0]["change_pct"] == pytest.approx(20.0, abs=1.0)
    assert by["L0"]["steps"] == []


def test_command_errors(tmp_path, capsys):
    assert main(["runs", "--db", str(tmp_path / "none.db")]) == 2
    assert "no results database" in capsys.readouterr().err
    with Store(tmp_path / "h.db"):
        pass
    assert main(["show", "nope", "--db", str(tmp_path / "h.db")]) == 2
    assert main(["history", "--device", "x", "--db", str(tmp_path / "h.db")]) == 2
    assert main(["export-results", "--format", "xls", "--db", str(tmp_path / "h.db")]) == 2


def test_compare_exit_codes_tell_errors_from_regressions(db, tmp_path, capsys):
    path, a, b, c = db
    # an unknown run, a missing database, a corrupt one: exit 3 with one line (1 would read as "regressed")
    assert main(["compare", a, "nope", "--db", str(path)]) == 3
    err = capsys.readouterr().err
    assert "nope" in err and "not found" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", a, b, "--db", str(tmp_path / "none.db")]) == 3
    assert "no results database" in capsys.readouterr().err
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"this is not a database" * 100)
    assert main(["compare", a, b, "--db", str(bad)]) == 3
    assert "corrupt" in capsys.readouterr().err
    # bad flags stay usage errors (2), as in every command
    assert main(["compare", a, b, "--alpha", "2", "--db", str(path)]) == 2


def test_more_repetitions_estimate_is_capped():
    from harness.verdict import MAX_MORE_REPS, compare_samples

    # a 0.5% shift under 20% noise: thousands of repetitions would be needed
    rng = np.random.default_rng(0)
    a = 10.0 * (1 + 0.2 * rng.standard_normal(6))
    v = compare_samples(a, a * 1.005, threshold_pct=2.0)
    assert v.verdict == "unknown" and v.beyond_plan and v.more_reps == MAX_MORE_REPS
    assert f"more than {MAX_MORE_REPS} repetitions" in v.reason and "below what this plan can resolve" in v.reason
    # a moderate case keeps its estimate
    b = np.array([10.0, 13.0, 7.0, 11.0])
    w = compare_samples(b, b + 1.0, threshold_pct=2.0)
    assert w.verdict == "unknown" and not w.beyond_plan and 0 < w.more_reps <= MAX_MORE_REPS
    assert "more repetitions per side would decide" in w.reason


def test_history_plot_by_date_with_commits_and_cis(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from harness.commands.history import commit_label, plot_history

    assert commit_label("harness 0.1.0 3dd395f6b13d") == "3dd395f" and commit_label("harness 0.1.0") == "0.1.0"
    days = [f"2026-11-{d:02d}T10:00:00.000000Z" for d in (1, 2, 5, 9, 10)]
    pts = [{"run_id": f"r{i}", "created_utc": t, "value": v, "ci": ci, "code_version": f"harness 0.1.0 {c}",
            "commit": c[:7]} for i, (t, v, ci, c) in enumerate(zip(
                days, [10.0, 10.1, None, 12.0, 12.1], [0.2, None, None, 0.3, float("nan")],
                ["aaaaaaa1", "aaaaaaa1", "bbbbbbb2", "bbbbbbb2", "ccccccc3"], strict=True))]
    res = {"device": "d", "device_fingerprint": "f", "metric": "time", "unit": "ms",
           "series": [{"model": "L50", "level": 50, "points": pts,
                       "steps": [{"index": 3, "run_id": "r3", "before": 10.0, "after": 12.0, "change_pct": 20.0}]}]}
    png = plot_history(res)
    assert png[:4] == b"\x89PNG" and len(png) > 5000


class DriftingHost(ScriptedBackend):
    """A virtual lab whose host runs every model ``speed`` times slower, drifting +-5% over the run (as a shared
    host does), and ``slow_key`` (if any) 20% slower on top: a genuine change of one model."""

    virtual = True

    def __init__(self, speed=1.0, slow_key=None, **kw):
        super().__init__(**kw)
        self.speed, self.slow_key = speed, slow_key

    def run_window(self, model, n_inferences, warmup):
        self._tick()
        f = self.speed * (1 + 0.05 * np.sin(self.calls / 7)) * (1.2 if model.key == self.slow_key else 1.0)
        ms = 10.0 * (1 - model.level_pct / 100) * f * (1 + self.noise * self.rng.standard_normal())
        busy = ms * n_inferences / 1000
        return WindowResult(n_inferences=n_inferences, duration_s=busy, busy_s=busy,
                            latencies_ms=np.full(n_inferences, ms), energy_j=3.0 * busy, mean_power_w=3.0,
                            trace={"t_s": np.linspace(0, busy, 50), "power_w": np.full(50, 3.0)})


def _run_models(st, backend, levels):
    plan = make_plan("virtual", "scripted", {**FAST, "min_reps": 6, "max_reps": 6})
    rid = create_run(st, backend, plan)
    run_experiment(st, backend, plan, models(levels), rid, progress=False)
    return rid


def test_virtual_runs_are_judged_against_their_rounds(tmp_path):
    from harness.compare import VIRTUAL_RELATIVE_THRESHOLD_PCT, VIRTUAL_THRESHOLD_PCT, compare_runs

    with Store(tmp_path / "h.db") as st:
        a = _run_models(st, DriftingHost(1.0, noise=0.01, seed=1), (10, 30, 50))
        b = _run_models(st, DriftingHost(1.12, noise=0.01, seed=2), (10, 30, 50))  # the host 12% slower
        c = _run_models(st, DriftingHost(0.95, "L30", noise=0.01, seed=3), (10, 30, 50))  # L30 20% slower
        # the host's speed moved every model: the same
        res = compare_runs(st, a, b)
        assert res["mode"] == "relative" and res["threshold_pct"] == VIRTUAL_RELATIVE_THRESHOLD_PCT
        assert {x["verdict"] for x in res["comparisons"]} == {"same"} and not res["regressed"]
        assert res["common_shift_pct"]["time_ms"] == pytest.approx(12.0, abs=3.0)
        assert all(x["effect_pct"] > 8 for x in res["comparisons"])  # absolute: every model slower
        assert any("moved together" in n for n in res["notes"])
        # one model genuinely slower, on a host 5% faster: caught
        res = compare_runs(st, a, c)
        got = {(x["model"], x["metric"]): x for x in res["comparisons"]}
        for metric in ("time_ms", "energy_mj"):
            assert got[("L30", metric)]["verdict"] == "regressed"
            assert got[("L30", metric)]["effect_vs_common_pct"] == pytest.approx(20.0, abs=4.0)
            assert {got[(k, metric)]["verdict"] for k in ("L0", "L10", "L50")} == {"same"}
        assert res["regressed"]
        # two models in common: no robust round factor; the absolute values against the wider threshold
        d = _run_models(st, DriftingHost(1.0, noise=0.01, seed=4), (50,))
        e = _run_models(st, DriftingHost(1.08, noise=0.01, seed=5), (50,))
        res = compare_runs(st, d, e)
        assert res["mode"] == "absolute" and res["threshold_pct"] == VIRTUAL_THRESHOLD_PCT
        assert not res["regressed"]

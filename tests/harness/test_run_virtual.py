"""End to end on the virtual lab: virtual phone over loopback ADB + virtual Monsoon on a virtual USB bus.

The same code as a real phone (adb-shell, the monsoon library, sync markers in the current trace, the
ExecuTorch runtime behind the phone's executor_runner).  One exported model (the base NIN) stands for two
models so the test needs no statistics artifact.
"""

import json
import math

import numpy as np
import pytest

from device.files import file_hash as _file_sha256
from harness.backends import VirtualLabBackend
from harness.plan import make_plan
from harness.report import build_report
from harness.runloop import PreparedModel, create_run, run_experiment
from harness.store import Store
from harness.tables import model_rows


@pytest.fixture(scope="module")
def pte(base_pte):
    return base_pte


def _models(pte):
    h = _file_sha256(pte)
    return [PreparedModel("L0", 0, (0, 1, 2, 3, 4), "paper", 100, 0.0, "m0", h, str(pte)),
            PreparedModel("L50", 50, (0, 1, 2, 3, 4), "paper", 50, 50.0, "m50", h, str(pte))]


def test_virtual_lab_run_energy_matches_power_model(tmp_path, pte):
    from device.errors import DeviceError
    from device.virtual_phone import FaultConfig

    plan = make_plan("virtual", "virtual", {"window_s": 0.4, "idle_s": 0.4, "min_reps": 2, "max_reps": 2,
                                            "min_inferences_per_model": 8, "min_inference_s_per_model": 0.4,
                                            "warmup_inferences": 1})
    with Store(tmp_path / "h.db") as st:
        be = VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab")
        with be:
            run_id = create_run(st, be, plan)
            out = run_experiment(st, be, plan, _models(pte), run_id, progress=False)
            assert out.status == "complete"
            # a phone link lost in the middle of a window: an invalid window, the run goes on
            be.phone.set_faults(FaultConfig(drop_mid_run_s=0.05, drops=1))
            with pytest.raises(DeviceError, match="link dropped|closed|connection|reset"):
                be.run_window(_models(pte)[0], 20, 1)  # the run loop turns this into an invalid window
            # reconnects, waits out the runner it lost (it may still run on the phone), measures again
            again = be.run_window(_models(pte)[0], 5, 1)
            assert again.valid and again.n_inferences == 5, again.reason
            assert again.extra["after_lost_run"]["lost_window"].startswith("inf")
        run = st.get_run(run_id)
        assert run.virtual and run.measures_energy
        windows = st.windows(run_id)
        assert [w.seq for w in windows] == list(range(9))
        assert all(w.valid for w in windows), [(w.reason, w.settings_json) for w in windows if not w.valid]
        inf = [w for w in windows if w.kind == "inference"]
        assert all(json_sync(w) == "markers" for w in inf)
        rows = model_rows(st.models(run_id), windows)
        # virtual Nexus 4: idle 0.07 A, +0.28 A per busy thread at 3.8 V -> 1.064 W per busy thread
        for r in rows:
            expected_mj = 1.064 * r["time_ms"]
            assert r["energy_mj"] == pytest.approx(expected_mj, rel=0.15), r
            assert r["valid_windows"] == 2
        idle = [w.mean_power_w for w in windows if w.kind == "idle"]
        assert np.allclose(idle, 0.07 * 3.8, rtol=0.05)
        tr = st.traces.get(inf[0].trace_hash)
        assert {"inference", "sync", "warmup"} <= set(tr["phase_name"].tolist())
        assert tr["t_s"].size > 0.4 * 5000
        rep = build_report(st, run_id)
        assert "virtual lab" in (rep.out_dir / "table3.md").read_text()
        assert (rep.out_dir / "power_trace.png").is_file()
        assert not math.isnan(rows[1]["energy_saved_pct"])


def json_sync(w):
    import json

    return json.loads(w.settings_json).get("sync")


def test_monitor_lost_mid_run_then_resume(tmp_path, pte):
    from harness.errors import MeasurementError
    from harness.runloop import check_resumable

    # 3 rounds: the 3 failed windows in a row (inference, idle, inference) can hit one model twice at a round
    # boundary, and it must still keep a valid window
    plan = make_plan("virtual", "virtual", {"window_s": 0.3, "idle_s": 0.3, "min_reps": 3, "max_reps": 3,
                                            "min_inferences_per_model": 5, "min_inference_s_per_model": 0.3,
                                            "warmup_inferences": 1})
    with Store(tmp_path / "h.db") as st:
        # the (virtual) Monsoon disappears 2.5 s after sampling starts: early, so >= 3 windows are left to fail
        # even when a loaded machine makes each window slow
        with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab", monsoon_faults={"fail_after_s": 2.5}) as be:
            run_id = create_run(st, be, plan)
            with pytest.raises(MeasurementError, match="resume"):
                run_experiment(st, be, plan, _models(pte), run_id, progress=False)
        first = st.windows(run_id)
        bad = [w for w in first if not w.valid]
        assert len(bad) == 3 and st.run_status(run_id) == "interrupted"
        with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab") as be:
            run_experiment(st, be, check_resumable(st, run_id, be), _models(pte), run_id, progress=False)
        windows = st.windows(run_id)
        assert [w.seq for w in windows] == list(range(len(windows)))  # none lost, none duplicated
        invalid = [w for w in windows if not w.valid]
        assert {w.seq for w in bad} <= {w.seq for w in invalid}  # failures kept
        # after the resume only a marker distorted by a loaded machine may fail (never silently: with its reason)
        later = [w for w in invalid if w.seq not in {b.seq for b in bad}]
        assert all(w.kind == "inference" and "sync markers not found" in w.reason for w in later), later
        assert st.run_status(run_id) == "complete"
        rows = model_rows(st.models(run_id), windows)
        # each model kept a valid window, unless a loaded machine distorted its markers (stated above)
        assert all(r["valid_windows"] >= 1 for r in rows) or later
        assert sum(r["invalid_windows"] for r in rows) + sum(1 for w in bad if w.kind == "idle") == 3 + len(later)


def test_short_run_reports_latency_phases_and_target_not_reached(tmp_path, pte, capsys):
    """Two rounds cannot reach a 0.01-point savings CI: the run is complete, target not reached, in the
    outcome, the store's events and ``show --json``; every row carries the latency distribution and phases."""
    from harness.cli import main
    from harness.tables import run_rows

    plan = make_plan("virtual", "virtual", {"window_s": 0.3, "idle_s": 0.2, "min_reps": 2, "max_reps": 2,
                                            "min_inferences_per_model": 8, "min_inference_s_per_model": 0.0,
                                            "warmup_inferences": 3, "target_saved_ci_pts": 0.01})
    db = tmp_path / "h.db"
    with Store(db) as st:
        with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab") as be:
            run_id = create_run(st, be, plan)
            out = run_experiment(st, be, plan, _models(pte), run_id, progress=False)
        assert out.status == "complete" and out.target_reached is False
        assert out.status_text == "complete, target not reached"
        assert out.misses and all(m["level"] == 50 and m["target"] == 0.01 for m in out.misses)
        events = [e for e, _, _ in st.events(run_id)]
        assert events[-2:] == ["target_not_reached", "complete"] and st.run_status(run_id) == "complete"
        rows = run_rows(st, run_id)
    # a loaded machine may distort a window's sync markers (invalid, with its reason): judge the valid ones
    measured = [r for r in rows if r["valid_windows"]]
    assert measured
    for r in measured:
        assert 0 < r["latency_p50_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"]
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["warmup_ms"] >= r["first_inference_ms"]
    assert "energy_saved_pct_ci" in rows[1] and "paired_rounds" in rows[1]
    assert main(["show", run_id, "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "complete" and shown["status_text"] == "complete, target not reached"
    assert shown["target_reached"] is False and shown["target_misses"]
    for key in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "load_ms", "first_inference_ms", "warmup_ms"):
        assert [r[key] for r in shown["rows"]] == [r[key] for r in rows]

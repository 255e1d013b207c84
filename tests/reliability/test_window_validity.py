"""A window is valid only when the harness knows the phone ran as planned (issue 11, point 2; issue 12).

Driven through the virtual lab with its own fault flags (the virtual phone's ``FaultConfig``, the virtual
Monsoon's ``voltage_drift_v_per_s``) and ``harness.runloop.run_experiment``, the loop ``harness run`` uses:

- a link dropped mid-window: the runner goes on on the phone; the harness waits it out before the next
  window, so no idle window is stored valid while the runner still draws power;
- a 20 ms delay on every ADB packet: a stored valid inference window was synced by its markers, or by host
  timestamps whose stated error bound is within the limit, and its energy agrees with the power model;
- a drifting supply voltage: the window is stored invalid with the same reason ``harness energy`` gives
  for the same span of the same trace file.
"""

from __future__ import annotations

import json

import pytest

from device.files import file_hash
from harness.backends import VirtualLabBackend
from harness.errors import MeasurementError
from harness.plan import make_plan
from harness.runloop import PreparedModel, create_run, run_experiment
from harness.store import Store
from harness.tables import model_rows

IDLE_W = 0.07 * 3.8  # virtual Nexus 4: 0.07 A idle at 3.8 V
BUSY_THREAD_W = 1.064  # +0.28 A per busy thread


@pytest.fixture(scope="module")
def pte(base_pte):
    return base_pte


def _models(pte):
    h = file_hash(pte)
    return [PreparedModel("L0", 0, (0, 1, 2, 3, 4), "paper", 100, 0.0, "m0", h, str(pte)),
            PreparedModel("L50", 50, (0, 1, 2, 3, 4), "paper", 50, 50.0, "m50", h, str(pte))]


def _plan(reps: int = 2):
    return make_plan("virtual", "virtual", {"window_s": 0.4, "idle_s": 0.4, "min_reps": reps, "max_reps": reps,
                                            "min_inferences_per_model": 8, "min_inference_s_per_model": 0.4,
                                            "warmup_inferences": 1})


def _settings(w) -> dict:
    return json.loads(w.settings_json)


def _run_with_fault_after_first_inference(tmp_path, pte, faults):
    """A run whose phone gets ``faults`` once the first inference window is stored; returns (store, run id,
    outcome or the MeasurementError)."""
    plan = _plan()
    st = Store(tmp_path / "h.db")
    with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab") as be:
        injected = []

        def inject(rec):
            if rec.kind == "inference" and not injected:
                be.phone.set_faults(faults)
                injected.append(rec.seq)

        run_id = create_run(st, be, plan)
        try:
            outcome = run_experiment(st, be, plan, _models(pte), run_id, progress=False, on_window=inject)
        except MeasurementError as exc:
            outcome = exc
    assert injected
    return st, run_id, outcome, injected[0]


def test_link_dropped_mid_window_no_idle_window_stored_valid_while_the_runner_runs(tmp_path, pte):
    from device.virtual_phone import FaultConfig

    st, run_id, outcome, first = _run_with_fault_after_first_inference(
        tmp_path, pte, FaultConfig(drop_mid_run_s=0.05, drops=1))
    with st:
        windows = st.windows(run_id)
        dropped = [w for w in windows if w.kind == "inference" and w.seq > first][0]
        assert not dropped.valid and "DeviceError" in dropped.reason, dropped.reason
        after = windows[windows.index(dropped) + 1]
        if after.valid:  # the harness waited for the lost runner before measuring
            assert _settings(after)["after_lost_run"]["lost_window"].startswith("inf")
        else:
            assert "never reported its end" in after.reason
        idle_valid = [w.mean_power_w for w in windows if w.kind == "idle" and w.valid]
        assert idle_valid and all(abs(p / IDLE_W - 1) < 0.1 for p in idle_valid), idle_valid
        assert getattr(outcome, "status", "") == "complete", outcome


def test_delayed_link_valid_windows_are_synced_within_their_stated_bound(tmp_path, pte):
    from device.virtual_phone import FaultConfig

    st, run_id, outcome, first = _run_with_fault_after_first_inference(tmp_path, pte, FaultConfig(delay_s=0.02))
    with st:
        windows = st.windows(run_id)
        late = [w for w in windows if w.kind == "inference" and w.seq > first]
        assert late
        for w in late:
            s = _settings(w)
            if w.valid:
                assert s["sync"] == "markers" or s["sync_error_bound_s"] <= 0.01 * w.busy_s, s
                assert w.energy_j / w.busy_s == pytest.approx(IDLE_W + BUSY_THREAD_W, rel=0.1)
            else:
                assert w.reason
                if s.get("sync") == "host":
                    assert "sync markers not found" in w.reason
        rows = model_rows(st.models(run_id), windows)
        for r in rows:
            if r["valid_windows"]:
                assert r["energy_mj"] == pytest.approx(BUSY_THREAD_W * r["time_ms"], rel=0.15), r


def test_voltage_drift_stored_invalid_with_the_reason_harness_energy_gives(tmp_path, pte, capsys):
    from device.tracefile import open_trace
    from harness.cli import main

    plan = _plan()
    with Store(tmp_path / "h.db") as st:
        with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab",
                               monsoon_faults={"voltage_drift_v_per_s": 0.5}) as be:
            run_id = create_run(st, be, plan)
            with pytest.raises(MeasurementError, match="failed windows in a row"):
                run_experiment(st, be, plan, _models(pte), run_id, progress=False)
        windows = st.windows(run_id)
        assert len(windows) == plan.max_consecutive_failures
        assert any(w.kind == "inference" for w in windows)
        for w in windows:
            assert not w.valid and "voltage drift" in w.reason, w.reason
            s = _settings(w)
            src = open_trace(s["trace_path"])
            off = (s["sample0_index"] - src.first_index) / src.rate_hz
            a, b = s["span_s"][0] + off, s["span_s"][1] + off
            code = main(["energy", s["trace_path"], "--window", f"{a!r}:{b!r}", "--json"])
            res = json.loads(capsys.readouterr().out)
            assert code == 1 and not res["valid"]
            assert res["energy_j"] == pytest.approx(w.energy_j, rel=1e-9)
            if s["sync"] == "host":  # the stored reason also says why host timestamps were not trusted
                assert set(res["reasons"]) < set(w.reason.split("; "))
            else:
                assert "; ".join(res["reasons"]) == w.reason

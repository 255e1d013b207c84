import dataclasses
import math

import numpy as np
import pytest

from harness.report import build_report
from harness.store import ModelRecord, RunRecord, Store, WindowRecord, fingerprint_id
from harness.tables import energy_per_inference_mj, model_rows, rows_csv, table3_markdown, table4_markdown


def test_energy_per_inference_exact():
    # 2.0 J over 1.0 s busy, idle 0.5 W before and 0.7 W after -> (2.0 - 0.6) / 100 = 14 mJ
    got = energy_per_inference_mj([2.0, 2.0, 2.0, 2.0], [1.0] * 4, [100, 100, 0, 100],
                                  [0.5, np.nan, 0.5, np.nan], [0.7, 0.7, 0.7, np.nan])
    np.testing.assert_allclose(got[:2], [14.0, 13.0])
    assert np.isnan(got[2]) and np.isnan(got[3])


def _windows(run_id, plan, energy=True):
    """plan: list of (model_key, time_ms, energy_j) for inference windows; idle windows at 1 W."""
    out = []
    seq = 0
    for key, t_ms, e_j in plan:
        out.append(WindowRecord(run_id, seq, 0, "idle", "", "valid", duration_s=1.0, busy_s=1.0,
                                energy_j=1.0 if energy else None, mean_power_w=1.0 if energy else None))
        status = "valid" if t_ms is not None else "invalid"
        out.append(WindowRecord(run_id, seq + 1, 0, "inference", key, status, "" if t_ms else "phone lost",
                                n_inferences=100, busy_s=1.0, duration_s=1.0, time_ms=t_ms,
                                energy_j=e_j if energy else None))
        seq += 2
    out.append(WindowRecord(run_id, seq, 0, "idle", "", "valid", duration_s=1.0, busy_s=1.0,
                            energy_j=1.0 if energy else None, mean_power_w=1.0 if energy else None))
    return out


NIN_FLOPS = 444_973_056  # specialist.flops.BASE_FLOPS: the paper's columns are shown for NIN runs only
MODELS = [ModelRecord("r", "L0", 0, "0,1,2,3,4", "mean", NIN_FLOPS, 0.0, "h0", "a0", "p0", 90.0),
          ModelRecord("r", "L50", 50, "0,1,2,3,4", "mean", 422, 57.8, "h5", "a5", "p5", 60.0)]
PLAN = [("L0", 10.0, 3.0), ("L50", 6.0, 2.0), ("L0", 10.0, 3.0), ("L50", 6.0, 2.0), ("L50", None, None)]


def test_model_rows_known_answers():
    rows = model_rows(MODELS, _windows("r", PLAN))
    base, spec = rows
    assert base["level"] == 0 and base["time_ms"] == 10.0 and base["time_ms_ci"] == 0.0
    assert base["energy_mj"] == pytest.approx(20.0)  # (3 J - 1 s * 1 W) / 100
    assert spec["energy_mj"] == pytest.approx(10.0)
    assert spec["energy_saved_pct"] == pytest.approx(50.0)
    assert spec["time_saved_pct"] == pytest.approx(40.0)
    assert spec["valid_windows"] == 2 and spec["invalid_windows"] == 1
    assert math.isnan(base["time_saved_pct"])


def test_model_rows_without_energy():
    rows = model_rows(MODELS, _windows("r", PLAN, energy=False), measures_energy=False)
    assert rows[1]["energy_mj"] is None and rows[1]["energy_saved_pct"] is None
    assert rows[1]["time_saved_pct"] == pytest.approx(40.0)


def test_tables_say_virtual_and_reference_paper():
    rows = model_rows(MODELS, _windows("r", PLAN))
    t3 = table3_markdown(rows, "virtual-nexus4", virtual=True)
    assert "virtual lab" in t3 and "paper Nexus 4" in t3 and "157.9" in t3
    assert t3.index("| 57.8") < t3.index("| 0.0")  # most pruned first, as the paper
    t4 = table4_markdown(rows, "host", virtual=False, measures_energy=False)
    assert "virtual lab" not in t4 and "no power monitor" in t4 and "paper" not in t4
    other = [dataclasses.replace(MODELS[0], flops=81_551_360), MODELS[1]]  # ResNet-20: not the paper's model
    t3 = table3_markdown(model_rows(other, _windows("r", PLAN)), "virtual-nexus4", virtual=True)
    assert "virtual lab" in t3 and "paper" not in t3
    csv = rows_csv(rows, "host", False).splitlines()
    assert csv[0].startswith("device,virtual,level") and csv[1].startswith("host,0,50,57.8")


def test_build_report_writes_files(tmp_path):
    fp, fpj = fingerprint_id({"x": 1})
    with Store(tmp_path / "h.db") as st:
        st.create_run(RunRecord("r", "virtual-nexus4", fp, fpj, True, True, "vmonsoon", "{}"))
        for m in MODELS:
            st.add_model(m)
        t = np.linspace(0, 1, 500)
        h = st.traces.put({"t_s": t, "power_w": np.where(t > 0.3, 2.0, 1.0),
                           "phase_start_s": np.array([0.0, 0.3]), "phase_end_s": np.array([0.3, 1.0]),
                           "phase_name": np.array(["idle", "inference"])})
        for w in _windows("r", PLAN):
            if w.seq == 1:
                w = WindowRecord(**{**w.__dict__, "trace_hash": h})
            st.add_window(w)
        rep = build_report(st, "r")
    assert rep.out_dir == tmp_path / "r"
    for name in ("table3.md", "table4.md", "tables.csv", "report.html", "energy_time_vs_flops.png",
                 "power_trace.png", "pareto.png", "rows.json"):
        assert (rep.out_dir / name).stat().st_size > 100, name
    page = (rep.out_dir / "report.html").read_text()
    assert "VIRTUAL LAB" in page and "power_trace.png" in page
    assert (rep.out_dir / "power_trace.png").read_bytes()[:4] == b"\x89PNG"

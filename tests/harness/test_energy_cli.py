"""``harness energy`` end to end on trace files written to a temporary directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device.power_model import ground_truth_trace
from device.tracefile import TraceChunk, write_trace
from harness.cli import main


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    g = ground_truth_trace(spikes=4, drop_every=997, seed=3)
    idx = g.sample_index
    b = np.concatenate(([0], np.flatnonzero(np.diff(idx) != 1) + 1, [idx.size]))
    chunks = [TraceChunk(int(idx[s]), g.current_a[s:e], g.voltage_v[s:e]) for s, e in zip(b[:-1], b[1:], strict=True)]
    write_trace(d / "gt.ptrc", chunks, {"rate_hz": 5000.0, "instrument": {"kind": "synthetic"}})
    # the monsoon library's CSV: "Time(ms)" in seconds, one value per 3-sample packet, trailing comma
    full = ground_truth_trace(seed=3)
    n = full.current_a.size
    t = (np.arange(n) // 3) * 3 / 5000.0 + 0.0173
    lines = ["Time(ms),Main(mA),Main Voltage(V),"]
    lines += [f"{t[i]:.6f},{1000 * full.current_a[i]:.4f},{full.voltage_v[i]:.3f}," for i in range(n)]
    (d / "se.csv").write_text("\n".join(lines) + "\n")
    return d, g, full


def run_json(capsys, *argv):
    code = main(["energy", *map(str, argv), "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_energy_json_keys_and_truth(gt, capsys):
    d, g, _ = gt
    (a, b), (i1, i2) = g.window_s, g.idle_windows_s
    code, res, _ = run_json(capsys, d / "gt.ptrc", "--window", f"{a}:{b}", "--idle", f"{i1[0]}:{i1[1]}",
                            "--idle", f"{i2[0]}:{i2[1]}", "--inferences", 100)
    assert code == 0
    for k in ("energy_j", "mean_power_w", "duration_s", "samples", "dropped", "idle_power_w", "net_energy_j",
              "net_energy_per_inference_j"):
        assert k in res
    for k in ("energy_j", "mean_power_w", "idle_power_w", "net_energy_j", "net_energy_per_inference_j"):
        lo, hi = res[f"{k}_ci"]
        assert lo <= res[k] <= hi
    assert abs(res["energy_j"] / g.energy_j - 1) < 0.005
    assert abs(res["net_energy_per_inference_j"] / (g.net_energy_j / 100) - 1) < 0.005
    assert res["dropped"] > 0 and res["valid"] is True


def test_energy_sync_snaps_to_markers(gt, capsys):
    d, g, _ = gt
    a, b = g.window_s
    code, res, _ = run_json(capsys, d / "gt.ptrc", "--window", f"{a - 0.3}:{b + 0.25}", "--sync")
    assert code == 0
    assert abs(res["window_s"][0] - a) < 1e-3 and abs(res["window_s"][1] - b) < 1e-3
    assert res["sync"]["start"]["sync_error_s"] == pytest.approx(0.3, abs=1e-3)


def test_energy_monsoon_library_csv(gt, capsys):
    d, _, full = gt
    a, b = full.window_s
    code, res, _ = run_json(capsys, d / "se.csv", "--window", f"{a}:{b}")
    assert code == 0 and res["time_mode"] == "per-packet-s"
    assert abs(res["energy_j"] / full.energy_j - 1) < 0.005


def test_powertool_csv_ms_with_gap(tmp_path, capsys):
    n = 10_000
    t_ms = np.arange(n) * 0.2
    keep = np.ones(n, bool)
    keep[5000:5010] = False
    rows = [f"{t_ms[i]:.1f},{500.0:.1f},{4.0:.2f}" for i in np.flatnonzero(keep)]
    p = tmp_path / "pt.csv"
    p.write_text("Time(ms),Main(mA),Main Voltage(V)\n" + "\n".join(rows) + "\n")
    code, res, _ = run_json(capsys, p, "--window", "0:2")
    assert res["time_mode"] == "per-sample-ms" and res["dropped"] == 10
    assert res["energy_j"] == pytest.approx(4.0, rel=1e-9)
    assert code == 1 or res["valid"]  # 0.1% dropped passes the default gate
    code, res, _ = run_json(capsys, p, "--window", "0:2", "--time-unit", "s")
    assert code == 2 and res is None


@pytest.mark.parametrize(
    "content,needle",
    [
        ("Time(ms),Main(mA),Main Voltage(V)\n0.0,1,4\n0.2,1,4,9,9\n", "line 3"),
        ("Time(ms),Main(mA),Main Voltage(V)\n0.0,1,4\n0.2,x,4\n0.4,1,4\n", "line 3"),
        ("Time(ms),Main(mA),Main Voltage(V)\n0.0,1,4\n0.4,1,4\n0.2,1,4\n", "backwards"),
        ("a,b\n1,2\n", "not a Monsoon CSV"),
    ],
)
def test_bad_csv_one_line_exit_2(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    code, res, err = run_json(capsys, p, "--window", "0:0.0002")
    assert code == 2 and res is None
    assert needle in err and len(err.strip().splitlines()) == 1


def test_bad_windows(gt, capsys):
    d, _, _ = gt
    for argv, needle in [(["--window", "0:1000"], "outside the trace"), (["--window", "3:1"], "empty"),
                         (["--window", "0:1", "--inferences", "5"], "--idle"),
                         (["--window", "0:1", "--inferences", "0", "--idle", "1:2"], "positive")]:
        code, res, err = run_json(capsys, d / "gt.ptrc", *argv)
        assert code == 2 and res is None and needle in err


def test_invalid_window_is_reported_not_hidden(tmp_path, capsys):
    cur = np.full(5000, 0.5, dtype=np.float32)
    cur[10] = np.nan
    write_trace(tmp_path / "nan.ptrc", [TraceChunk(0, cur, np.full(5000, 4.0, np.float32))], {"rate_hz": 5000.0})
    code, res, _ = run_json(capsys, tmp_path / "nan.ptrc", "--window", "0:1")
    assert code == 1 and res["valid"] is False and "NaN" in res["reasons"][0]


def test_monitor_stopped_mid_window_is_an_invalid_record(tmp_path, capsys):
    from device.tracefile import TraceWriter

    w = TraceWriter(tmp_path / "cut.ptrc", {"rate_hz": 5000.0})
    w.append(0, np.full(5000, 0.5, np.float32), np.full(5000, 4.0, np.float32))
    w.close({"end_reason": "monsoon stopped: No such device"})
    code, res, _ = run_json(capsys, tmp_path / "cut.ptrc", "--window", "0.5:3")
    assert code == 1 and res["valid"] is False and res["trace_end_reason"].startswith("monsoon stopped")
    assert any("inside the window" in r for r in res["reasons"])
    assert res["samples"] == 2500 and res["dropped"] == 10000

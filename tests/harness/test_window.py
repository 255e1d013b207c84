"""The one analysis path (``harness.window``) on synthetic traces with exactly known answers."""

from __future__ import annotations

import numpy as np
import pytest

from device import sync as S
from harness.energy import IntegrityGate
from harness.window import (
    ArraySource,
    WindowLimits,
    WindowMarks,
    analyse_window,
    energy_per_inference_mj,
    host_sync_reason,
    inference_span,
)

RATE = 5000.0
V = 4.0
IDLE_A, BURST_A, RUN_A = 0.1, 0.35, 0.6


def _paint(cur: np.ndarray, a_s: float, b_s: float, amps: float) -> None:
    cur[int(round(a_s * RATE)):int(round(b_s * RATE))] = amps


def _marked_trace(start_marker_s: float = 0.5, load_s: float = 0.2, run_s: float = 2.0, total_s: float = 5.0):
    """Idle, start marker, load (idle level), inference at RUN_A, end marker; every edge on the sample grid.

    Returns (current, (a, b) sync points, (inference start, inference end))."""
    cur = np.full(int(total_s * RATE), IDLE_A)
    for a, b in S.marker_busy_intervals("start", start_marker_s):
        _paint(cur, a, b, BURST_A)
    a_sync = S.marker_busy_intervals("start", start_marker_s)[-1][1]
    inf0 = a_sync + S.GUARD_S + load_s
    inf1 = inf0 + run_s
    _paint(cur, inf0, inf1, RUN_A)
    end0 = inf1  # the end marker's first guard starts when the runner ends
    for a, b in S.marker_busy_intervals("end", end0):
        _paint(cur, a, b, BURST_A)
    b_sync = S.marker_busy_intervals("end", end0)[0][0]
    return cur, (a_sync, b_sync), (inf0, inf1)


def _src(cur, volt=V, first_index=0, index=None):
    idx = np.arange(first_index, first_index + cur.size) if index is None else index
    vol = np.broadcast_to(np.asarray(volt, dtype=np.float64), cur.shape)
    return ArraySource(idx, cur, vol, RATE, first_index)


def test_array_source_chunks_split_at_gaps_and_clip():
    idx = np.array([10, 11, 12, 15, 16, 20])
    src = ArraySource(idx, np.arange(6.0), np.ones(6), RATE, 10)
    got = [(c[0], c[1].tolist()) for c in src.iter_chunks()]
    assert got == [(10, [0.0, 1.0, 2.0]), (15, [3.0, 4.0]), (20, [5.0])]
    assert [(c[0], c[1].tolist()) for c in src.iter_chunks(11, 16)] == [(11, [1.0, 2.0]), (15, [3.0])]


def test_inference_span_is_the_last_inference_s_before_the_guard():
    assert inference_span(1.0, 4.0, 2.0, 0.06) == pytest.approx((1.94, 3.94))
    assert inference_span(1.0, 4.0, 9.0, 0.06) == pytest.approx((1.0, 3.94))  # never before the start
    assert inference_span(1.0, 4.0, None, 0.06) == (1.0, 4.0)


def test_markers_found_energy_of_the_inference_span_exact():
    cur, (a, b), (i0, i1) = _marked_trace()
    # host estimates 30 ms late and 40 ms early: the markers decide
    marks = WindowMarks(a + 0.03, b - 0.04, sync=True, host_error_s=0.5, inference_s=i1 - i0, n_inferences=100)
    an = analyse_window(_src(cur), marks)
    assert an.valid, an.reasons
    assert an.sync == "markers" and an.sync_error_bound_s == 0.0
    assert an.window_s == pytest.approx((a, b), abs=1e-9)
    assert an.span_s == pytest.approx((i0, i1), abs=1e-9)
    assert an.energy_j == pytest.approx(RUN_A * V * (i1 - i0), rel=1e-9)
    assert an.mean_power_w == pytest.approx(RUN_A * V, rel=1e-12)
    assert an.stats.dropped == 0 and an.stats.voltage_drift_frac == 0.0
    assert {p[0] for p in an.phases} == {"sync", "warmup", "inference"}


def test_idle_subtraction_and_per_inference_exact():
    cur, (a, b), (i0, i1) = _marked_trace()
    marks = WindowMarks(a, b, sync=True, inference_s=i1 - i0, n_inferences=200)
    idles = [(0.05, 0.45), (4.0, 4.9)]
    an = analyse_window(_src(cur), marks, idle_windows_s=idles)
    assert an.valid, an.reasons
    net = (RUN_A - IDLE_A) * V * (i1 - i0)
    assert an.net.idle_power_w == pytest.approx(IDLE_A * V, rel=1e-12)
    assert an.net.net_energy_j == pytest.approx(net, rel=1e-9)
    assert an.net_energy_per_inference_j == pytest.approx(net / 200, rel=1e-9)
    # the stored-window form (tables) gives the same number from the same pieces
    got = energy_per_inference_mj([an.energy_j], [an.busy_s], [200], [IDLE_A * V], [np.nan])
    assert got[0] == pytest.approx(1000 * net / 200, rel=1e-9)


def test_no_markers_host_fallback_valid_only_with_a_small_stated_bound():
    cur = np.full(int(4 * RATE), RUN_A)  # no markers at all
    base = dict(start_s=0.5, end_s=3.06, sync=True, inference_s=2.0, n_inferences=10)
    unknown = analyse_window(_src(cur), WindowMarks(**base))
    assert not unknown.valid and unknown.sync == "host"
    assert "sync markers not found" in unknown.reason and "error is unknown" in unknown.reason
    small = analyse_window(_src(cur), WindowMarks(**base, host_error_s=0.01))  # 0.5% of a 2 s span
    assert small.valid and small.sync == "host" and small.sync_error_bound_s == 0.01
    assert small.span_s == pytest.approx((1.0, 3.0))
    assert small.energy_j == pytest.approx(RUN_A * V * 2.0, rel=1e-9)
    big = analyse_window(_src(cur), WindowMarks(**base, host_error_s=0.1))
    assert not big.valid and "host-timestamp error up to 100.0 ms = 5.0% of the 2.000 s span > 1%" in big.reason


def test_host_sync_reason_limits():
    assert host_sync_reason(0.02, 2.0, 0.01, "x") == ""
    assert "unknown" in host_sync_reason(None, 2.0, 0.01, "x")
    assert "unknown" in host_sync_reason(float("nan"), 2.0, 0.01, "x")
    assert "2.0% of the 1.000 s span" in host_sync_reason(0.02, 1.0, 0.01, "x")


def test_phone_state_unknown_makes_the_window_invalid_first():
    cur = np.full(int(2 * RATE), IDLE_A)
    an = analyse_window(_src(cur), WindowMarks(0.0, 2.0, kind="idle", phone_state="runner of inf3 lost"))
    assert not an.valid and an.reasons == ("runner of inf3 lost",)
    assert an.energy_j == pytest.approx(IDLE_A * V * 2.0, rel=1e-12)  # still measured, for the record


def test_voltage_drift_is_invalid_with_the_gate_reason():
    n = int(2 * RATE)
    volt = np.linspace(4.0, 4.2, n)  # 5% over the window
    an = analyse_window(_src(np.full(n, IDLE_A), volt), WindowMarks(0.0, 2.0, kind="idle"))
    assert not an.valid and len(an.reasons) == 1 and an.reasons[0].startswith("voltage drift ")
    # 32 batch means of a linear ramp span 31/32 of it
    assert an.stats.voltage_drift_frac == pytest.approx(0.2 * 31 / 32 / 4.1, rel=1e-3)
    loose = WindowLimits(gate=IntegrityGate(max_voltage_drift_frac=0.06))
    assert analyse_window(_src(np.full(n, IDLE_A), volt), WindowMarks(0.0, 2.0, kind="idle"), loose).valid


def test_dropped_and_bad_samples_and_usb_current_gate():
    n = int(RATE)
    keep = np.ones(n, bool)
    keep[1000:1100] = False  # 2% dropped
    idx = np.arange(n)[keep]
    an = analyse_window(_src(np.full(idx.size, IDLE_A), index=idx), WindowMarks(0.0, 1.0, kind="idle"))
    assert not an.valid and an.stats.dropped == 100 and "received 4900/5000" in an.reason
    assert an.energy_j == pytest.approx(IDLE_A * V * 1.0, rel=1e-12)  # dropped samples do not bias it
    cur = np.full(n, IDLE_A)
    cur[7] = -0.5
    assert "1 samples NaN, negative" in analyse_window(_src(cur), WindowMarks(0.0, 1.0)).reason
    usb = ArraySource(np.arange(n), np.full(n, IDLE_A), np.full(n, V), RATE, 0, True, 0.1)
    assert "USB channel current 0.1000 A" in analyse_window(usb, WindowMarks(0.0, 1.0)).reason


def test_trace_time_zero_is_the_first_expected_sample():
    """``ArraySource.from_trace``: a monitor window whose first samples were dropped keeps its time axis."""
    from device.power import Trace

    n = int(RATE)
    idx = np.arange(1000 + 50, 1000 + n)  # samples 1000..1049 dropped
    tr = Trace(sample_index=idx, current_a=np.full(idx.size, IDLE_A, np.float32),
               voltage_v=np.full(idx.size, V, np.float32), rate_hz=RATE, anchor_mono_s=10.0,
               dropped_samples=50, expected_samples=n, start_mono_s=10.0 + 1000 / RATE,
               end_mono_s=10.0 + (1000 + n) / RATE)
    src = ArraySource.from_trace(tr)
    assert src.first_index == 1000
    an = analyse_window(src, WindowMarks(0.0, tr.duration_s, kind="idle"))
    assert an.stats.expected_samples == n and an.stats.dropped == 50

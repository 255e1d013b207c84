"""Trace analysis on synthetic traces with exactly known answers."""

from __future__ import annotations

import numpy as np
import pytest

from device import sync
from device.power_model import PowerModelProfile, ground_truth_trace
from harness import energy as E
from harness.errors import UsageError


def test_constant_power_exact():
    cur = np.full(50_000, 0.5)
    (w,) = E.window_stats_from_arrays(cur, 4.0, 5000.0, [(1.0, 3.0)])
    assert w.expected_samples == 10_000 and w.samples == 10_000 and w.dropped == 0
    assert w.energy_j == pytest.approx(4.0, rel=1e-12)
    assert w.mean_power_w == pytest.approx(2.0, rel=1e-12)
    assert w.energy_ci_j[1] - w.energy_ci_j[0] == pytest.approx(0.0, abs=1e-9)
    assert w.valid


def test_step_window_counts_each_sample_once():
    # 1 W for samples 0..4999, 3 W after: window 0.5..1.5 s holds 2500 of each
    cur = np.where(np.arange(10_000) < 5000, 1.0, 3.0)
    (w,) = E.window_stats_from_arrays(cur, 1.0, 5000.0, [(0.5, 1.5)])
    assert w.samples == 5000
    assert w.energy_j == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(spikes=8, drop_every=700, drop_run=3, seed=1),
        dict(profile=PowerModelProfile(noise_current_a=0.03, drift_a_per_s=0.001), seed=2),
        dict(rate_hz=1000.0, seed=4, work_threads=3),
        dict(rate_hz=20000.0, seed=5, work_s=2.0),
    ],
)
def test_ground_truth_energy_and_sync(kw):
    g = ground_truth_trace(**kw)
    r = g.rate_hz
    ms = sync.find_marker(g.current_a, r, "start", expected_sync_s=g.window_s[0] + 0.4,
                          sample_index=g.sample_index)
    me = sync.find_marker(g.current_a, r, "end", expected_sync_s=g.window_s[1] - 0.3,
                          sample_index=g.sample_index)
    if r >= 5000:
        assert abs(ms.sync_point_s - g.window_s[0]) <= 1e-3
        assert abs(me.sync_point_s - g.window_s[1]) <= 1e-3
    assert ms.sync_error_s == pytest.approx(-0.4, abs=2e-3)
    win = (ms.sync_point_s, me.sync_point_s)
    stats = E.window_stats_from_arrays(g.current_a, g.voltage_v, r, [win, *g.idle_windows_s],
                                       sample_index=g.sample_index)
    assert all(s.valid for s in stats), [s.reasons for s in stats]
    assert abs(stats[0].energy_j / g.energy_j - 1) <= 0.005
    ne = E.net_energy(stats[0], stats[1:])
    assert ne.idle_windows == (0, 1)
    assert abs(ne.net_energy_j / g.net_energy_j - 1) <= 0.005
    assert ne.net_energy_ci_j[0] < ne.net_energy_j < ne.net_energy_ci_j[1]
    if kw.get("drop_every"):
        assert stats[0].dropped > 0


def test_ci_coverage_white_noise():
    rng = np.random.default_rng(7)
    hits = 0
    reps = 300
    noise = rng.normal(0.0, 0.05, size=(reps, 2000))
    for k in range(reps):
        (w,) = E.window_stats_from_arrays(1.0 + noise[k], 2.0, 1000.0, [(0.0, 2.0)])
        hits += w.energy_ci_j[0] <= 4.0 <= w.energy_ci_j[1]
    assert 0.90 <= hits / reps <= 0.99


def test_bracketing_idle_and_net_energy():
    # idle 1 W, load 3 W in 2..4 s, other idle levels far away must be ignored
    t = np.arange(0, 10, 1 / 1000)
    p = np.where((t >= 2) & (t < 4), 3.0, 1.0)
    p = np.where(t >= 8, 9.0, p)
    stats = E.window_stats_from_arrays(p, 1.0, 1000.0, [(2, 4), (0.5, 1.5), (4.5, 5.5), (8.0, 9.0)])
    ne = E.net_energy(stats[0], stats[1:])
    assert ne.idle_windows == (0, 1)
    assert ne.idle_power_w == pytest.approx(1.0)
    assert ne.net_energy_j == pytest.approx(4.0)


def test_idle_power_drift_term():
    a = E.WindowStats(0, 1, 1, 10, 10, 0, 0, 1.0, 0.0, 0.0, (1, 1), 1, 0, (1, 1), 4, 0, True, np.nan, True)
    b = E.WindowStats(3, 4, 1, 10, 10, 0, 0, 1.6, 0.0, 0.0, (1, 1), 1, 0, (1, 1), 4, 0, True, np.nan, True)
    m, se = E.idle_power([a, b])
    assert m == pytest.approx(1.3)
    assert se == pytest.approx(0.6 / np.sqrt(12))


def test_marginal_energy_exact_line():
    n = [100, 200, 400]
    y = [5.0 + 0.02 * k for k in n]
    m = E.marginal_energy(n, y, [0.01, 0.01, 0.01])
    assert m.slope_j == pytest.approx(0.02)
    assert m.intercept_j == pytest.approx(5.0)
    assert m.ratio_j[0] == pytest.approx(0.07)
    assert m.slope_ci_j[0] < 0.02 < m.slope_ci_j[1]
    with pytest.raises(UsageError):
        E.marginal_energy([100, 100], [1.0, 1.0])


def test_integrity_gate_reasons():
    cur = np.full(10_000, 0.3)
    cur[100] = np.nan
    cur[200] = -1.0
    cur[300] = 99.0
    (w,) = E.window_stats_from_arrays(cur, 4.0, 1000.0, [(0.0, 1.0)])
    assert not w.valid and w.bad_samples == 3
    assert any("NaN, negative" in r for r in w.reasons)
    assert w.mean_power_w == pytest.approx(1.2)  # bad samples excluded, never averaged in
    idx = np.concatenate([np.arange(0, 500), np.arange(600, 1000)])
    (w,) = E.window_stats_from_arrays(np.full(900, 0.3), 4.0, 1000.0, [(0.0, 1.0)], sample_index=idx)
    assert w.dropped == 100 and not w.valid and "received 900/1000" in w.reasons[0]
    acc = E.WindowAccumulator([(0.0, 1.0), (1.0, 2.0)], 1000.0)
    acc.feed(0, np.full(1000, 0.3), np.full(1000, 4.0), calibrated=False, usb_current_a=0.0)
    acc.feed(1000, np.full(1000, 0.3), np.linspace(4.0, 3.6, 1000), calibrated=True, usb_current_a=0.2)
    a, b = acc.results()
    assert a.reasons == ("monitor not calibrated during the window",)
    assert any("USB channel current" in r for r in b.reasons)
    assert any("voltage drift" in r for r in b.reasons)
    (w,) = E.window_stats_from_arrays(np.full(1000, 0.3), 4.0, 1000.0, [(0.5, 2.0)])
    assert not w.valid and "outside the trace" in w.reasons[0]


@pytest.mark.parametrize("bad", ["1", "a:b", "3:2", "2:2", "-1:2", "nan:1"])
def test_parse_window_rejects(bad):
    with pytest.raises(UsageError):
        E.parse_window(bad)

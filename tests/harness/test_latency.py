"""Latency statistics on synthetic data with exactly known answers."""

import numpy as np
import pytest
from scipy import stats

from harness import latency
from harness.errors import MeasurementError


def test_trimmed_mean_cuts_ten_percent_each_end():
    a = np.array([100.0, 1, 2, 3, 4, 5, 6, 7, 8, -50])  # one outlier at each end
    assert latency.trim_count(10) == 1
    assert latency.trimmed_mean(a) == pytest.approx(4.5)  # mean of 1..8
    assert latency.trimmed_mean(a, trim=0.0) == pytest.approx(8.6)


def test_winsorized_std_clamps_the_tails():
    a = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 100])
    w = np.array([2.0, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    assert latency.winsorized_std(a) == pytest.approx(np.std(w, ddof=1))


def test_ci_without_trimming_is_the_student_t_interval():
    a = np.array([1.0, 2, 3, 4, 5])
    want = stats.t.ppf(0.975, 4) * np.std(a, ddof=1) / np.sqrt(5)
    assert want == pytest.approx(1.9632, abs=1e-4)
    assert latency.trimmed_mean_ci(a, trim=0.0) == pytest.approx(want)


def test_ci_of_trimmed_mean_tukey_mclaughlin():
    a = np.arange(1.0, 21.0)  # n=20, g=0.1 -> 2 cut each end, df = 15
    w = np.clip(a, 3.0, 18.0)
    se = np.std(w, ddof=1) / (0.8 * np.sqrt(20))
    assert latency.trimmed_mean_ci(a) == pytest.approx(stats.t.ppf(0.975, 15) * se)


def test_vectorised_over_models_matches_row_by_row():
    rng = np.random.default_rng(1)
    lat = rng.gamma(5.0, 1.0, size=(4, 101))
    tm, ci = latency.trimmed_mean(lat), latency.trimmed_mean_ci(lat)
    for i in range(4):
        assert tm[i] == pytest.approx(latency.trimmed_mean(lat[i]))
        assert ci[i] == pytest.approx(latency.trimmed_mean_ci(lat[i]))
    np.testing.assert_allclose(latency.percentile(lat, 50), np.median(lat, axis=1))


def test_time_saved_and_its_ci():
    assert latency.time_saved_pct(10.0, 7.5) == pytest.approx(25.0)
    assert latency.time_saved_pct(10.0, 11.0) == pytest.approx(-10.0)
    # r = 0.75; relative CIs 0.03/0.75... : 100 * 0.75 * hypot(0.3/7.5, 0.4/10) = 100*0.75*0.0565685
    assert latency.time_saved_pct_ci(10.0, 0.4, 7.5, 0.3) == pytest.approx(4.242641, rel=1e-6)
    np.testing.assert_allclose(latency.time_saved_pct(np.array([10.0]), np.array([10.0, 5.0])), [0.0, 50.0])


def test_summarize_constant_samples():
    s = latency.summarize(np.full(50, 3.0))
    assert (s.n, s.mean_ms, s.trimmed_mean_ms, s.p50_ms, s.p90_ms) == (50, 3.0, 3.0, 3.0, 3.0)
    assert s.trimmed_mean_ms_ci == 0.0 and s.std_ms == 0.0


@pytest.mark.parametrize("bad", [np.zeros(0), np.array([1.0, np.nan, 2.0])])
def test_refuses_empty_or_nan(bad):
    with pytest.raises(MeasurementError):
        latency.summarize(bad)


# ---------------------------------------------------------------- savings and robust estimates


def test_paired_saved_pct_per_round_and_missing_rounds():
    base = np.array([10.0, 20.0, np.nan, 10.0, 0.0])
    val = np.array([8.0, 15.0, 5.0, np.nan, 1.0])
    out = latency.paired_saved_pct(base, val)
    np.testing.assert_allclose(out[:2], [20.0, 25.0])
    assert np.all(np.isnan(out[2:]))  # a missing window on either side, or a zero base: no pair


def test_saved_estimate_is_the_paired_t_interval():
    # per-round savings 20, 25, 30 (drift doubles both models in round 2: the ratio cancels it)
    base = np.array([10.0, 20.0, 10.0])
    val = np.array([8.0, 15.0, 7.0])
    est = latency.saved_estimate(base, val)
    assert est.value == pytest.approx(25.0) and est.n == 3
    assert est.ci == pytest.approx(stats.t.ppf(0.975, 2) * 5.0 / np.sqrt(3))  # sd of 20,25,30 is 5
    exact = latency.saved_estimate(np.array([10.0, 30.0]), np.array([5.0, 15.0]))  # 50% in both rounds
    assert (exact.value, exact.ci, exact.n) == (50.0, 0.0, 2)
    one = latency.saved_estimate(np.array([10.0, np.nan]), np.array([5.0, 4.0]))
    assert one.value == 50.0 and np.isnan(one.ci) and one.n == 1
    assert latency.saved_estimate(np.array([np.nan]), np.array([1.0])).n == 0


def test_robust_estimate_trims_one_window_in_five():
    v = np.array([10.0, 11.0, 9.0, 10.0, 100.0, np.nan])  # one wild window; NaN ignored
    est = latency.robust_estimate(v)
    assert est.n == 5
    assert est.value == pytest.approx(10.0 + 1.0 / 3.0)  # mean of 10, 10, 11 (9 and 100 cut)
    w = np.array([10.0, 10.0, 10.0, 11.0, 11.0])  # winsorized: 9->10, 100->11
    assert est.ci == pytest.approx(stats.t.ppf(0.975, 2) * np.std(w, ddof=1) / (0.6 * np.sqrt(5)))
    assert np.isnan(latency.robust_estimate(np.array([np.nan])).value)
    assert latency.robust_estimate(np.array([2.0, 4.0])).value == 3.0  # nothing cut below five


def test_latency_percentiles_exact():
    got = latency.latency_percentiles(np.arange(1.0, 102.0))  # 1..101: p50 = 51, p90 = 91, p99 = 100
    assert got == {"latency_p50_ms": 51.0, "latency_p90_ms": 91.0, "latency_p99_ms": 100.0}
    assert latency.latency_percentiles(np.zeros(0)) == dict.fromkeys(got)


def test_phases_of_a_run():
    ph = latency.phases_of(12.5, np.array([9.0, 3.0, 2.0]), np.array([1.0, 1.0]))
    assert ph.to_dict() == {"load_ms": 12.5, "first_inference_ms": 9.0, "warmup_ms": 14.0}
    no_warm = latency.phases_of(None, np.zeros(0), np.array([4.0, 1.0]))
    assert no_warm.to_dict() == {"load_ms": None, "first_inference_ms": 4.0, "warmup_ms": 0.0}

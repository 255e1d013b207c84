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

import math

import numpy as np
import pytest

from harness.verdict import compare_samples, mean_ci


def test_mean_ci_known_values():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    # t(0.975, 4) = 2.776445, sd = 1.581139
    assert half == pytest.approx(2.776445 * 1.581139 / math.sqrt(5), rel=1e-5)
    assert math.isnan(mean_ci([1.0])[1])
    assert mean_ci([np.nan, 2.0, 2.0])[0] == 2.0


def test_regressed_and_improved():
    a = np.arange(1.0, 11.0) * 0.01 + 10.0  # 10.01 .. 10.10
    b = a * 1.2
    v = compare_samples(a, b, threshold_pct=2.0)
    assert v.verdict == "regressed" and v.effect_pct == pytest.approx(20.0)
    assert v.p_value < 0.001
    assert compare_samples(b, a).verdict == "improved"


def test_significant_but_small_is_same():
    a = np.linspace(10.0, 10.01, 12)
    b = a + 0.05  # +0.5%, clearly separated
    v = compare_samples(a, b, threshold_pct=2.0)
    assert v.verdict == "same" and v.p_value < 0.05


def test_identical_tight_is_same():
    a = np.array([10.0, 10.1, 9.9, 10.0, 10.05, 9.95])
    assert compare_samples(a, a.copy(), threshold_pct=2.0).verdict == "same"


def test_noisy_is_unknown_with_reps():
    a = np.array([10.0, 13.0, 7.0, 11.0])
    b = np.array([11.0, 14.0, 8.0, 12.0])
    v = compare_samples(a, b, threshold_pct=2.0)
    assert v.verdict == "unknown"
    assert v.more_reps > 0 and "more repetitions" in v.reason
    # more noise -> more repetitions
    v2 = compare_samples(a * np.array([1, 1.2, 0.8, 1]), b, threshold_pct=2.0)
    assert v2.more_reps >= v.more_reps


def test_too_few():
    v = compare_samples([1.0], [1.0, 2.0, 3.0])
    assert v.verdict == "unknown" and v.more_reps == 2


def test_too_few_names_what_was_counted():
    v = compare_samples([1.0, 2.0], [1.0, 2.0, 3.0], samples="valid windows in usable rounds")
    assert v.verdict == "unknown"
    assert v.reason == "too few valid windows in usable rounds (2 vs 3; need 3 each)"

import numpy as np
import pytest

from harness.changepoints import detect_steps, noise_sigma, segment_levels, solve_potts


def test_exact_steps_found():
    y = np.concatenate([np.full(10, 100.0), np.full(8, 120.0), np.full(6, 90.0)])
    steps = detect_steps(y)
    assert [s.index for s in steps] == [10, 18]
    assert steps[0].before == 100.0 and steps[0].after == 120.0
    assert steps[0].change_pct == pytest.approx(20.0)
    np.testing.assert_allclose(segment_levels(y, steps), y)


def test_noisy_step_and_no_false_alarm():
    rng = np.random.default_rng(0)
    flat = 50.0 + rng.normal(0, 0.5, 40)
    assert detect_steps(flat) == []
    y = flat.copy()
    y[25:] += 5.0
    steps = detect_steps(y)
    assert len(steps) == 1 and abs(steps[0].index - 25) <= 1


def test_nan_ignored_and_min_change():
    y = np.array([1.0, 1.0, np.nan, 1.0, 2.0, 2.0, 2.0])
    steps = detect_steps(y)
    assert [s.index for s in steps] == [4]
    assert detect_steps(y, min_change_pct=150.0) == []


def test_solve_potts_penalty():
    y = [0.0, 0.0, 1.0, 1.0]
    assert solve_potts(y, 0.1) == [2, 4]
    assert solve_potts(y, 10.0) == [4]  # cost 1.0 of one segment < 10 of a second


def test_noise_sigma_ignores_one_step():
    y = np.concatenate([np.zeros(20), np.full(20, 100.0)])
    assert noise_sigma(y) == 0.0

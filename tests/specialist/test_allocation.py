"""Reconstruction-error elimination paths and global FLOPs allocation (synthetic data, exact answers)."""

import numpy as np
import pytest

from specialist.allocation import (
    allocate_global,
    elimination_path,
    next_layer_matrix,
    plan_flops,
    uniform_counts,
)
from specialist.flops import BASE_FLOPS
from specialist.model import PRUNABLE


def lsq_residual(x, wf, kept, ridge):
    """Explicit ridge least squares of x @ wf on the kept columns of x: (residual, ridge penalty, total), each
    per row; the ridge is ``ridge`` x the mean variance, as in ``allocation.ridge_lambda``."""
    y = x @ wf
    xk = x[:, kept]
    cov = x.T @ x / len(x)
    lam = ridge * np.trace(cov) / cov.shape[0] + 1e-12
    a = np.linalg.solve(xk.T @ xk / len(x) + lam * np.eye(len(kept)), xk.T @ y / len(x))
    return float(((y - xk @ a) ** 2).sum() / len(x)), float(lam * (a**2).sum()), float((y**2).sum() / len(x))


def synthetic(seed=0, n=4000, c=12, m=7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) @ rng.normal(size=(c, c)) * 0.5
    x[:, 3] = 2.0 * x[:, 5]  # channel 3 is an exact multiple of channel 5: removing it costs nothing
    x -= x.mean(axis=0)
    return x, rng.normal(size=(c, m))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_is_the_explicit_ridge_objective_at_the_methods_ridge(seed):
    """rel_error[n-1] is the ridge objective (residual + ridge penalty) / total of the explicit solve, to
    rounding: at the methods' ridge (1e-2) the system is well conditioned."""
    x, wf = synthetic(seed)
    cov = x.T @ x / len(x)
    order, err = elimination_path(cov, wf, ridge=1e-2)
    assert sorted(order.tolist()) == list(range(12))
    assert np.all(np.diff(err) >= -1e-12)  # removing more never helps
    for n in range(1, 12):
        r, pen, tot = lsq_residual(x, wf, np.setdiff1d(np.arange(12), order[:n]), 1e-2)
        assert err[n - 1] == pytest.approx((r + pen) / tot, rel=1e-9, abs=1e-12)
        assert err[n - 1] >= r / tot  # the penalty is not reconstruction error: the path bounds it from above
    assert err[-1] == pytest.approx(1.0, abs=1e-12)  # nothing left: nothing reconstructed


def test_path_at_a_tiny_ridge_is_plain_least_squares():
    """With ridge 1e-9 the objective is the plain least-squares error, to the accuracy float64 allows for
    cond(cov + ridge) ~ 5e9 (channel 3 duplicates channel 5, so cov is singular): eps x cond ~ 1e-6."""
    x, wf = synthetic()
    cov = x.T @ x / len(x)
    order, err = elimination_path(cov, wf, ridge=1e-9)
    assert sorted(order.tolist()) == list(range(12))
    assert np.all(np.diff(err) >= -1e-6)
    for n in (1, 4, 9):
        r, _, tot = lsq_residual(x, wf, np.setdiff1d(np.arange(12), order[:n]), 1e-9)
        assert err[n - 1] == pytest.approx(r / tot, abs=1e-6)
    assert r / tot > 0.1  # n = 9: a real error, matched to 1e-6 (not a vacuous comparison of zeros)
    assert order[0] in (3, 5)  # the duplicated pair: one of them goes first, for free
    assert err[0] < 1e-6
    assert err[-1] == pytest.approx(1.0, abs=1e-4)


def test_greedy_first_step_is_the_cheapest():
    x, wf = synthetic(seed=1)
    x[:, 3] += 0.3 * np.random.default_rng(5).normal(size=len(x))  # no exact duplicate now
    cov = x.T @ x / len(x)
    order, err = elimination_path(cov, wf, ridge=1e-9)
    brute = [lsq_residual(x, wf, np.setdiff1d(np.arange(12), [j]), 1e-9)[0] for j in range(12)]
    assert order[0] == int(np.argmin(brute))


def test_given_order_is_followed():
    x, wf = synthetic(seed=2)
    cov = x.T @ x / len(x)
    order = np.arange(12)[::-1]
    got, err = elimination_path(cov, wf, ridge=1e-6, order=order)
    np.testing.assert_array_equal(got, order)
    greedy, err_g = elimination_path(cov, wf, ridge=1e-6)
    assert err_g[2] <= err[2] + 1e-12  # greedy is at least as good after three removals here


def test_next_layer_matrix_weights_outputs():
    w = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    wf = next_layer_matrix(w, np.array([1.0, 0.0]))
    assert wf.shape == (3, 8)
    np.testing.assert_array_equal(wf[:, 4:], 0)
    np.testing.assert_array_equal(wf[1, :4], w[0, 1].ravel())


@pytest.mark.parametrize("level", [10, 20, 30, 40, 50])
@pytest.mark.parametrize("n_classes", [2, 10])
def test_global_allocation_meets_budget(level, n_classes):
    rng = np.random.default_rng(level)
    curves = {L: np.sort(rng.random(c)) ** 2 for L, c in
              zip(PRUNABLE, (96, 192, 192, 192, 192, 192), strict=True)}
    target = plan_flops(uniform_counts(level), n_classes)
    removed = allocate_global(curves, target, n_classes)
    got = plan_flops(removed, n_classes)
    assert got <= target
    assert 100 * (target - got) / BASE_FLOPS < 0.5
    assert removed != uniform_counts(level)  # random curves: not the uniform plan


def test_global_allocation_prefers_cheap_layers():
    # every layer costs the same per channel except CCCP4, which is free: it is emptied first (up to the cap)
    curves = {L: np.linspace(0.01, 1, c) for L, c in zip(PRUNABLE, (96, 192, 192, 192, 192, 192), strict=True)}
    curves["CCCP4"] = np.zeros(192)
    removed = allocate_global(curves, plan_flops(uniform_counts(10), 10), 10, max_remove_pct=50)
    assert removed["CCCP4"] == 96


def test_multiple_of_keeps_widths_aligned():
    curves = {L: np.linspace(0.01, 1, c) for L, c in zip(PRUNABLE, (96, 192, 192, 192, 192, 192), strict=True)}
    removed = allocate_global(curves, plan_flops(uniform_counts(30, 8), 5), 5, multiple_of=8)
    assert all(v % 8 == 0 for v in removed.values())


@pytest.mark.parametrize("level", [10, 30, 50])
def test_multiple_of_16_lands_close_to_the_budget(level):
    # steps of 16 channels (one step of CONV2 is ~5 points of FLOPs): the fill phase gives channels back so the
    # plan ends near the budget, never above it
    curves = {L: np.linspace(0.01, 1, c) ** 2 for L, c in zip(PRUNABLE, (96, 192, 192, 192, 192, 192), strict=True)}
    target = plan_flops(uniform_counts(level), 10)
    removed = allocate_global(curves, target, 10, multiple_of=16)
    got = plan_flops(removed, 10)
    assert got <= target
    assert all(v % 16 == 0 for v in removed.values())
    assert 100 * (target - got) / BASE_FLOPS < 4.0


def test_plan_flops_is_the_flops_table_total():
    """The closed form used by the allocation equals the per-layer table for any plan."""
    from specialist.allocation import plan_flops
    from specialist.flops import total_flops
    from specialist.model import LAYER_NAMES, NIN_LAYERS, PRUNABLE

    rng = np.random.default_rng(3)
    for _ in range(50):
        removed = {L: int(rng.integers(0, 150)) for L in PRUNABLE}
        k = int(rng.integers(1, 11))
        ch = {s.name: s.out_ch - removed.get(s.name, 0) for s in NIN_LAYERS}
        ch[LAYER_NAMES[-1]] = k
        assert plan_flops(removed, k) == total_flops(ch)


def test_elimination_path_depends_on_the_next_layer_only_through_its_gram():
    """A C-column factor of wf wf^T (what builds pass for 3x3/5x5 next layers) gives the same path."""
    from specialist.allocation import gram_factor, next_layer_factor

    rng = np.random.default_rng(4)
    a = rng.standard_normal((24, 60))
    cov = a @ a.T / 60
    w_next = rng.standard_normal((20, 24, 3, 3))  # [O, C, k, k]: 180 columns > 24 channels
    wf = w_next.transpose(1, 0, 2, 3).reshape(24, -1)
    order_full, err_full = elimination_path(cov, wf, ridge=1e-2)
    f = next_layer_factor(w_next)
    assert f.shape == (24, 24)
    np.testing.assert_allclose(f @ f.T, wf @ wf.T, rtol=1e-10, atol=1e-9)
    assert next_layer_factor(w_next) is f  # memoised per weight array
    order_f, err_f = elimination_path(cov, f, ridge=1e-2)
    np.testing.assert_array_equal(order_full, order_f)
    np.testing.assert_allclose(err_full, err_f, atol=1e-12)
    assert gram_factor(wf[:, :10]).shape == (24, 10)  # few columns: used as they are


def test_rounded_widths_land_at_or_under_the_levels_budget_and_close_to_it():
    """best-x16: every kept count a multiple of 16, FLOPs at or under the unrounded level's budget (the
    paper's uniform plan), and the swap pass keeps it from pruning a whole extra block (was 42.6% at 39.2%)."""
    from specialist.allocation import plan_flops, uniform_counts
    from specialist.build import build_specialist
    from specialist.flops import BASE_FLOPS

    for level in (30, 40):
        spec = build_specialist([0, 3, 5], level, "best-x16")
        budget_pct = 100 * (1 - plan_flops(uniform_counts(level), 3) / BASE_FLOPS)
        assert all(len(v) % 16 == 0 for k, v in spec.kept.items() if k != "CCCP6")
        assert budget_pct <= spec.flops_pruned_pct <= budget_pct + 1.5, (level, budget_pct, spec.flops_pruned_pct)

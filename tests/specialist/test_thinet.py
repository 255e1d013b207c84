"""ThiNet from second moments: greedy selection and least-squares scales (synthetic, exact answers)."""

import numpy as np
import torch

from specialist.allocation import next_layer_matrix
from specialist.compensate import compensate_scale
from specialist.thinet import contribution_gram, greedy_order, least_squares_scales, objective


def data(seed=0, n=3000, c=10, o=6):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(n, c)) @ rng.normal(size=(c, c)))  # non-negative, like post-ReLU maps
    w = rng.normal(size=(o, c, 1, 1))
    return x, w


def explicit_error(x, w, kept, scales):
    full = x @ w[:, :, 0, 0].T
    approx = x[:, kept] @ (w[:, kept, 0, 0] * scales[None]).T
    return float(((full - approx) ** 2).sum(axis=1).mean())


def test_contribution_gram_is_the_exact_objective_for_1x1():
    x, w = data()
    q = contribution_gram(x.T @ x / len(x), next_layer_matrix(w))
    kept = np.array([0, 2, 3, 7, 9])
    want = explicit_error(x, w, kept, np.ones(5))
    assert abs(objective(q, kept) - want) < 1e-9 * want


def test_least_squares_scales_never_increase_the_fitted_error():
    for seed in range(5):
        x, w = data(seed)
        q = contribution_gram(x.T @ x / len(x), next_layer_matrix(w))
        order = greedy_order(q)
        for n in (2, 5, 8):
            kept = np.sort(order[n:])
            s = least_squares_scales(q, kept)
            assert explicit_error(x, w, kept, s) <= explicit_error(x, w, kept, np.ones(len(kept))) + 1e-9
            # and they are the optimum: perturbing any scale makes it worse
            for j in range(len(kept)):
                d = np.zeros(len(kept))
                d[j] = 1e-3
                assert explicit_error(x, w, kept, s + d) >= explicit_error(x, w, kept, s) - 1e-9


def test_greedy_first_removes_the_smallest_contribution():
    x, w = data(3)
    x[:, 4] *= 1e-3  # channel 4 hardly contributes
    q = contribution_gram(x.T @ x / len(x), next_layer_matrix(w))
    order = greedy_order(q)
    assert order[0] == 4
    assert sorted(order.tolist()) == list(range(10))
    # greedy's set beats removing the same number of channels at random on its own objective
    rng = np.random.default_rng(0)
    f_greedy = objective(q, np.sort(order[3:]))
    f_rand = [objective(q, np.sort(rng.permutation(10)[3:])) for _ in range(20)]
    assert f_greedy <= min(f_rand) + 1e-12


def test_compensate_scale_rescales_kept_weights():
    x, w = data(4)
    kept, pruned = np.array([0, 1, 2, 5, 6, 8]), np.array([3, 4, 7, 9])
    st = {"gram": x.T @ x / len(x)}
    w_k, delta, const = compensate_scale(w, kept, pruned, st, 0)
    assert const is None and np.all(delta == 0)
    xt = torch.from_numpy(x[:, :, None, None])
    full = torch.nn.functional.conv2d(xt, torch.from_numpy(w)).numpy()
    got = torch.nn.functional.conv2d(xt[:, kept], torch.from_numpy(w_k)).numpy()
    plain = torch.nn.functional.conv2d(xt[:, kept], torch.from_numpy(w[:, kept])).numpy()
    assert ((got - full) ** 2).mean() < ((plain - full) ** 2).mean()

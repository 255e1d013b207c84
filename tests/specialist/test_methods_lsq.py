"""Least-squares compensation never increases the fitted layer's reconstruction error on its fitting data."""

import numpy as np
import torch

from specialist.compensate import compensate_lsq, compensate_mean, compensate_none


def next_layer_error(x, w, b, kept, pruned, st, fn, **kw):
    w_k, delta, const = fn(w, kept, pruned, st, 0, **kw)
    full = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    got = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(x[:, kept])),
                                     torch.from_numpy(np.ascontiguousarray(w_k)), torch.from_numpy(b + delta)).numpy()
    if const is not None:
        got = got + const
    return float(((got - full) ** 2).mean())


def fitting_stats(x):
    n, c, h, wd = x.shape
    flat = x.transpose(1, 0, 2, 3).reshape(c, -1)
    return {"mean": x.mean(axis=0), "gram": flat @ flat.T / flat.shape[1]}


def test_lsq_never_worse_than_mean_or_none_on_fitting_data():
    rng = np.random.default_rng(0)
    for trial in range(6):
        mix = rng.normal(size=(8, 8))
        z = rng.normal(size=(40, 8, 6, 6))
        x = np.maximum(np.einsum("ij,njhw->nihw", mix, z) + rng.normal(size=(1, 8, 6, 6)), 0.0)  # post-ReLU
        w = rng.normal(size=(5, 8, 1, 1))
        b = rng.normal(size=5)
        st = fitting_stats(x)
        pruned = np.sort(rng.permutation(8)[: 2 + trial % 4])
        kept = np.setdiff1d(np.arange(8), pruned)
        e_lsq = next_layer_error(x, w, b, kept, pruned, st, compensate_lsq, fold="exact", ridge=1e-9)
        e_mean = next_layer_error(x, w, b, kept, pruned, st, compensate_mean, fold="exact")
        e_none = next_layer_error(x, w, b, kept, pruned, st, compensate_none)
        assert e_lsq <= e_mean + 1e-9
        assert e_lsq <= e_none + 1e-9
        assert e_lsq < 0.99 * e_mean  # and it really uses the kept channels here


def test_lsq_is_exact_for_linearly_dependent_channels():
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(30, 4, 5, 5)))
    x[:, 3] = 0.7 * x[:, 0] + 1.3 * x[:, 2]  # channel 3 is a combination of kept channels
    w = rng.normal(size=(3, 4, 1, 1))
    b = rng.normal(size=3)
    e = next_layer_error(x, w, b, np.array([0, 1, 2]), np.array([3]), fitting_stats(x), compensate_lsq,
                         fold="exact", ridge=1e-12)
    assert e < 1e-10

"""Compensation properties, on synthetic arrays with exactly known answers and on the real model."""

import numpy as np
import pytest
import torch

from specialist.compensate import (
    compensate_correlated,
    compensate_lsq,
    compensate_mean,
    compensate_none,
    contribution_map,
)


def conv(x, w, b, pad):
    return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                      padding=pad).numpy()


def reconstruct(x, w, b, kept, pruned, st, pad, fn, **kw):
    w_k, delta, const = fn(w, kept, pruned, st, pad, **kw)
    y = conv(np.ascontiguousarray(x[:, kept]), w_k.astype(np.float64), b + delta, pad)
    return y + (const if const is not None else 0.0)


@pytest.mark.parametrize("k,pad", [(1, 0), (3, 1), (5, 2)])
def test_mean_of_constant_channel_is_exact(k, pad):
    rng = np.random.default_rng(0)
    x = rng.random((6, 4, 8, 8))
    x[:, 2] = 1.7  # channel 2 is constant over all images and positions
    w = rng.normal(size=(5, 4, k, k))
    b = rng.normal(size=5)
    st = {"mean": x.mean(axis=0)}
    kept, pruned = np.array([0, 1, 3]), np.array([2])
    y = reconstruct(x, w, b, kept, pruned, st, pad, compensate_mean, fold="exact")
    np.testing.assert_allclose(y, conv(x, w, b, pad), atol=1e-5)
    # without compensation the error is large; the bias-only fold is exact in the interior
    y0 = reconstruct(x, w, b, kept, pruned, st, pad, compensate_none)
    assert np.abs(y0 - conv(x, w, b, pad)).max() > 0.1
    yb = reconstruct(x, w, b, kept, pruned, st, pad, compensate_mean, fold="bias")
    if k == 1:
        np.testing.assert_allclose(yb, conv(x, w, b, pad), atol=1e-5)
    else:
        inner = (slice(None), slice(None), slice(pad, -pad), slice(pad, -pad))
        err = yb - conv(x, w, b, pad)
        assert np.abs(err[inner]).max() < np.abs(err).max() + 1e-12


def test_contribution_map_matches_conv():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 6, 6))
    w = rng.normal(size=(4, 3, 3, 3))
    np.testing.assert_allclose(contribution_map(maps, w, 1), conv(maps[None], w, np.zeros(4), 1)[0], atol=1e-5)


def test_correlated_copy_is_exact_for_1x1():
    """A pruned channel that is a scaled copy of a kept one is reproduced exactly (scalar least squares)."""
    rng = np.random.default_rng(2)
    x = rng.random((5, 3, 4, 4))
    x[:, 1] = 2.5 * x[:, 0]
    w = rng.normal(size=(4, 3, 1, 1))
    b = np.zeros(4)
    flat = x.transpose(1, 0, 2, 3).reshape(3, -1)
    st = {"mean": x.mean(0), "corr": np.corrcoef(flat), "gram": flat @ flat.T / (5 * 16)}
    y = reconstruct(x, w, b, np.array([0, 2]), np.array([1]), st, 0, compensate_correlated)
    np.testing.assert_allclose(y, conv(x, w, b, 0), atol=1e-9)


def test_lsq_linear_combination_is_exact():
    rng = np.random.default_rng(3)
    x = rng.random((40, 4, 4, 4))
    x[:, 3] = 0.5 * x[:, 0] - 1.5 * x[:, 1] + 0.25
    w = rng.normal(size=(3, 4, 1, 1))
    b = rng.normal(size=3)
    flat = x.transpose(1, 0, 2, 3).reshape(4, -1)
    st = {"mean": x.mean(0), "gram": flat @ flat.T / flat.shape[1]}
    y = reconstruct(x, w, b, np.array([0, 1, 2]), np.array([3]), st, 0, compensate_lsq, fold="exact", ridge=1e-9)
    np.testing.assert_allclose(y, conv(x, w, b, 0), atol=1e-5)


def _next_layer_errors(base_weights, calib, small_stats, layer, level, n_holdout=60):
    """Held-out next-layer pre-activation error (relative) for several compensations."""
    from specialist.build import subset_arrays
    from specialist.model import LAYER_NAMES, NIN_LAYERS, build_module
    from specialist.select import n_remove, paper_scores, select_prune

    classes = [0, 1, 2]
    held = calib.select(classes)  # images 13.. of each class were not used by small_stats (12/class)
    held_x = held.x[np.concatenate([np.flatnonzero(held.y == c)[100:100 + n_holdout // 3] for c in classes])]
    net = build_module(base_weights)
    li = LAYER_NAMES.index(layer)
    with torch.no_grad():
        h = torch.from_numpy(base_weights.normalize(held_x))
        for i in range(li + 1):
            h = net.layer(i, h)
    x = h.numpy().astype(np.float64)
    nxt = NIN_LAYERS[li + 1]
    w = base_weights.weights[nxt.name].astype(np.float64)
    b = base_weights.biases[nxt.name].astype(np.float64)
    sub = small_stats.subset(classes)
    pruned = select_prune(paper_scores(sub.impact_grad[layer]), n_remove(w.shape[1], level))
    kept = np.setdiff1d(np.arange(w.shape[1]), pruned)
    ref = conv(x, w, b, nxt.padding)
    st = subset_arrays(sub, layer)
    errs = {}
    for name, fn, kw in [("none", compensate_none, {}), ("mean", compensate_mean, {"fold": "exact"}),
                         ("correlated", compensate_correlated, {"fold": "exact"}),
                         ("lsq", compensate_lsq, {"fold": "exact"})]:
        y = reconstruct(x, w, b, kept, pruned, st, nxt.padding, fn, **kw)
        errs[name] = float(np.sqrt(((y - ref) ** 2).mean() / (ref**2).mean()))
    return errs


@pytest.mark.parametrize("layer", ["CCCP2", "CCCP3", "CCCP4"])
def test_compensation_lowers_heldout_reconstruction_error(base_weights, calib, small_stats, layer):
    errs = _next_layer_errors(base_weights, calib, small_stats, layer, 30)
    assert errs["mean"] < errs["none"]
    assert errs["correlated"] < errs["none"]
    assert errs["lsq"] < errs["mean"]

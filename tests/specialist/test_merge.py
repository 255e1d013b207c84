"""Neuron Merging: a pruned filter that is a positive multiple of a kept one merges without any loss."""

import numpy as np
import torch

from specialist.compensate import compensate_merge
from specialist.merge import merge_partners


def two_layers(x, w1, b1, w2, b2):
    h = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w1), torch.from_numpy(b1)))
    h = torch.nn.functional.max_pool2d(h, 3, 2, 1)  # positively homogeneous, like the NIN's pools
    return torch.nn.functional.conv2d(h, torch.from_numpy(w2), torch.from_numpy(b2), padding=1).numpy(), h


def test_exact_multiple_merges_losslessly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 8, 8))
    w1 = rng.normal(size=(5, 3, 1, 1))
    b1 = rng.normal(size=5)
    w1[4], b1[4] = 2.5 * w1[1], 2.5 * b1[1]  # filter 4 = 2.5 x filter 1
    w1[3], b1[3] = 0.5 * w1[0], 0.5 * b1[0]  # filter 3 = 0.5 x filter 0
    w2 = rng.normal(size=(6, 5, 3, 3))
    b2 = rng.normal(size=6)
    kept, pruned = np.array([0, 1, 2]), np.array([3, 4])
    partner, scale, cos = merge_partners(w1, b1, kept, pruned)
    np.testing.assert_array_equal(partner, [0, 1])
    np.testing.assert_allclose(scale, [0.5, 2.5])
    np.testing.assert_allclose(cos, 1.0)
    st = {"w_self": w1, "b_self": b1}
    w2k, delta, const = compensate_merge(w2, kept, pruned, st, 1)
    full, _ = two_layers(x, w1, b1, w2, b2)
    pruned_out, _ = two_layers(x, w1[kept], b1[kept], w2k, b2 + delta)
    np.testing.assert_allclose(pruned_out, full, atol=1e-9)
    dropped, _ = two_layers(x, w1[kept], b1[kept], np.ascontiguousarray(w2[:, kept]), b2)
    assert np.abs(dropped - full).max() > 0.1


def test_dissimilar_filters_are_dropped_below_threshold():
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(4, 8, 1, 1))
    b1 = rng.normal(size=4)
    w1[3], b1[3] = -w1[0], -b1[0]  # anti-parallel: never a merge partner (ReLU is not odd)
    partner, scale, cos = merge_partners(w1, b1, np.array([0]), np.array([3]))
    assert partner[0] == -1 and scale[0] == 0 and cos[0] < 0
    p2, s2, c2 = merge_partners(w1, b1, np.array([0, 1]), np.array([2]), threshold=0.999)
    assert p2[0] == -1  # random filters are far from cosine 0.999


def test_shared_partner_accumulates():
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(3, 4, 1, 1))
    b1 = rng.normal(size=3)
    w1[1], b1[1] = 2 * w1[0], 2 * b1[0]
    w1[2], b1[2] = 3 * w1[0], 3 * b1[0]
    w2 = rng.normal(size=(2, 3, 1, 1))
    w2k, _, _ = compensate_merge(w2, np.array([0]), np.array([1, 2]), {"w_self": w1, "b_self": b1}, 0)
    np.testing.assert_allclose(w2k[:, 0], w2[:, 0] + 2 * w2[:, 1] + 3 * w2[:, 2])

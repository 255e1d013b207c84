"""CAPTOR-style class-preference scores: filters that prefer other classes go first."""

import numpy as np

from specialist.captor import captor_scores, kmeans, preferences


def test_preferences_are_distributions():
    imp = np.array([[1.0, 3.0, -2.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 5.0]])
    p = preferences(imp)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.25, 0.75, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)  # no positive preference: uniform


def test_kmeans_separates_obvious_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, size=(20, 2)) + [0, 0]
    b = rng.normal(0, 0.01, size=(20, 2)) + [5, 5]
    labels, cent = kmeans(np.vstack([a, b]), 2)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]


def test_filters_preferring_target_classes_score_higher():
    rng = np.random.default_rng(1)
    c, y = 60, 10
    imp = rng.random((c, y)) * 0.01
    owner = np.arange(c) % y  # filter j prefers class j % 10
    imp[np.arange(c), owner] += 1.0
    targets = [2, 7]
    s = captor_scores(imp, targets)
    keep_first = np.argsort(-s)[:12]
    assert set(owner[keep_first]) == set(targets)
    assert captor_scores(imp, targets).tolist() == s.tolist()  # deterministic

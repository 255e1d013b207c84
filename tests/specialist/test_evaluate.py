"""The sweep's evaluation engine against the reference accuracy (specialist.accuracy), on real images."""

from __future__ import annotations

import numpy as np
import pytest

from specialist.accuracy import subset_accuracy
from specialist.errors import UsageError
from specialist.evaluate import EvalModel, EvalOptions, chunk_plan, evaluate_models, shares_prefix


@pytest.fixture(scope="module")
def test_split(data_dir):
    from specialist.data import load_split

    return load_split("test", data_dir).select(range(10), per_class=24)


@pytest.fixture(scope="module")
def specialists(base_weights):
    from specialist.build import build_specialist

    return [build_specialist([1, 4, 7], 30, "paper", base=base_weights),
            build_specialist([0, 9], 50, "l1", base=base_weights)]


def test_chunk_plan_groups_by_class_in_order():
    y = np.array([3, 1, 3, 3, 1, 2, 3, 3], np.uint8)
    plan = chunk_plan(y, [3, 1], 2)
    assert [c for c, _ in plan] == [1, 3, 3, 3]
    assert [list(r) for _, r in plan] == [[1, 4], [0, 2], [3, 6], [7]]


@pytest.mark.parametrize("engine", ["torch", "torch-cl"])
def test_engine_matches_reference_accuracy(engine, base_weights, specialists, test_split):
    models = [EvalModel(s.weights, s.classes) for s in specialists]
    res = evaluate_models(base_weights, models, test_split, EvalOptions(engine=engine, chunk_images=10))
    for j, s in enumerate(specialists):
        ref = subset_accuracy(s.weights, s.classes, test_split.select(s.classes), class_outputs=s.classes)
        assert int(res.correct[j].sum()) == ref.correct
        assert int(res.n[j].sum()) == ref.n == 24 * len(s.classes)
        assert set(np.flatnonzero(res.n[j])) == set(s.classes)
    # every image went through the shared prefix exactly once (5 classes x 24 images)
    assert res.prefix_images == 5 * 24
    assert res.image_evals == 5 * 24


def test_none_column_is_the_base_model_restricted_to_the_subset(base_weights, test_split):
    subsets = [[2, 3], [2, 3, 5, 8]]
    models = [EvalModel(base_weights, s, columns=s, outputs=s) for s in subsets]
    res = evaluate_models(base_weights, models, test_split, EvalOptions(chunk_images=16))
    for j, s in enumerate(subsets):
        ref = subset_accuracy(base_weights, s, test_split.select(s))
        assert int(res.correct[j].sum()) == ref.correct
    # both models share one weights object: classes 2 and 3 are evaluated once, not twice
    assert res.image_evals == 4 * 24


def test_model_with_changed_first_layers_runs_from_the_input(base_weights, test_split):
    w = base_weights.copy()
    w.weights["CONV1"] = w.weights["CONV1"] * np.float32(1.5)
    assert not shares_prefix(base_weights, w) and shares_prefix(base_weights, base_weights.copy())
    res = evaluate_models(base_weights, [EvalModel(w, range(10))], test_split, EvalOptions(chunk_images=50))
    ref = subset_accuracy(w, range(10), test_split)
    assert int(res.correct.sum()) == ref.correct
    assert res.prefix_images == 0


def test_constant_model_has_exactly_known_accuracy(base_weights, test_split):
    # CCCP6 with zero weights and a bias only for class 3: it always answers 3.
    w = base_weights.copy()
    w.weights["CCCP6"] = np.zeros_like(w.weights["CCCP6"])
    w.biases["CCCP6"] = np.where(np.arange(10) == 3, 5.0, 0.0).astype(np.float32)
    cls = [1, 3, 5]
    res = evaluate_models(base_weights, [EvalModel(w, cls, columns=cls, outputs=cls)], test_split)
    assert res.correct[0].tolist() == [0, 0, 0, 24, 0, 0, 0, 0, 0, 0]
    assert res.n[0].tolist() == [0, 24, 0, 24, 0, 24, 0, 0, 0, 0]
    assert res.accuracy()[0] == pytest.approx(1 / 3)


def test_eval_options_validate():
    with pytest.raises(UsageError, match="engine"):
        EvalOptions(engine="gpu")
    with pytest.raises(UsageError, match="chunk_images"):
        EvalOptions(chunk_images=0)

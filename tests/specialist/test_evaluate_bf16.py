"""The checked bfloat16 engine: the float32 engine's counts on real NIN and real specialists, close calls re-run."""

from __future__ import annotations

import numpy as np
import pytest

from specialist.evaluate import (
    BF16_REL,
    BF16_TAU,
    ENGINES,
    EvalModel,
    EvalOptions,
    evaluate_models,
    margins,
    native_bf16,
    resolve_engine,
    score_error,
)


@pytest.fixture(scope="module")
def test_split(data_dir):
    from specialist.data import load_split

    return load_split("test", data_dir).select(range(10), per_class=20)


@pytest.fixture(scope="module")
def models(base_weights):
    """Specialists of the default-candidate methods at the sweep's levels (exact fold constants included), and
    None columns of three subsets (the unpruned model shared by all of them)."""
    from specialist.build import build_specialist

    specs = [build_specialist([1, 4, 7], 10, "best", base=base_weights),
             build_specialist([0, 9], 50, "best", base=base_weights),
             build_specialist(list(range(10)), 30, "best", base=base_weights),
             build_specialist([2, 3, 5, 6, 8], 40, "paper", base=base_weights),
             build_specialist(list(range(10)), 20, "paper", base=base_weights)]
    assert any(s.weights.consts for s in specs)  # exact fold: per-position constant adds
    out = [EvalModel(s.weights, s.classes) for s in specs]
    for sub in ([3, 5], [0, 1, 8, 9], list(range(10))):
        out.append(EvalModel(base_weights, sub, columns=sub, outputs=sub))
    return out


def test_bf16_counts_are_the_float32_counts(base_weights, models, test_split):
    ref = evaluate_models(base_weights, models, test_split, EvalOptions(engine="torch-cl", chunk_images=16))
    res = evaluate_models(base_weights, models, test_split, EvalOptions(engine="bf16", chunk_images=16))
    assert res.engine == "bf16" and ref.engine == "torch-cl"
    np.testing.assert_array_equal(res.correct, ref.correct)
    np.testing.assert_array_equal(res.n, ref.n)
    assert res.image_evals == ref.image_evals and res.prefix_images == ref.prefix_images
    # some images were close calls and went through float32, far fewer than all
    assert 0 < res.extra["tau_min"] <= res.extra["tau_max"] <= BF16_TAU
    assert res.extra["calib_evals"] > 0
    assert 0 < res.extra["rerun_evals"] < res.image_evals / 4
    assert 0 < res.extra["rerun_images"] <= res.prefix_images


def test_every_image_rechecked_or_none_gives_the_same_counts(base_weights, models, test_split):
    ref = evaluate_models(base_weights, models[:2], test_split, EvalOptions(engine="torch-cl"))
    everything = evaluate_models(base_weights, models[:2], test_split, EvalOptions(engine="bf16"), tau=np.inf)
    assert everything.extra["rerun_evals"] == everything.image_evals
    np.testing.assert_array_equal(everything.correct, ref.correct)
    nothing = evaluate_models(base_weights, models[:2], test_split, EvalOptions(engine="bf16"), tau=0.0)
    assert nothing.extra["rerun_evals"] == nothing.extra["rerun_images"] == 0


def test_a_tiny_margin_goes_through_float32(base_weights, test_split):
    # Columns 3 and 5 compute the same function but for a 1e-3 bias: every image's margin is 1e-3 (below tau),
    # so every image is re-run in float32, where class 5 always wins.
    w = base_weights.copy()
    w.weights["CCCP6"] = w.weights["CCCP6"].copy()
    w.biases["CCCP6"] = w.biases["CCCP6"].copy()
    w.weights["CCCP6"][5] = w.weights["CCCP6"][3]
    w.biases["CCCP6"][5] = w.biases["CCCP6"][3] + np.float32(1e-3)
    cls = [3, 5]
    res = evaluate_models(base_weights, [EvalModel(w, cls, columns=cls, outputs=cls)], test_split,
                          EvalOptions(engine="bf16", chunk_images=8))
    assert res.extra["rerun_evals"] == res.image_evals == 40
    assert res.extra["rerun_images"] == 40
    assert res.correct[0].tolist() == [0, 0, 0, 0, 0, 20, 0, 0, 0, 0]


def test_margins():
    import torch

    s = torch.tensor([[1.0, 3.0, 2.5], [4.0, 4.0, 0.0]])
    assert margins(s).tolist() == [0.5, 0.0]
    assert margins(s[:, :1]).tolist() == [np.inf, np.inf]


def test_measured_error_is_far_below_the_thresholds(base_weights, models, test_split):
    err, marg, calib = score_error(base_weights, [base_weights, models[2].weights], test_split.select([0, 1, 2]))
    assert err.shape == calib.shape == (2,) and len(marg[0]) == 60
    assert (err > 0).all() and err.max() * 2 * 2 < BF16_TAU  # a safety factor of at least 2 on these images
    assert (0 < calib).all() and (calib <= err).all() and (err * 2 * 2 < BF16_REL * calib).all()


def test_a_model_with_smaller_scores_gets_a_smaller_threshold(base_weights, test_split):
    # The same network with CCCP6 scaled by 1/100: scores and their bfloat16 errors 100x smaller, and so is its
    # calibrated threshold; its counts stay float32's.
    w = base_weights.copy()
    w.weights["CCCP6"] = w.weights["CCCP6"] * np.float32(0.01)
    w.biases["CCCP6"] = w.biases["CCCP6"] * np.float32(0.01)
    cls = [2, 3, 5]
    models = [EvalModel(base_weights, cls, columns=cls, outputs=cls), EvalModel(w, cls, columns=cls, outputs=cls)]
    res = evaluate_models(base_weights, models, test_split, EvalOptions(engine="bf16"))
    ref = evaluate_models(base_weights, models, test_split, EvalOptions(engine="torch-cl"))
    np.testing.assert_array_equal(res.correct, ref.correct)
    assert res.extra["tau_min"] < res.extra["tau_max"] / 20


def test_auto_engine_is_bf16_exactly_when_the_cpu_has_native_bfloat16(monkeypatch):
    assert "auto" in ENGINES and EvalOptions().engine == "auto"
    assert resolve_engine("auto") == ("bf16" if native_bf16() else "torch-cl")
    monkeypatch.setenv("HARNESS_BF16", "0")
    assert not native_bf16() and resolve_engine("auto") == "torch-cl"
    monkeypatch.setenv("HARNESS_BF16", "1")
    assert resolve_engine("auto") == "bf16"
    assert resolve_engine("torch") == "torch"

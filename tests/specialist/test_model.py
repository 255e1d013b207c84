import numpy as np
import pytest

from specialist.errors import DataError
from specialist.model import (
    LAYER_NAMES,
    NIN_LAYERS,
    build_module,
    load_weights,
    predict_scores,
    weights_npz_bytes,
)


def test_shipped_weights_match_architecture(base_weights):
    assert list(base_weights.channels().values()) == [s.out_ch for s in NIN_LAYERS]
    assert base_weights.content_hash() == load_weights().content_hash()


def test_accuracy_on_exact_images(base_weights, data_dir):
    from specialist.data import load_split

    test = load_split("test", data_dir)
    ex = test.select(range(10), exact_only=True)
    scores = predict_scores(build_module(base_weights), base_weights.normalize(ex.x[:300]))
    acc = float((scores.argmax(1) == ex.y[:300]).mean())
    assert acc > 0.85  # the README measures 90.3% on all 1,000 exact images
    assert np.all(scores >= 0)


def test_truncated_weights_file(tmp_path, base_weights):
    blob = weights_npz_bytes(base_weights)
    p = tmp_path / "w.npz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_weights(p)


def test_missing_array(tmp_path, base_weights):
    arrays = {f"{n}.weight": base_weights.weights[n] for n in LAYER_NAMES}
    p = tmp_path / "w.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match="lack"):
        load_weights(p)

"""The statistics artifact: versioning, integrity, size, and finite differences vs autograd."""

import io
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from device.files import atomic_write_bytes
from specialist.errors import ArtifactError
from specialist.stats import SCHEMA_VERSION, compute_stats, default_stats_path, load_stats, stats_to_bytes


def test_subset_is_weighted_combination(small_stats):
    sub = small_stats.subset([0, 3])
    expect = (small_stats.mean["CONV2"][0] + small_stats.mean["CONV2"][3]) / 2  # equal counts
    np.testing.assert_allclose(sub.mean["CONV2"], expect, rtol=1e-6)
    np.testing.assert_allclose(sub.impact_grad["CCCP5"], small_stats.impact_grad["CCCP5"][:, [0, 3]])


def test_truncated_artifact(tmp_path, small_stats):
    blob = stats_to_bytes(small_stats)
    p = tmp_path / "t.npz"
    p.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_stats(p)


def test_newer_schema_refused(tmp_path, small_stats):
    blob = stats_to_bytes(small_stats)
    with np.load(io.BytesIO(blob)) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["schema_version"] = SCHEMA_VERSION + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    p = tmp_path / "new.npz"
    np.savez(p, **arrays)
    with pytest.raises(ArtifactError, match="newer"):
        load_stats(p)


def test_other_model_refused(tmp_path, small_stats):
    p = tmp_path / "s.npz"
    atomic_write_bytes(p, stats_to_bytes(small_stats))
    with pytest.raises(ArtifactError, match="another base model"):
        load_stats(p, expect_model_hash="0" * 64)


def test_shipped_artifact(base_weights):
    p = default_stats_path()
    if not p.is_file():
        pytest.skip("no shipped statistics artifact")
    assert p.stat().st_size < 20e6
    st = load_stats(p, expect_model_hash=base_weights.content_hash())
    assert st.counts.sum() >= 5000 and st.impact_fd and st.impact_grad


def test_finite_differences_rank_like_autograd(base_weights, calib):
    sub = calib.select(range(10), per_class=1)
    st = compute_stats(base_weights, sub.x, sub.y, impact="both", fd_per_class=1, shift_per_class=1)
    for layer in ("CCCP2", "CONV3", "CCCP5"):
        rho = spearmanr(st.impact_grad[layer].ravel(), st.impact_fd[layer].ravel())[0]
        assert rho > 0.95, (layer, rho)

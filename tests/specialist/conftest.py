"""Fixtures for the specialist tests: a small statistics artifact computed once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def calib(data_dir):
    from specialist.data import load_split

    return load_split("calib", data_dir)


@pytest.fixture(scope="session")
def small_stats(base_weights, calib, tmp_path_factory):
    """Per-class statistics of 12 calibration images per class, saved and loaded like a real artifact."""
    from device.files import atomic_write_bytes
    from specialist.stats import compute_stats, load_stats, stats_to_bytes

    sub = calib.select(range(10), per_class=12)
    st = compute_stats(base_weights, sub.x, sub.y, impact="grad", shift_per_class=4)
    path = tmp_path_factory.mktemp("stats") / "small.stats.npz"
    atomic_write_bytes(path, stats_to_bytes(st, half=False))
    return load_stats(path, expect_model_hash=base_weights.content_hash())


@pytest.fixture(scope="module")
def one_torch_thread():
    """Busy shared cores: one intra-op thread is several times faster than two contending ones."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

"""Fixtures shared by the harness tests: a ResNet-20 statistics artifact, computed once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def r20_stats(tmp_path_factory, data_dir):
    """A tiny ResNet-20 artifact (``harness stats --model resnet20``: 2 calibration images per class) in a
    session temporary folder; every graph test that needs ResNet-20 statistics shares it (read-only)."""
    from harness.cli import main

    path = tmp_path_factory.mktemp("r20") / "stats.npz"
    assert main(["stats", "--model", "resnet20", "--per-class", "2", "--data", str(data_dir), "-o", str(path)]) == 0
    return path

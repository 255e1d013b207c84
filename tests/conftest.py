"""Fixtures shared by the test folders: small NIN weights and their exported program."""

from __future__ import annotations

import pytest


def _tiny_weights(width: int = 16, consts: bool = False, seed: int = 0):
    """The shipped NIN sliced to ``width`` channels per hidden layer (CCCP6 keeps its 10 classes); with
    ``consts``, per-position constants on CONV2 and CONV3 that vary at the borders, as mean compensation
    makes them."""
    import numpy as np

    from specialist.model import NIN_LAYERS, NinWeights, load_weights

    base = load_weights()
    ws, bs, prev = {}, {}, 3
    for s in NIN_LAYERS:
        o = s.out_ch if s.name == "CCCP6" else width
        ws[s.name] = base.weights[s.name][:o, :prev].copy()
        bs[s.name] = base.biases[s.name][:o].copy()
        prev = o
    c = {}
    if consts:
        rng = np.random.default_rng(seed)
        for name, hw in (("CONV2", 16), ("CONV3", 8)):
            m = np.full((width, hw, hw), 0.5, np.float32) + rng.normal(0, 0.01, (width, 1, 1)).astype(np.float32)
            m[:, 0, :] -= 0.2
            m[:, :, -1] -= 0.1
            c[name] = m
    return NinWeights(ws, bs, base.input_mean, base.input_std, c)


@pytest.fixture(scope="session")
def tiny_weights():
    """Factory of small NIN weights: ``tiny_weights(width=16, consts=False, seed=0) -> NinWeights``."""
    return _tiny_weights


@pytest.fixture(scope="session")
def tiny_pte(tmp_path_factory):
    """A verified XNNPACK program of the 16-wide tiny NIN, exported once per session."""
    from harness.exportcheck import export_weights
    from specialist.export import ExportOptions

    p = tmp_path_factory.mktemp("tiny-pte") / "tiny16-xnnpack.pte"
    export_weights(_tiny_weights(16), p, ExportOptions(verify_images=2))
    return p


@pytest.fixture(scope="session")
def base_pte(tmp_path_factory):
    """The shipped NIN exported once per session (XNNPACK, verified), for tests that measure a real program."""
    from harness.exportcheck import export_pte
    from specialist.model import load_weights

    path = tmp_path_factory.mktemp("base-pte") / "base.pte"
    export_pte(load_weights(), path)
    return path

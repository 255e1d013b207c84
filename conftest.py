"""Shared pytest fixtures: the base model, the shared CIFAR-10 data, hardware markers."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as harness.cli does: small solves, busy cores

import signal

import pytest

# A test run started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and
# Python keeps it so; the Ctrl-C tests need Python's usual handler, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ("tests.pgserver",)  # the PostgreSQL fixtures: pg_admin_url, pg_url, store_db

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10"


def pytest_collection_modifyitems(config, items):
    hw = os.environ.get("HARNESS_HARDWARE") == "1"
    slow = os.environ.get("HARNESS_SLOW") == "1"
    for item in items:
        if "hardware" in item.keywords and not hw:
            item.add_marker(pytest.mark.skip(reason="needs hardware (HARNESS_HARDWARE=1)"))
        if "slow" in item.keywords and not slow:
            item.add_marker(pytest.mark.skip(reason="slow (HARNESS_SLOW=1)"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared CIFAR-10 directory (test.npz + calib.npz); skip when absent."""
    p = Path(os.environ.get("HARNESS_DATA", SHARED_DATA))
    if not (p / "test.npz").is_file():
        pytest.skip(f"CIFAR-10 data not found at {p}")
    return p


@pytest.fixture(scope="session")
def base_weights():
    from specialist.model import load_weights

    return load_weights()


def pytest_terminal_summary(terminalreporter, config):
    """Print the random-order seed (pytest-randomly) also under ``-q``, so a failing order can be replayed."""
    if config.pluginmanager.hasplugin("randomly") and config.getoption("randomly_reorganize", True):
        seed = config.getoption("randomly_seed", None)
        terminalreporter.write_line(f"random test order: replay with -p randomly -p no:cacheprovider "
                                    f"--randomly-seed={seed}")

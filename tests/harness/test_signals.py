"""The first stop signal acts, later ones only log (harness/signals.py)."""

from __future__ import annotations

import os
import signal

import pytest

from harness.errors import Terminated
from harness.signals import deferred_signals, install_stop_handlers, restore_handlers, saved_handlers


@pytest.fixture
def handlers():
    saved = saved_handlers()
    assert install_stop_handlers()
    yield
    restore_handlers(saved)


def test_second_ctrl_c_during_cleanup_does_not_interrupt_the_cleanup(handlers, caplog):
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)  # let the handler run here, not later
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # an impatient second press while cleaning up
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(True)
    assert cleaned == [True]
    assert sum("already stopping" in r.getMessage() for r in caplog.records) == 2


def test_sigterm_first_raises_terminated_then_ctrl_c_is_a_no_op(handlers):
    with pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)
    os.kill(os.getpid(), signal.SIGINT)  # nothing raised


def test_signal_held_by_a_store_write_is_delivered_once_after_it(handlers):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            done.append(True)
    assert done == [True]
    with deferred_signals():  # already stopping: a held press is delivered as a no-op
        os.kill(os.getpid(), signal.SIGINT)

"""Signals in the harness: SIGTERM stops a run like Ctrl-C, and store writes are never cut in half.

- :func:`install_stop_handlers` (called by ``harness.cli.main``) makes SIGTERM raise :class:`harness.errors.Terminated`,
  a ``KeyboardInterrupt``, so a plain ``kill PID`` takes the same path as Ctrl-C: the run loop records the
  ``interrupted`` event, the backend closes (phone, monitor, sampler) and the process exits 143 (Ctrl-C: 130;
  the one table is ``harness.errors.EXIT_CODES``).
- The first stop signal is the only one that acts (:func:`install_stop_handlers`): its handler switches both
  signals to "already stopping" before it raises, so pressing Ctrl-C again while the harness records the
  interrupt and closes the lab (monitor drain, phone server join, database close) cannot raise a second
  ``KeyboardInterrupt`` in the middle of that clean-up and turn a clean exit into a traceback.
- :func:`deferred_signals` holds SIGINT and SIGTERM while a store transaction (or the recording of the
  ``interrupted`` event) runs and delivers them right after, so a second Ctrl-C can neither leave a
  transaction half-done, nor turn a finished ``COMMIT`` into "cannot rollback", nor lose the event.  Signal
  handlers can only be changed on the main thread; elsewhere it defers nothing (the store's commit and
  rollback are robust on their own).  A write held this way is short (one SQLite transaction; at worst the
  database's busy timeout).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from harness.errors import Terminated

log = logging.getLogger(__name__)

#: The signals that stop a run.
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


def _already_stopping(signum: int, frame: object) -> None:
    log.warning("%s: already stopping; the run is recording the interrupt and closing the lab",
                signal.Signals(signum).name)


def _stop_once(signum: int, frame: object) -> None:
    """The first SIGINT/SIGTERM: later ones only log, then raise this one's interrupt."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _already_stopping)
    if signum == signal.SIGTERM:
        raise Terminated(f"signal {signal.Signals(signum).name}")
    raise KeyboardInterrupt


def install_stop_handlers() -> bool:
    """SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, once (main thread; True when installed).

    The handler that fires first makes every later SIGINT/SIGTERM a logged no-op, so the clean-up that
    follows the first interrupt runs to its end.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_once)
    return True


def ignore_stop_signals() -> None:
    """Ignore further SIGINT/SIGTERM (the process is already stopping and reporting; main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def saved_handlers() -> dict[int, object]:
    """The current SIGINT/SIGTERM handlers, for :func:`restore_handlers`."""
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


def restore_handlers(saved: dict[int, object]) -> None:
    """Put back handlers saved by :func:`saved_handlers` (main thread only; unknown ones are left)."""
    if threading.current_thread() is threading.main_thread():
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def interrupt_name(exc: BaseException) -> str:
    """How a run was stopped, for its ``interrupted`` event: ``SIGTERM`` or ``Ctrl-C``."""
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"


def _deliver(signum: int, handler: object) -> None:
    """Run what ``signum`` would have done had it not been held."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the duration of the block; deliver the first one held when it ends.

    Nested blocks hand what they held to the enclosing block.  If the block raised, the held signal's
    interrupt replaces that exception (chained to it): stopping wins, after the write is complete.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    previous: dict[int, object] = {}
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not None:  # None: a handler not set from Python; leave it alone
                previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            log.info("delivering %s held during a store write", signal.Signals(held[0]).name)
            _deliver(held[0], previous.get(held[0]))

"""Helper processes that die with their parent: ``prctl(PR_SET_PDEATHSIG)`` plus a watchdog on the parent pid.

A helper process (the Monsoon sampler) must not outlive the harness that started it: after a ``kill -9`` of the
harness an orphan would keep the monitor claimed, burn CPU and grow its trace.  :func:`die_with_parent`, called
first thing in the helper, arranges three things:

- on Linux the kernel sends SIGTERM when the parent goes (``PR_SET_PDEATHSIG``; the kernel ties it to the
  parent *thread* that started the helper, so ask for it only when that was the parent's main thread);
- a daemon watchdog polls ``os.getppid()`` (the portable fallback, and the cover for a parent that died before
  the death signal was armed);
- SIGTERM or a vanished parent set an event the helper's loop checks to stop in order; if it has not exited
  ``grace_s`` later the watchdog ends the process with ``os._exit(3)``.

SIGTERM reaches the watchdog through :func:`signal.set_wakeup_fd` (a self-pipe the interpreter's C-level handler
writes to), and the watchdog thread, not a signal handler, sets the event.  Two reasons:

- a Python handler that calls ``Event.set()`` takes the event's (non-reentrant) lock; the kernel sends the
  parent-death signal once per *thread* of the dying parent that the helper is handed over from (a ``kill -9``
  of a multi-threaded harness delivers several SIGTERMs within microseconds), and a second handler run inside
  the first one's ``Event.set()`` deadlocks the main thread on that lock, watchdog and all (seen in CI);
- the pipe is written even while the main thread is deep in a long blocking call, so the watchdog learns of the
  signal at once.

The watchdog thread blocks SIGTERM and SIGINT, so the kernel hands them to the main thread (where Python's
handlers and the wakeup write run) rather than to a thread that would leave them pending.

SIGINT is ignored in the helper: Ctrl-C belongs to the parent, which stops its helpers in order.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: How long a sampler whose parent is gone (or that got SIGTERM) may take to stop in order before it exits hard.
ORPHAN_GRACE_S = 5.0


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` when the parent (thread) exits (Linux only); True when set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
        return False


def die_with_parent(parent_pid: int, halt: threading.Event, *, pdeathsig: bool = True,
                    poll_s: float = 0.2, grace_s: float = ORPHAN_GRACE_S) -> None:
    """Make this process stop when ``parent_pid`` is no longer its parent (or on SIGTERM).

    Sets ``halt`` (the caller's loop checks it and stops in order); a daemon watchdog exits the process
    ``grace_s`` later if it is still running.  SIGINT is ignored (the parent handles Ctrl-C).  Call it from the
    main thread (it takes the interpreter's wakeup fd, so not in a process that runs an asyncio loop).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _noted_by_the_watchdog)
    if pdeathsig:
        _set_pdeathsig(signal.SIGTERM)

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # theirs: the main thread's
        while not halt.is_set():
            if select.select([wake_r], [], [], poll_s)[0] and signal.SIGTERM in os.read(wake_r, 4096):
                halt.set()
            elif os.getppid() != parent_pid:
                log.warning("pid %d: parent pid %d is gone; stopping", os.getpid(), parent_pid)
                halt.set()
        time.sleep(grace_s)
        os._exit(3)  # still here: the orderly stop hung

    threading.Thread(target=watch, name="lifeline-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        halt.set()


def _noted_by_the_watchdog(signum, frame) -> None:
    """SIGTERM's Python handler: nothing (the wakeup fd carries the signal to the watchdog; no locks here)."""


def send_quietly(conn, message) -> None:
    """Send to the parent; a parent that is gone is not an error here."""
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass

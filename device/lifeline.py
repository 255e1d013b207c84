"""Helper processes that die with their parent: ``prctl(PR_SET_PDEATHSIG)`` plus a watchdog on the parent pid.

A helper process (the Monsoon sampler) must not outlive the harness that started it: after a ``kill -9`` of the
harness an orphan would keep the monitor claimed, burn CPU and grow its trace.  :func:`die_with_parent`, called
first thing in the helper, arranges three things:

- on Linux the kernel sends SIGTERM when the parent goes (``PR_SET_PDEATHSIG``; the kernel ties it to the
  parent *thread* that started the helper, so ask for it only when that was the parent's main thread);
- a daemon watchdog polls ``os.getppid()`` (the portable fallback, and the cover for a parent that died before
  the death signal was armed);
- SIGTERM or a vanished parent set an event the helper's loop checks to stop in order; if it has not exited
  ``grace_s`` later the watchdog ends the process with ``os._exit(3)``.  The watchdog thread blocks SIGTERM and
  SIGINT, so the kernel hands them to the main thread: Python runs its handlers only there, and a signal that
  landed on the watchdog instead would leave a main thread in a long blocking call (``time.sleep``, a read)
  unaware of it until that call returns.

SIGINT is ignored in the helper: Ctrl-C belongs to the parent, which stops its helpers in order.
"""

from __future__ import annotations

import ctypes
import logging
import os
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
    ``grace_s`` later if it is still running.  SIGINT is ignored (the parent handles Ctrl-C).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    if pdeathsig:
        _set_pdeathsig(signal.SIGTERM)

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # theirs: the main thread's
        while not halt.wait(poll_s):
            if os.getppid() != parent_pid:
                log.warning("pid %d: parent pid %d is gone; stopping", os.getpid(), parent_pid)
                halt.set()
        time.sleep(grace_s)
        os._exit(3)  # still here: the orderly stop hung

    threading.Thread(target=watch, name="lifeline-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        halt.set()


def send_quietly(conn, message) -> None:
    """Send to the parent; a parent that is gone is not an error here."""
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass

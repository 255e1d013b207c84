"""device.lifeline: stop signals reach the helper's main thread, where Python runs its handlers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
    import os, sys, threading, time
    from device.lifeline import die_with_parent
    halt = threading.Event()
    die_with_parent(os.getppid(), halt, pdeathsig=False, poll_s=0.05, grace_s=0.5)
    watchdog = next(t for t in threading.enumerate() if t.name == "lifeline-watchdog")
    print(watchdog.native_id, flush=True)
    time.sleep(60)  # a main thread deep in one long blocking call: only its signal handler sets the halt
"""


def _blocked(pid: int, tid: int) -> int:
    """The SigBlk mask of thread ``tid`` of process ``pid``."""
    for line in open(f"/proc/{pid}/task/{tid}/status"):
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_sigterm_is_for_the_main_thread_so_a_sleeping_helper_is_stopped():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD)], env=env, text=True,
                             stdout=subprocess.PIPE)
    try:
        watchdog = int(child.stdout.readline())
        bits = {signal.SIGTERM: 1 << (signal.SIGTERM - 1), signal.SIGINT: 1 << (signal.SIGINT - 1)}
        deadline = time.monotonic() + 10
        while _blocked(child.pid, watchdog) & bits[signal.SIGTERM] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the thread sets its mask first thing; give it the moment
        assert all(_blocked(child.pid, watchdog) & b for b in bits.values())  # the watchdog takes neither
        assert _blocked(child.pid, child.pid) & bits[signal.SIGTERM] == 0  # the main thread takes them
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 3  # the halt was set: the watchdog ended it 0.5 s later, not 60 s
    finally:
        child.kill()
        child.wait(10)


def test_a_stream_of_sigterms_cannot_deadlock_the_helper():
    """A ``kill -9`` of a multi-threaded parent sends the parent-death signal once per parent thread the helper
    is handed over from: several SIGTERMs within microseconds.  One landing while the handler of the one before
    is still running must be harmless (no lock taken in a signal handler), so the watchdog still stops the
    helper after its grace.  (With ``Event.set()`` in the handler it failed every run: handlers nested until
    a RecursionError, then the helper died of SIGTERM; in CI the nesting deadlocked instead.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD.replace("grace_s=0.5", "grace_s=2.0"))],
                             env=env, text=True, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the lifeline is armed
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            while child.poll() is None and time.monotonic() - started < 8:
                os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=10) == 3
        assert time.monotonic() - started < 6  # the 2 s grace, not a deadlock
    finally:
        child.kill()
        child.wait(10)

"""Stale device locks: detected by the owner line, taken over; a live owner still means "busy"."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from device.errors import DeviceError
from device.lock import DeviceLock, LockOwner, pid_alive, process_start_ticks

ROOT = Path(__file__).resolve().parents[2]

#: Takes the lock, forks a child that inherits the locked descriptor (and sleeps), prints its pid and exits.
FORKER = """
    import os, sys, time
    from device.lock import DeviceLock
    DeviceLock("phone", directory=sys.argv[1]).acquire()
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # let the caller see our parent's end of output
        time.sleep(120)
        os._exit(0)
    print(pid, flush=True)
    os._exit(0)
"""


def test_owner_line_round_trip_and_old_format():
    me = LockOwner.me()
    assert LockOwner.parse(me.line()) == me and me.stale_reason() is None
    assert LockOwner.parse("1234\n") == LockOwner(1234, 1234, None)  # the format before owner lines
    assert LockOwner.parse("") is None and LockOwner.parse("garbage") is None
    gone = LockOwner(me.pid, me.pid, (me.start_ticks or 0) + 1)  # same pid, other start time: reused pid
    assert "is gone" in gone.stale_reason()


def test_dead_owner_whose_descriptor_lives_on_is_taken_over(tmp_path, caplog):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FORKER), str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    inheritor = int(out.stdout)
    ticks = process_start_ticks(inheritor)
    try:
        assert pid_alive(inheritor, ticks)  # it still holds the flock of the first file
        caplog.set_level(logging.WARNING, logger="device.lock")
        with DeviceLock("phone", directory=tmp_path) as lock:
            assert lock.held
            assert "is gone" in caplog.text and "fresh lock file" in caplog.text
            with pytest.raises(DeviceError, match=f"in use by pid {os.getpid()}"):  # we are alive: busy
                DeviceLock("phone", directory=tmp_path).acquire()
        assert pid_alive(inheritor, ticks)  # not ours to end: only the file was replaced
    finally:
        os.kill(inheritor, signal.SIGKILL)

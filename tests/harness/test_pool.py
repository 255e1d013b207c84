"""harness.pool.WorkerPool: workers ignore Ctrl-C, run the caller's initializer, and stop() ends them now."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest

from harness.pool import WorkerPool


def test_workers_ignore_ctrl_c_and_run_the_initializer(tmp_path):
    with WorkerPool(1, initializer=os.chdir, initargs=(str(tmp_path),)) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=120) == signal.SIG_IGN
        assert pool.submit(os.getcwd).result(timeout=60) == str(tmp_path)
        pid = pool.submit(os.getpid).result(timeout=60)
    assert pid != os.getpid()
    assert pid not in {p.pid for p in multiprocessing.active_children()}  # a normal exit waits for them


def test_stop_ends_a_busy_worker_at_once_and_leaves_other_children_alone():
    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    other.start()
    try:
        pool = WorkerPool(1)
        pid = pool.submit(os.getpid).result(timeout=120)
        busy = pool.submit(time.sleep, 60)
        deadline = time.monotonic() + 30
        while not busy.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        pool.stop()
        assert time.monotonic() - t0 < 10
        assert pid not in {p.pid for p in multiprocessing.active_children()}
        with pytest.raises((BrokenProcessPool, CancelledError)):
            busy.result(timeout=30)
        assert other.is_alive()  # not one of the pool's workers
    finally:
        other.terminate()
        other.join(10)


def test_an_interrupt_inside_the_block_stops_the_workers():
    with pytest.raises(KeyboardInterrupt):
        with WorkerPool(1) as pool:
            pid = pool.submit(os.getpid).result(timeout=120)
            pool.submit(time.sleep, 60)
            raise KeyboardInterrupt
    assert pid not in {p.pid for p in multiprocessing.active_children()}

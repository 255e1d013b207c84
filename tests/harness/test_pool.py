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


def test_workers_die_when_the_parent_is_killed(tmp_path):
    """kill -9 of the harness leaves no worker computing on (parent-death signal + watchdog)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from harness.pool import WorkerPool\n"
        "def pid():\n    return os.getpid()\n"
        "def nap():\n    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(1)\n"
        "    print(pool.submit(pid).result(), flush=True)\n"
        "    pool.submit(nap)\n"
        "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    assert os.path.exists(f"/proc/{worker}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        try:
            if open(f"/proc/{worker}/stat").read().split()[2] == "Z":
                break  # a zombie waiting for init to reap it: it has stopped
        except OSError:
            break
        time.sleep(0.1)
    alive = os.path.exists(f"/proc/{worker}") and open(f"/proc/{worker}/stat").read().split()[2] != "Z"
    assert not alive, f"worker {worker} outlived its killed parent"


def test_worker_output_stays_off_the_terminal_unless_verbose(capfd):
    """Library noise of workers (written to file descriptors 1 and 2, as C libraries do) goes to a file
    that is removed on a clean shutdown; with quiet=False (``-v``) it reaches the terminal."""
    with WorkerPool(1, quiet=True) as pool:
        pool.submit(os.write, 2, b"noise-err\n").result(timeout=120)
        pool.submit(os.write, 1, b"noise-out\n").result(timeout=60)
        log_path = pool.log_path
        text = open(log_path).read()
        assert "noise-err" in text and "noise-out" in text
    assert not os.path.exists(log_path)
    out, err = capfd.readouterr()
    assert "noise" not in out + err
    with WorkerPool(1, quiet=False) as pool:
        assert pool.log_path is None
        pool.submit(os.write, 2, b"shown-err\n").result(timeout=120)
    assert "shown-err" in capfd.readouterr().err


def test_workers_keep_sigterms_default_action_so_terminate_is_immediate():
    """SIGTERM (``terminate``, the parent-death signal) ends a worker in the kernel, not in a Python handler
    that only the main thread runs."""
    with WorkerPool(1) as pool:
        assert pool.submit(signal.getsignal, signal.SIGTERM).result(timeout=120) == signal.SIG_DFL

"""Worker process pools that leave Ctrl-C to the parent and can be stopped at once.

Every pool of the harness (the sweep's evaluation workers, the model exporter) is a :class:`WorkerPool`:
a :class:`concurrent.futures.ProcessPoolExecutor` on the ``spawn`` start method whose workers ignore
SIGINT (Ctrl-C reaches the whole process group; the parent decides what to do) and, after the caller's
own initializer, report their pid.  :meth:`WorkerPool.stop` terminates exactly those workers through
multiprocessing's documented API (``active_children``, ``Process.terminate``/``join``), so an interrupted
parent leaves no worker computing on.  A worker that dies shows as
:class:`concurrent.futures.process.BrokenProcessPool` on its futures, as with any executor.

Unless the user asked for ``-v`` (``harness.logsetup.verbose``), a worker's stdout and stderr (file
descriptors 1 and 2: Python warnings, library log lines, C libraries such as cpuinfo) go to a file, not the
terminal: :attr:`WorkerPool.log_path`, removed when the pool shuts down cleanly and kept (its path logged)
when a worker died.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import connection
from typing import Any

log = logging.getLogger(__name__)

#: Seconds :meth:`WorkerPool.stop` waits for each terminated worker to exit.
STOP_JOIN_S = 5.0


def _quiet_worker(log_path: str) -> None:
    """Point this process's stdout and stderr (the descriptors: C libraries write there too) at ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def _start_worker(pids, initializer: Callable[..., Any] | None, initargs: Sequence[Any],
                  log_path: str | None = None) -> None:
    """Worker initializer: output to ``log_path`` (when given), ignore Ctrl-C, die with the parent, report
    this worker's pid, then run the caller's initializer.

    A parent killed with ``kill -9`` cannot stop its workers; the kernel's parent-death signal and a
    watchdog on the parent pid (``device.lifeline``) end them instead, so nothing computes on orphaned.
    SIGTERM keeps its default action here (the lifeline's orderly-stop handler is for helpers with something
    to close; a worker has nothing): the death signal and :meth:`WorkerPool.stop`'s ``terminate`` end the
    worker in the kernel at once, whatever its main thread is doing.
    """
    from device.lifeline import die_with_parent

    if log_path:
        _quiet_worker(log_path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(os.getppid(), threading.Event(), grace_s=0.0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pids.put(os.getpid())
    if initializer is not None:
        initializer(*initargs)


def _wait_exited(procs: list, timeout_s: float) -> list:
    """Wait up to ``timeout_s`` for ``procs`` to exit (their sentinels: no reaping); the ones still running."""
    deadline = time.monotonic() + timeout_s
    left = list(procs)
    while left:
        ready = set(connection.wait([p.sentinel for p in left], max(0.0, deadline - time.monotonic())))
        left = [p for p in left if p.sentinel not in ready]
        if time.monotonic() >= deadline:
            break
    return left


class WorkerPool(ProcessPoolExecutor):
    """A spawn-based process pool whose workers ignore Ctrl-C; :meth:`stop` ends them now.

    Used as a context manager it waits for the workers on a normal exit and stops them when the block
    raises (an interrupt included).
    """

    def __init__(self, max_workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: Sequence[Any] = (), quiet: bool | None = None):
        from harness.logsetup import verbose

        ctx = multiprocessing.get_context("spawn")
        self._worker_pids = ctx.SimpleQueue()
        self.log_path: str | None = None
        if quiet if quiet is not None else not verbose():
            fd, self.log_path = tempfile.mkstemp(prefix="harness-workers-", suffix=".log")
            os.close(fd)
        super().__init__(max_workers=max_workers, mp_context=ctx, initializer=_start_worker,
                         initargs=(self._worker_pids, initializer, tuple(initargs), self.log_path))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        path, self.log_path = self.log_path, None
        if path is None:
            return
        if getattr(self, "_broken", False) and not getattr(self, "_stopping", False):  # what it wrote may say why
            log.warning("a worker process died; its output is in %s", path)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass

    def stop(self) -> None:
        """Cancel what has not started, terminate the workers (running tasks are lost) and wait for them."""
        pids = set()
        while not self._worker_pids.empty():
            pids.add(self._worker_pids.get())
        # the executor's own table of its processes too: a pid still in flight on the queue is not missed
        pids |= set((getattr(self, "_processes", None) or {}).keys())
        ours = [p for p in multiprocessing.active_children() if p.pid in pids]
        manager = getattr(self, "_executor_manager_thread", None)  # shutdown() forgets it
        self._stopping = True  # the workers end because we end them: not a death worth reporting
        for proc in ours:
            proc.terminate()
        self.shutdown(wait=False, cancel_futures=True)
        # Wait on the exit sentinels, not with join: the executor's manager thread joins these same Process
        # objects, and two threads reaping one child race (the loser's waitpid gets ECHILD and reports the
        # process alive).
        late = _wait_exited(ours, STOP_JOIN_S)
        for proc in late:  # SIGTERM held (e.g. a library's critical section): SIGKILL
            log.warning("worker %d did not stop within %.0f s of SIGTERM; killing it", proc.pid, STOP_JOIN_S)
            proc.kill()
        _wait_exited(late, STOP_JOIN_S)
        if manager is not None and manager.is_alive():  # it notices the exits and reaps the workers
            manager.join(STOP_JOIN_S)
        if manager is None or not manager.is_alive():  # reaped by it, or nobody else reaps: join here
            for proc in ours:
                proc.join(STOP_JOIN_S)
        if ours:
            log.info("stopped %d worker process(es)", len(ours))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.stop()
        return False

"""Worker process pools that leave Ctrl-C to the parent and can be stopped at once.

Every pool of the harness (the sweep's evaluation workers, the model exporter) is a :class:`WorkerPool`:
a :class:`concurrent.futures.ProcessPoolExecutor` on the ``spawn`` start method whose workers ignore
SIGINT (Ctrl-C reaches the whole process group; the parent decides what to do) and, after the caller's
own initializer, report their pid.  :meth:`WorkerPool.stop` terminates exactly those workers through
multiprocessing's documented API (``active_children``, ``Process.terminate``/``join``), so an interrupted
parent leaves no worker computing on.  A worker that dies shows as
:class:`concurrent.futures.process.BrokenProcessPool` on its futures, as with any executor.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

#: Seconds :meth:`WorkerPool.stop` waits for each terminated worker to exit.
STOP_JOIN_S = 5.0


def _start_worker(pids, initializer: Callable[..., Any] | None, initargs: Sequence[Any]) -> None:
    """Worker initializer: ignore Ctrl-C, die with the parent, report this worker's pid, then run the
    caller's initializer.

    A parent killed with ``kill -9`` cannot stop its workers; the kernel's parent-death signal and a
    watchdog on the parent pid (``device.lifeline``) end them instead, so nothing computes on orphaned.
    """
    from device.lifeline import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(os.getppid(), threading.Event(), grace_s=0.0)
    pids.put(os.getpid())
    if initializer is not None:
        initializer(*initargs)


class WorkerPool(ProcessPoolExecutor):
    """A spawn-based process pool whose workers ignore Ctrl-C; :meth:`stop` ends them now.

    Used as a context manager it waits for the workers on a normal exit and stops them when the block
    raises (an interrupt included).
    """

    def __init__(self, max_workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: Sequence[Any] = ()):
        ctx = multiprocessing.get_context("spawn")
        self._worker_pids = ctx.SimpleQueue()
        super().__init__(max_workers=max_workers, mp_context=ctx, initializer=_start_worker,
                         initargs=(self._worker_pids, initializer, tuple(initargs)))

    def stop(self) -> None:
        """Cancel what has not started, terminate the workers (running tasks are lost) and wait for them."""
        pids = set()
        while not self._worker_pids.empty():
            pids.add(self._worker_pids.get())
        ours = [p for p in multiprocessing.active_children() if p.pid in pids]
        for proc in ours:
            proc.terminate()
        self.shutdown(wait=False, cancel_futures=True)
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

"""``harness sweep --lab HEAD``: the sweep's accuracy tasks as Ray tasks on any node (one CPU each).

The sweep itself is unchanged (``harness.sweep.run``: the same jobs, the same resumable cell store written
by this process as each task's results arrive); only where the tasks run changes.  Every node needs the
same model, statistics and CIFAR-10 files at the same paths (``WorkerSetup`` carries paths, not data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _lab_task(setup, threads: int, jobs) -> list:
    """One sweep task in a Ray worker: its torch threads, then ``harness.sweep.worker.run_task``."""
    from harness.sweep.worker import init_worker, run_task

    init_worker(threads)
    return run_task(setup, jobs)


def lab_executor(address: str) -> Callable[..., None]:
    """An executor for :func:`harness.sweep.run.run_sweep` that fans the tasks out over the lab at ``address``."""
    from harness.lab.ray_adapter import split_address

    split_address(address)  # a malformed address is a usage error before any work

    def execute(tasks: list, setup: Any, options: Any, accept: Callable[[list], None]) -> None:
        from harness.lab import ray_adapter as lab

        lab.connect(address)
        try:
            lab.map_cpu(_lab_task, [(setup, options.threads or 1, task) for task in tasks], accept, num_cpus=1)
        finally:
            lab.disconnect()

    return execute

"""The busy timeline the virtual phone writes and the virtual Monsoon reads.

File ``<root>/busy_timeline.tsv``: first line ``# t_mono_s\\tbusy_threads``, then one line per change:
``time.monotonic()`` seconds (host clock), a tab, the number of busy threads from then on.  Lines are
flushed one by one, so a reader may follow the file while the phone runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HEADER = "# t_mono_s\tbusy_threads\n"
FILE_NAME = "busy_timeline.tsv"


class BusyTimeline:
    """Counts busy threads and appends a line to the timeline file on every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.busy_threads = 0
        if not self.path.exists() or self.path.stat().st_size == 0:
            with open(self.path, "w") as fh:
                fh.write(HEADER)
                fh.write(f"{time.monotonic():.6f}\t0\n")

    def add(self, threads: int) -> None:
        """Change the number of busy threads by ``threads`` (may be negative) and record it."""
        with self._lock:
            self.busy_threads = max(0, self.busy_threads + threads)
            with open(self.path, "a") as fh:
                fh.write(f"{time.monotonic():.6f}\t{self.busy_threads}\n")
                fh.flush()

    @contextmanager
    def busy(self, threads: int) -> Iterator[None]:
        """Mark ``threads`` threads busy for the duration of the block."""
        self.add(threads)
        try:
            yield
        finally:
            self.add(-threads)


def read_timeline(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(t_mono_s, busy_threads)`` arrays from a timeline file (empty arrays when it has no rows)."""
    data = np.loadtxt(path, comments="#", delimiter="\t", ndmin=2, dtype=np.float64)
    if data.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return data[:, 0], data[:, 1].astype(np.int64)

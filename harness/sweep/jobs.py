"""The sweep's units of work: class subsets drawn per size, jobs (a subset at a level) and tasks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import UsageError
from specialist.model import N_CLASSES


def draw_subsets(size: int, count: int, seed: int, n_classes: int = N_CLASSES) -> tuple[list[tuple[int, ...]], str]:
    """``count`` distinct random class subsets of ``size`` (sorted tuples), reproducible from ``seed``.

    A permutation of all ``C(n_classes, size)`` subsets, seeded by ``(seed, size)``, cut to ``count``: so the
    first subsets do not change when more are asked for, and sizes are independent of each other.  Asking
    for more than exist returns them all and a note saying so (else the note is empty).
    """
    if not 1 <= size <= n_classes:
        raise UsageError(f"subset size {size} is outside 1-{n_classes}")
    combos = np.asarray(list(itertools.combinations(range(n_classes), size)), dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(size)])
    order = rng.permutation(len(combos))
    note = ""
    if count > len(combos):
        note = (f"size {size}: only {len(combos)} distinct subset{'s' if len(combos) != 1 else ''} of "
                f"{n_classes} classes exist; using {'them all' if len(combos) > 1 else 'it'} instead of {count}")
        count = len(combos)
    return [tuple(int(c) for c in combos[i]) for i in order[:count]], note


@dataclass(frozen=True)
class Job:
    """Build (unless level 0) and evaluate one specialist: ``method`` (None for level 0) on ``subset``."""

    context: str
    subset: tuple[int, ...]
    level: float
    method: Any = None  # specialist.methods.Method (picklable)

    def cost(self, per_class_images: int) -> float:
        """Relative work: images x the suffix's share of FLOPs (about (1 - level)^2)."""
        return len(self.subset) * per_class_images * (1.0 - self.level / 100.0) ** 2


def make_tasks(jobs: Sequence[Job], task_jobs: int, per_class_images: int) -> list[list[Job]]:
    """Cut jobs into tasks, largest first: every unpruned (level 0) job in one task, since they all share one
    forward pass per image; the others per size, whole subsets (all their levels) up to ``task_jobs`` jobs."""
    by_size: dict[int, dict[tuple[int, ...], list[Job]]] = {}
    tasks: list[list[Job]] = []
    unpruned = [j for j in jobs if j.level == 0]
    if unpruned:
        tasks.append(unpruned)
    for job in jobs:
        if job.level != 0:
            by_size.setdefault(len(job.subset), {}).setdefault(job.subset, []).append(job)
    for size in sorted(by_size):
        cur: list[Job] = []
        for subset_jobs in by_size[size].values():
            if cur and len(cur) + len(subset_jobs) > task_jobs:
                tasks.append(cur)
                cur = []
            cur.extend(subset_jobs)
        if cur:
            tasks.append(cur)
    tasks.sort(key=lambda t: -task_cost(t, per_class_images))
    return tasks


def task_cost(task: Sequence[Job], per_class_images: int) -> float:
    """Relative work of a task (the unpruned task: one forward pass per image of the classes involved)."""
    if all(j.level == 0 for j in task):
        return len({c for j in task for c in j.subset}) * per_class_images
    return sum(j.cost(per_class_images) for j in task)

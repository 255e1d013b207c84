"""A sweep's measured numbers: one :class:`MethodTable` per method (Table 2's cells) and the
:class:`SweepResult` around them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.sweep.options import SweepOptions
from harness.sweep.store import JobRecord
from harness.verdict import mean_ci_along

Subsets = dict[int, list[tuple[int, ...]]]
Done = dict[tuple[tuple[int, ...], float], JobRecord]


@dataclass
class MethodTable:
    """One method's Table 2: arrays over ``[sizes, levels, subsets]`` (NaN where a subset does not exist)."""

    method: str
    description: str
    definition: dict[str, Any]
    sizes: tuple[int, ...]
    levels: tuple[float, ...]
    acc_pct: np.ndarray  # [S, L, K] accuracy per subset
    none_pct: np.ndarray  # [S, K] unpruned column per subset
    flops_pruned_pct: np.ndarray  # [S, L, K]
    flops: np.ndarray  # [S, L, K]
    n_images: np.ndarray  # [S, L, K]
    build_ms: np.ndarray  # [S, L, K]

    def cells(self) -> dict[str, np.ndarray]:
        """Vectorised cell statistics: mean/ci/n of accuracy, of the drop vs None (paired), FLOPs."""
        mean, ci, n = mean_ci_along(self.acc_pct)
        drop_mean, drop_ci, _ = mean_ci_along(self.none_pct[:, None, :] - self.acc_pct)
        none_mean, none_ci, none_n = mean_ci_along(self.none_pct)
        with np.errstate(invalid="ignore"):
            flops_pct = np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.flops_pruned_pct), axis=-1)
            build = np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.build_ms), axis=-1)
        return {"mean": mean, "ci": ci, "n": n, "drop_mean": drop_mean, "drop_ci": drop_ci,
                "none_mean": none_mean, "none_ci": none_ci, "none_n": none_n,
                "flops_pruned_pct": flops_pct, "build_ms": build}

    def level_flops_pct(self) -> np.ndarray:
        """Mean FLOPs pruned per level over every cell of the table."""
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.where(np.isnan(self.acc_pct), np.nan, self.flops_pruned_pct), axis=(0, 2))


def method_table(method, label: str, options: SweepOptions, subsets: Subsets, none_done: Done,
                 done: Done) -> MethodTable:
    """Arrange one method's finished jobs (and the unpruned column's) as a :class:`MethodTable`."""
    S, L = len(options.sizes), len(options.levels)
    K = max(len(v) for v in subsets.values())
    arrays = {name: np.full((S, L, K), np.nan) for name in ("acc", "flops_pct", "flops", "n", "build")}
    none = np.full((S, K), np.nan)
    for si, size in enumerate(options.sizes):
        for k, subset in enumerate(subsets[size]):
            r0 = none_done.get((subset, 0.0))
            if r0 is not None:
                none[si, k] = r0.accuracy_pct
            for li, level in enumerate(options.levels):
                r = done.get((subset, float(level)))
                if r is None:
                    continue
                for name, value in (("acc", r.accuracy_pct), ("flops_pct", r.flops_pruned_pct),
                                    ("flops", r.flops), ("n", r.n), ("build", r.build_ms)):
                    arrays[name][si, li, k] = value
    return MethodTable(label, method.description, method.as_dict(), options.sizes, options.levels,
                       arrays["acc"], none, arrays["flops_pct"], arrays["flops"], arrays["n"], arrays["build"])


@dataclass
class SweepResult:
    """Everything a sweep measured, plus how long it took and what it reused."""

    options: SweepOptions
    subsets: Subsets
    tables: list[MethodTable]
    notes: list[str]
    wall_s: float
    jobs_total: int
    jobs_run: int
    jobs_resumed: int
    image_evals: int
    eval_s: float
    cpu_s: float
    build_ms_total: float
    data: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    engine: str = ""  # the evaluation engine the option resolved to in this process (specialist.evaluate)

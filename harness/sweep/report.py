"""Table 2 as data: every cell, the paired comparison of methods and the one JSON object of a sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.sweep.paper import PaperTable
from harness.sweep.tables import MethodTable, Subsets, SweepResult
from harness.sweep.text import num
from harness.verdict import mean_ci_along

#: Version of the layout of ``sweep.json`` (and of ``harness sweep --json``).
JSON_SCHEMA_VERSION = 1


def cells_json(t: MethodTable, subsets: Subsets,
               paper: PaperTable | None = None) -> list[dict[str, Any]]:
    """Every cell (levels and the None column) with mean, ci, n, per-subset values and FLOPs."""
    c = t.cells()
    out = []
    for si, size in enumerate(t.sizes):
        subs = [list(s) for s in subsets[size]]
        k = len(subs)
        for li, level in enumerate(t.levels):
            cell = {
                "size": size, "level": level, "mean_pct": num(c["mean"][si, li]), "ci_pct": num(c["ci"][si, li]),
                "n": int(c["n"][si, li]), "values_pct": [num(v) for v in t.acc_pct[si, li, :k]],
                "drop_mean_pct": num(c["drop_mean"][si, li]), "drop_ci_pct": num(c["drop_ci"][si, li]),
                "flops_pruned_pct": num(c["flops_pruned_pct"][si, li]),
                "flops": [None if not np.isfinite(v) else int(v) for v in t.flops[si, li, :k]],
                "images": [None if not np.isfinite(v) else int(v) for v in t.n_images[si, li, :k]],
                "build_ms_mean": num(c["build_ms"][si, li], 1), "subsets": subs,
            }
            if paper is not None:
                pm, pc = paper.get(size, {}).get(float(level), (math.nan, math.nan))
                cell.update(paper_mean_pct=num(pm), paper_ci_pct=num(pc),
                            delta_vs_paper_pct=num(c["mean"][si, li] - pm))
            out.append(cell)
        cell = {"size": size, "level": 0.0, "column": "None", "mean_pct": num(c["none_mean"][si]),
                "ci_pct": num(c["none_ci"][si]), "n": int(c["none_n"][si]),
                "values_pct": [num(v) for v in t.none_pct[si, :k]], "flops_pruned_pct": 0.0, "subsets": subs}
        if paper is not None:
            pm, pc = paper.get(size, {}).get(0.0, (math.nan, math.nan))
            cell.update(paper_mean_pct=num(pm), paper_ci_pct=num(pc),
                        delta_vs_paper_pct=num(c["none_mean"][si] - pm))
        out.append(cell)
    return out


def methods_comparison(tables: Sequence[MethodTable]) -> list[dict[str, Any]]:
    """Paired per-cell differences of each later method to the first (same subsets): mean, ci, wins."""
    first = tables[0]
    out = []
    for t in tables[1:]:
        diff = t.acc_pct - first.acc_pct
        dm, dc, dn = mean_ci_along(diff)
        cells = []
        for si, size in enumerate(first.sizes):
            for li, level in enumerate(first.levels):
                cells.append({"size": size, "level": level, "delta_mean_pct": num(dm[si, li]),
                              "delta_ci_pct": num(dc[si, li]), "n": int(dn[si, li])})
        with np.errstate(invalid="ignore"):
            worse = int(np.sum(dm < 0))
        out.append({"method": t.method, "versus": first.method, "cells": cells,
                    "cells_worse": worse, "cells_not_worse": int(np.sum(np.isfinite(dm))) - worse})
    return out


def result_json(res: SweepResult, paper: dict | None = None, files: dict | None = None) -> dict[str, Any]:
    """The one JSON object of ``harness sweep --json``."""
    evals_per_s = res.image_evals / res.eval_s if res.eval_s > 0 else None
    methods = []
    for t in res.tables:
        c = t.cells()
        methods.append({"method": t.method, "description": t.description, "definition": t.definition,
                        "level_flops_pruned_pct": [num(v) for v in t.level_flops_pct()],
                        "build_ms_mean": num(np.nanmean(t.build_ms) if np.isfinite(t.build_ms).any() else math.nan, 1),
                        "cells_missing": int(np.sum(np.isnan(c["mean"]))),
                        "cells": cells_json(t, res.subsets, paper)})
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "options": res.options.as_dict(),
        "sizes": list(res.options.sizes), "levels": list(res.options.levels),
        "subsets": {str(k): [list(s) for s in v] for k, v in res.subsets.items()},
        "notes": res.notes,
        "methods": methods,
        "comparison": methods_comparison(res.tables) if len(res.tables) > 1 else [],
        "timing": {"wall_s": round(res.wall_s, 2), "jobs_total": res.jobs_total, "jobs_run": res.jobs_run,
                   "jobs_resumed": res.jobs_resumed, "image_evals": res.image_evals,
                   "eval_worker_s": round(res.eval_s, 2), "worker_cpu_s": round(res.cpu_s, 2),
                   "image_evals_per_worker_s": None if evals_per_s is None else round(evals_per_s, 1),
                   "build_ms_total": round(res.build_ms_total, 1), "engine": res.engine},
        "data": res.data, "hashes": res.hashes, "files": files or {},
    }

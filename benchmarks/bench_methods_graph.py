"""bench_methods.py for graph models (``--model resnet20``): Table 2 of every method preset at the same budgets.

Seeded class subsets (harness.sweep.draw_subsets; identical subsets, e.g. all ten classes, are built and
evaluated once), the statistics artifact given with ``--stats``, the test images of the subset's classes
(``--per-class 0``: all of them), exactly what ``harness accuracy --model ...`` runs per cell
(``build_graph_specialist`` + ``subset_accuracies``).  Levels are the outer loop, so a stopped run still has
whole columns; every finished cell is appended to ``--cells`` (JSON lines) and skipped when the run is resumed.
Prints one Markdown table per method (rows: subset size; columns: level with its mean FLOPs pruned, "mean +-
95% CI half-width" of the accuracy over the subsets, and the unpruned "None" column), the cells where
``best`` is below another preset, and the mean build time per method.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from harness.sweep import draw_subsets, mean_ci, parse_levels, parse_sizes
from specialist.data import load_split
from specialist.graph.artifact import load_stats, model_hash
from specialist.graph.groups import analyse
from specialist.graph.source import load_model
from specialist.graph.specialize import build_graph_specialist, graph_method, predict, subset_accuracies

log = logging.getLogger(__name__)


def _key(method: str, sub, level: float) -> str:
    return f"{method}|{','.join(map(str, sub))}|{level:g}"


def run_graph(args) -> int:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    methods = [graph_method(m).name for m in args.methods.split(",")]
    sizes = parse_sizes(args.sizes)
    levels = parse_levels(args.levels)
    loaded = load_model(args.model, weights=args.weights)
    stats, meta = load_stats(args.stats, model_hash(loaded.module, loaded.description))
    graph = analyse(loaded.module, loaded.example())
    test = load_split("test", args.data)
    per_class = args.per_class or None
    subsets = {s: draw_subsets(s, args.subsets, args.seed)[0] for s in sizes}
    unique = sorted({tuple(sub) for s in sizes for sub in subsets[s]}, key=lambda t: (len(t), t))
    cells: dict[str, dict] = {}
    path = Path(args.cells) if args.cells else None
    if path and path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                cells[d["key"]] = d
    data = {}
    for sub in unique:
        part = test.select(list(sub), per_class=per_class)
        data[sub] = (torch.as_tensor(loaded.description.normalize(part.x)), np.asarray(part.y))
    refs = {}  # the unpruned model's accuracy per subset, computed once (subset_accuracies' second value)

    t_all = time.perf_counter()
    for lv in levels:
        for sub in unique:
            x, y = data[sub]
            for m in methods:
                key = _key(m, sub, lv)
                if key in cells or args.print_only:
                    continue
                t0 = time.perf_counter()
                spec = build_graph_specialist(loaded, stats, list(sub), lv, graph_method(m), graph=graph,
                                              calib=args.data)
                build_s = time.perf_counter() - t0
                if sub not in refs:
                    refs[sub] = subset_accuracies(loaded.module, spec.module, spec.classes, x, y)[1]
                acc, ref = float((np.asarray(spec.classes)[predict(spec.module, x)] == y).mean()), refs[sub]
                d = {"key": key, "method": m, "classes": list(sub), "level": lv, "accuracy": 100 * acc,
                     "unpruned": 100 * ref, "flops_pruned_pct": spec.flops_pruned_pct, "build_s": build_s,
                     "n": len(y), "eval_s": time.perf_counter() - t0 - build_s}
                cells[key] = d
                if path:
                    with path.open("a") as f:
                        f.write(json.dumps(d) + "\n")
                log.info("%s L%g %s: %.2f%% (%.1f s)", m, lv, sub, 100 * acc, time.perf_counter() - t0)
    print_tables(cells, methods, sizes, levels, subsets, args, meta, time.perf_counter() - t_all)
    return 0


def print_tables(cells: dict, methods, sizes, levels, subsets, args, meta: dict, seconds: float) -> None:
    """Markdown tables per method, the cells where best is below another preset, build times."""
    def values(m, s, lv):
        return np.array([cells[_key(m, sub, lv)]["accuracy"] for sub in subsets[s] if _key(m, sub, lv) in cells])

    def cell(m, s, lv) -> str:
        v = values(m, s, lv)
        if len(v) == 0:
            return "-"
        mu, ci, _ = mean_ci(v)
        return f"{float(mu):.1f} +- {float(ci):.1f}" + (f" (n={len(v)})" if len(v) < len(subsets[s]) else "")

    n_img = "all" if not args.per_class else args.per_class
    out = {"model": args.model, "stats": meta.get("content_hash"), "methods": {}}
    for m in methods:
        print(f"\n### {m}  (n = {args.subsets} subsets x {n_img} test images/class)\n")
        fl = {lv: np.mean([cells[_key(m, sub, lv)]["flops_pruned_pct"] for s in sizes for sub in subsets[s]
                           if _key(m, sub, lv) in cells] or [np.nan]) for lv in levels}
        print("| classes | " + " | ".join(f"L{lv:g} ({fl[lv]:.1f}% FLOPs)" for lv in levels) + " | None |")
        print("|---" * (len(levels) + 2) + "|")
        for s in sizes:
            row = [cell(m, s, lv) for lv in levels]
            none = np.array([c["unpruned"] for c in cells.values() if tuple(c["classes"]) in set(subsets[s])])
            mu, ci, _ = mean_ci(np.unique(none)) if len(none) else (np.nan, np.nan, 0)
            print(f"| {s} | " + " | ".join(row) + f" | {float(mu):.1f} +- {float(ci):.1f} |")
        out["methods"][m] = {f"{s}/{lv:g}": float(np.mean(values(m, s, lv))) for s in sizes for lv in levels
                             if len(values(m, s, lv))}
    if "best" in methods:
        b = out["methods"]["best"]
        pairs = [(s, lv, o) for s in sizes for lv in levels for o in methods
                 if o != "best" and f"{s}/{lv:g}" in b and f"{s}/{lv:g}" in out["methods"][o]]
        worse = [(s, lv, o, b[f"{s}/{lv:g}"], out["methods"][o][f"{s}/{lv:g}"]) for s, lv, o in pairs
                 if out["methods"][o][f"{s}/{lv:g}"] > b[f"{s}/{lv:g}"]]
        print(f"\nbest below another preset (mean over the subsets measured): {len(worse)} of {len(pairs)} "
              "comparisons")
        for s, lv, o, b, v in worse:
            print(f"  size {s} level {lv:g}: best {b:.2f} < {o} {v:.2f}")
    print("\n| method | build s (mean) |\n|---|---:|")
    for m in methods:
        bs = [c["build_s"] for c in cells.values() if c["method"] == m]
        print(f"| {m} | {np.mean(bs) if bs else float('nan'):.2f} |")
    print(f"\n{len(cells)} cells, {seconds:.0f} s this run")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))

"""Benchmark: accuracy of every method preset at the same FLOPs budgets, and each method's build time.

    python benchmarks/bench_methods.py                                 # all presets, sizes 2,5,10, levels 10,30,50
    python benchmarks/bench_methods.py --methods paper,best --sizes 2-10 --levels 10,20,30,40,50 --subsets 3
    python benchmarks/bench_methods.py --model resnet20 --stats r20.npz --methods paper,thinet,captor,l1,merge,best \
        --sizes 2,5,10 --levels 10,20,30,40,50 --subsets 3 --per-class 0 --cells r20_cells.jsonl

Graph models (``--model resnet20 | pkg.mod:factory | file.pt2``, ``--stats`` the artifact of ``harness stats
--model ... --impact both``): see benchmarks/bench_methods_graph.py (``--per-class 0``: the whole test set).

Seeded class subsets (harness.sweep.draw_subsets), the shipped statistics artifact, the first --per-class test
images of each class, the sweep's batched evaluation engine.  Prints one Markdown table per method (rows: subset
size; columns: level, "mean +- 95% CI half-width" over the subsets, and the unpruned "None" column), then the
mean build time per method, and writes the same as JSON to --json-out if given.  Slow: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads only contend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from harness.sweep import draw_subsets, mean_ci, parse_levels, parse_sizes  # noqa: E402
from specialist.build import build_specialist, load_default_stats  # noqa: E402
from specialist.data import load_split  # noqa: E402
from specialist.evaluate import EvalModel, evaluate_models  # noqa: E402
from specialist.methods import PRESETS, get_method  # noqa: E402
from specialist.model import load_weights  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(PRESETS))
    ap.add_argument("--sizes", default="2,5,10")
    ap.add_argument("--levels", default="10,30,50")
    ap.add_argument("--subsets", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--data")
    ap.add_argument("--json-out")
    ap.add_argument("--model", help="a graph model (resnet20, pkg.mod:factory, .pt2); default: the NIN")
    ap.add_argument("--weights")
    ap.add_argument("--stats", help="graph models: the statistics artifact")
    ap.add_argument("--cells", help="graph models: JSON-lines file of finished cells (appended; resumed from)")
    ap.add_argument("--print-only", action="store_true", help="graph models: print the tables of --cells, build "
                    "nothing")
    args = ap.parse_args(argv)
    if args.model and args.model != "nin":
        from bench_methods_graph import run_graph

        return run_graph(args)
    methods = [get_method(m).name for m in args.methods.split(",")]
    sizes = parse_sizes(args.sizes)
    levels = parse_levels(args.levels)
    base = load_weights()
    stats = load_default_stats(base)
    test = load_split("test", args.data).select(range(10), per_class=args.per_class)
    subsets = {s: draw_subsets(s, args.subsets, args.seed)[0] for s in sizes}

    models, keys, build_s, flops = [], [], {m: [] for m in methods}, {}
    for s in sizes:
        for sub in subsets[s]:
            models.append(EvalModel(base, sub, columns=sub, outputs=sub))
            keys.append(("None", s, sub, 0.0))
            for m in methods:
                for lv in levels:
                    t0 = time.perf_counter()
                    spec = build_specialist(list(sub), lv, m, stats=stats, base=base)
                    build_s[m].append(time.perf_counter() - t0)
                    flops.setdefault((m, s, lv), []).append(spec.flops_pruned_pct)
                    models.append(EvalModel(spec.weights, sub))
                    keys.append((m, s, sub, lv))
    t0 = time.perf_counter()
    acc = 100 * evaluate_models(base, models, test).accuracy()
    eval_s = time.perf_counter() - t0
    table = dict(zip(keys, acc, strict=True))

    out = {"sizes": list(sizes), "levels": list(levels), "subsets": args.subsets, "per_class": args.per_class,
           "seed": args.seed, "eval_s": round(eval_s, 1), "methods": {}}
    none = {s: np.array([table[("None", s, sub, 0.0)] for sub in subsets[s]]) for s in sizes}
    for m in methods:
        print(f"\n### {m}  (n = {args.subsets} subsets x {args.per_class} test images/class)\n")
        print("| classes | " + " | ".join(f"L{lv:g} ({np.mean(flops[(m, sizes[0], lv)]):.1f}% FLOPs)"
                                        for lv in levels) + " | None |")
        print("|---" * (len(levels) + 2) + "|")
        cells = {}
        for s in sizes:
            row = []
            for lv in levels:
                v = np.array([table[(m, s, sub, lv)] for sub in subsets[s]])
                mu, ci, n = mean_ci(v)
                row.append(f"{float(mu):.1f} +- {float(ci):.1f}")
                cells[f"{s}/{lv:g}"] = {"mean": float(mu), "ci": float(ci), "n": int(n), "values": v.tolist(),
                                        "drop_vs_none": float(np.mean(none[s] - v)),
                                        "flops_pruned_pct": float(np.mean(flops[(m, s, lv)]))}
            mu, ci, _ = mean_ci(none[s])
            print(f"| {s} | " + " | ".join(row) + f" | {float(mu):.1f} +- {float(ci):.1f} |")
        out["methods"][m] = {"cells": cells, "build_s_mean": float(np.mean(build_s[m]))}
    print("\n| method | build s (mean) |\n|---|---:|")
    for m in methods:
        print(f"| {m} | {np.mean(build_s[m]):.2f} |")
    print(f"\nevaluation: {len(models)} models, {eval_s:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

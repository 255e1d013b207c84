"""Benchmark: ``recon`` (sequential reconstruction on calibration images) against ``best`` at the same FLOPs.

    python benchmarks/bench_recon.py --sizes 2,10 --levels 10,20,30,40,50 --subsets 3 --per-class 0

Seeded class subsets (harness.sweep.draw_subsets), the shipped statistics artifact, the whole test set of the
subset's classes (``--per-class 0``) or its first N images per class, the sweep's evaluation engine.  Prints every
cell (subset x level: FLOPs pruned, unpruned, best, recon, recon - best), the means per size and level with the
drop from the unpruned model, and the build times.  Slow: run it by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads only contend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.sweep import draw_subsets, parse_levels, parse_sizes  # noqa: E402
from specialist.build import build_specialist, load_default_stats  # noqa: E402
from specialist.data import load_split  # noqa: E402
from specialist.evaluate import EvalModel, evaluate_models  # noqa: E402
from specialist.model import load_weights  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2,10")
    ap.add_argument("--levels", default="10,20,30,40,50")
    ap.add_argument("--subsets", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=0, help="test images per class (0: all)")
    ap.add_argument("--calib-per-class", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes, levels = parse_sizes(args.sizes), parse_levels(args.levels)
    base = load_weights()
    stats = load_default_stats(base)
    calib = load_split("calib", args.data)
    test = load_split("test", args.data).select(range(10), per_class=args.per_class or None)
    models, keys, build_s, flops = [], [], {"best": [], "recon": []}, {}
    for s in sizes:
        for sub in draw_subsets(s, args.subsets, args.seed)[0]:
            sub = tuple(int(c) for c in sub)
            models.append(EvalModel(base, sub, columns=sub, outputs=sub))
            keys.append(("None", sub, 0.0))
            for lv in levels:
                for m in ("best", "recon"):
                    kw = {"calib": calib, "calib_per_class": args.calib_per_class} if m == "recon" else {}
                    t0 = time.perf_counter()
                    spec = build_specialist(list(sub), lv, m, stats=stats, base=base, **kw)
                    build_s[m].append(time.perf_counter() - t0)
                    flops[(sub, lv)] = spec.flops_pruned_pct
                    models.append(EvalModel(spec.weights, sub))
                    keys.append((m, sub, lv))
                print(f"built {sub} L{lv:g}: best {build_s['best'][-1]:.1f} s, recon {build_s['recon'][-1]:.1f} s",
                      file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    acc = dict(zip(keys, 100 * evaluate_models(base, models, test).accuracy(), strict=True))
    eval_s = time.perf_counter() - t0
    print(f"\n{len(models)} models evaluated in {eval_s:.0f} s; test images per class: {args.per_class or 'all'}; "
          f"calibration images per class: {args.calib_per_class}\n")
    print("| classes | subset | level | FLOPs pruned | unpruned | best | recon | recon - best |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    wins = ties = cells = 0
    means: dict[tuple[int, float], list[tuple[float, float, float]]] = {}
    for (m, sub, lv), a in acc.items():
        if m != "best":
            continue
        none, r = acc[("None", sub, 0.0)], acc[("recon", sub, lv)]
        cells += 1
        wins += r > a
        ties += r == a
        means.setdefault((len(sub), lv), []).append((none, a, r))
        print(f"| {len(sub)} | {','.join(map(str, sub))} | {lv:g} | {flops[(sub, lv)]:.1f}% | {none:.2f} | {a:.2f} | "
              f"{r:.2f} | {r - a:+.2f} |")
    print(f"\nrecon above best in {wins} of {cells} cells, equal in {ties}\n")
    print("| classes | level | subsets | best drop | recon drop |")
    print("|---:|---:|---:|---:|---:|")
    for (s, lv), rows in means.items():
        v = np.array(rows)
        print(f"| {s} | {lv:g} | {len(v)} | {np.mean(v[:, 0] - v[:, 1]):.2f} | {np.mean(v[:, 0] - v[:, 2]):.2f} |")
    for m, ts in build_s.items():
        print(f"\nbuild {m}: median {statistics.median(ts):.2f} s, mean {statistics.mean(ts):.2f} s, "
              f"max {max(ts):.2f} s ({len(ts)} builds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

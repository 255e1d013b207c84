"""Benchmark: specialist build time from the shipped artifact, and statistics computation time.

    python benchmarks/bench_build.py [--builds 40] [--stats-per-class 500] [--fd-images 10] [--skip-stats]

Prints a table: median/p90 build time per compensation (random subsets of 2-10 classes, levels 10-50),
the default preset's cold builds (no subset seen before) in wall and CPU time with the load average beside them,
the time of ``compute_stats`` with autograd impacts, and finite differences per image.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=40)
    ap.add_argument("--stats-per-class", type=int, default=500)
    ap.add_argument("--fd-images", type=int, default=10, help="images (1 per class) for the finite-difference timing")
    ap.add_argument("--skip-stats", action="store_true")
    args = ap.parse_args()
    from specialist.build import _SCORES_CACHE, build_specialist, load_default_stats
    from specialist.data import load_split
    from specialist.methods import DEFAULT_METHOD
    from specialist.model import load_weights
    from specialist.stats import compute_stats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    base = load_weights()
    st = load_default_stats(base)
    rng = np.random.default_rng(0)
    print("| compensation | fold | builds | median ms | p90 ms |")
    print("|---|---|---:|---:|---:|")
    for comp, fold in [("none", "bias"), ("mean", "bias"), ("mean", "exact"), ("auto", "exact"), ("lsq", "exact")]:
        ts = []
        for _ in range(args.builds):
            k = int(rng.integers(2, 11))
            classes = sorted(rng.choice(10, k, replace=False).tolist())
            level = int(rng.choice([10, 20, 30, 40, 50]))
            t0 = time.perf_counter()
            build_specialist(classes, level, "paper", compensation=comp, fold=fold, stats=st, base=base)
            ts.append(1000 * (time.perf_counter() - t0))
        print(f"| {comp} | {fold} | {len(ts)} | {np.median(ts):.1f} | {np.percentile(ts, 90):.1f} |")
    print()
    print("| method (preset) | builds | median ms | p90 ms | CPU median ms | CPU p90 ms | load average |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for method in dict.fromkeys((DEFAULT_METHOD, "best", "best-x16")):
        ts, cpu, load = [], [], []
        for _ in range(args.builds):
            k = int(rng.integers(2, 11))
            classes = sorted(rng.choice(10, k, replace=False).tolist())
            level = int(rng.choice([10, 20, 30, 40, 50]))
            _SCORES_CACHE.clear()  # cold: no subset seen before
            c0, t0 = time.process_time(), time.perf_counter()
            build_specialist(classes, level, method, stats=st, base=base)
            ts.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
            load.append(os.getloadavg()[0])
        name = f"{method} (default)" if method == DEFAULT_METHOD else method
        print(f"| {name} | {len(ts)} | {np.median(ts):.1f} | {np.percentile(ts, 90):.1f} | {np.median(cpu):.1f} | "
              f"{np.percentile(cpu, 90):.1f} | {min(load):.1f}-{max(load):.1f} |")
    if args.skip_stats:
        return
    calib = load_split("calib")
    sub = calib.select(range(10), per_class=args.stats_per_class)
    t0 = time.perf_counter()
    compute_stats(base, sub.x, sub.y, impact="grad")
    t_grad = time.perf_counter() - t0
    fd = calib.select(range(10), per_class=max(1, args.fd_images // 10))
    t0 = time.perf_counter()
    compute_stats(base, fd.x, fd.y, impact="fd", shift_per_class=1)
    t_fd = time.perf_counter() - t0
    print()
    print("| statistics | images | seconds |")
    print("|---|---:|---:|")
    print(f"| autograd impacts + means/correlations/grams/shift stats | {len(sub)} | {t_grad:.1f} |")
    print(f"| finite differences (1152 partial forwards per image) | {len(fd)} | {t_fd:.1f} "
          f"({t_fd / len(fd):.2f} s/image) |")


if __name__ == "__main__":
    main()

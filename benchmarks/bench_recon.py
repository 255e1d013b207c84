"""Benchmark: ``recon`` (sequential reconstruction on calibration images) against ``best`` at the same FLOPs.

    python benchmarks/bench_recon.py --subsets 2:10,10:1 --levels 10,20,30,40,50 --per-class 0 \\
        --quick-subsets 3 --quick-per-class 200 --cells recon_cells.jsonl

Seeded class subsets (harness.sweep.draw_subsets; ``--subsets 2:10,10:1``: ten of size 2, one of size 10), the
shipped statistics artifact, the whole test set of the subset's classes (``--per-class 0``) or its first N images
per class, the sweep's evaluation engine.  Prints every cell (subset x level: FLOPs pruned, unpruned, best, recon,
recon - best), the mean drop from the unpruned model per size and level with its 95% CI (t-interval over
subsets), and the build times (median, p90).  ``--quick-subsets N --quick-per-class M``: the same specialists of
the first N subsets of each size are also evaluated on the first M test images per class (the quick sweep's
cell), with a per-cell table of best against recon.  Every evaluated cell is appended to ``--cells`` (JSON
lines); ``--report FILE...`` prints the tables from such files without building anything.  Slow: run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matrices: BLAS threads only contend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.sweep import draw_subsets, parse_levels  # noqa: E402
from specialist.build import build_specialist, load_default_stats  # noqa: E402
from specialist.data import load_split  # noqa: E402
from specialist.evaluate import EvalModel, evaluate_models  # noqa: E402
from specialist.model import load_weights  # noqa: E402


def parse_subsets(text: str, default: int) -> dict[int, int]:
    """``2:10,10:1`` -> {2: 10, 10: 1}; a bare size takes ``default`` subsets."""
    out = {}
    for part in text.split(","):
        size, _, n = part.partition(":")
        out[int(size)] = int(n) if n else default
    return out


def t_ci(v: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean of ``v`` (nan for one value)."""
    from scipy.stats import t

    return float(t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def report(cells: list[dict]) -> None:
    """Per-cell and per size x level tables of ``cells`` (dicts from the cells file)."""
    for test in sorted({c["test"] for c in cells}, key=str):
        rows = [c for c in cells if c["test"] == test]
        print(f"\n### test images per class: {test}\n")
        print("| classes | subset | level | FLOPs pruned | unpruned | best | recon | recon - best |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        groups: dict[tuple[int, float], list[dict]] = {}
        for c in sorted(rows, key=lambda c: (len(c["subset"]), c["level"], c["subset"])):
            groups.setdefault((len(c["subset"]), c["level"]), []).append(c)
            print(f"| {len(c['subset'])} | {','.join(map(str, c['subset']))} | {c['level']:g} | {c['flops_pct']:.1f}% | "
                  f"{c['none']:.2f} | {c['best']:.2f} | {c['recon']:.2f} | {c['recon'] - c['best']:+.2f} |")
        print("\n| classes | level | subsets | best drop | recon drop (95% CI) | recon - best (mean) |")
        print("|---:|---:|---:|---:|---:|---:|")
        above = 0
        for (s, lv), g in sorted(groups.items()):
            none = np.array([c["none"] for c in g])
            best = np.array([c["best"] for c in g])
            rec = np.array([c["recon"] for c in g])
            d = none - rec
            above += rec.mean() > best.mean()
            print(f"| {s} | {lv:g} | {len(g)} | {np.mean(none - best):.2f} | {d.mean():.2f} +- {t_ci(d):.2f} | "
                  f"{rec.mean() - best.mean():+.2f} |")
        print(f"\nrecon above best in {above} of {len(groups)} size x level cells (mean over subsets)")
        for m in ("best", "recon"):
            ts = [c[f"{m}_build_s"] for c in rows]
            print(f"build {m}: median {statistics.median(ts):.2f} s, p90 {np.percentile(ts, 90):.2f} s, "
                  f"max {max(ts):.2f} s ({len(ts)} builds)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subsets", default="2:3,10:1", help="SIZE:COUNT,... (a bare SIZE takes --count)")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--start", type=int, default=0, help="skip the first N subsets of each size (split a run)")
    ap.add_argument("--levels", default="10,20,30,40,50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=0, help="test images per class (0: all)")
    ap.add_argument("--quick-subsets", type=int, default=0)
    ap.add_argument("--quick-per-class", type=int, default=200)
    ap.add_argument("--calib-per-class", type=int, default=None, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", help="append every evaluated cell here (JSON lines)")
    ap.add_argument("--report", nargs="*", help="print the tables of these cells files and exit")
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    if args.report:
        report([json.loads(line) for f in args.report for line in Path(f).read_text().splitlines() if line])
        return 0
    torch.set_num_threads(args.threads)
    levels = parse_levels(args.levels)
    base = load_weights()
    stats = load_default_stats(base)
    calib = load_split("calib", args.data)
    full = load_split("test", args.data)
    tests = {args.per_class or "all": full.select(range(10), per_class=args.per_class or None)}
    if args.quick_subsets:
        tests[args.quick_per_class] = full.select(range(10), per_class=args.quick_per_class)
    kw = {"calib": calib} | ({"calib_per_class": args.calib_per_class} if args.calib_per_class else {})
    cells = []
    for s, count in parse_subsets(args.subsets, args.count).items():
        for k, sub in enumerate(draw_subsets(s, count, args.seed)[0]):
            if k < args.start:
                continue
            sub = tuple(int(c) for c in sub)
            models, keys, info = [EvalModel(base, sub, columns=sub, outputs=sub)], [("none", 0.0)], {}
            for lv in levels:
                for m in ("best", "recon"):
                    t0 = time.perf_counter()
                    spec = build_specialist(list(sub), lv, m, stats=stats, base=base, **(kw if m == "recon" else {}))
                    info[(m, lv)] = time.perf_counter() - t0
                    info[("flops", lv)] = spec.flops_pruned_pct
                    models.append(EvalModel(spec.weights, sub))
                    keys.append((m, lv))
                print(f"built {sub} L{lv:g}: best {info[('best', lv)]:.1f} s, recon {info[('recon', lv)]:.1f} s",
                      file=sys.stderr, flush=True)
            for test_key, split in tests.items():
                if test_key != (args.per_class or "all") and k >= args.quick_subsets:
                    continue
                acc = dict(zip(keys, 100 * evaluate_models(base, models, split).accuracy(), strict=True))
                for lv in levels:
                    cell = {"subset": list(sub), "level": lv, "test": test_key, "none": acc[("none", 0.0)],
                            "best": acc[("best", lv)], "recon": acc[("recon", lv)],
                            "flops_pct": info[("flops", lv)], "best_build_s": info[("best", lv)],
                            "recon_build_s": info[("recon", lv)], "load": os.getloadavg()[0]}
                    cells.append(cell)
                    if args.cells:
                        with open(args.cells, "a") as f:
                            f.write(json.dumps(cell) + "\n")
            print(f"evaluated {sub}", file=sys.stderr, flush=True)
    report(cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

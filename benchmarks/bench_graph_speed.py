"""Benchmark: statistics and `best` build speed of a graph model (issue 13: ResNet-20 stats of 500 images per
class <= 3 min on 2 cores; a `best` specialist from the artifact <= 1 s).

    python benchmarks/bench_graph_speed.py --model resnet20 --per-class 500            # stats + builds
    python benchmarks/bench_graph_speed.py --model resnet20 --stats r20.npz --builds 5  # builds only

Prints wall and CPU seconds per phase (moments, autograd impacts; builds: median over --builds after one
warm-up, in one process, as `harness build` runs it after loading) and the load average beside them (the
machine is shared: wall times are upper bounds, CPU times are what the work costs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from specialist.data import load_split  # noqa: E402
from specialist.graph.artifact import load_stats, model_hash  # noqa: E402
from specialist.graph.groups import analyse  # noqa: E402
from specialist.graph.impacts import grad_impacts  # noqa: E402
from specialist.graph.source import load_model  # noqa: E402
from specialist.graph.specialize import build_graph_specialist, graph_method  # noqa: E402
from specialist.graph.stats import collect_stats  # noqa: E402


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--stats", help="an artifact: skip the statistics, time builds from it")
    ap.add_argument("--builds", type=int, default=5)
    ap.add_argument("--method", default="best")
    ap.add_argument("--classes", default="0,1,2")
    ap.add_argument("--level", type=float, default=30)
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    loaded = load_model(args.model)
    graph = analyse(loaded.module, loaded.example())
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    if args.stats:
        stats, _ = load_stats(args.stats, model_hash(loaded.module, loaded.description))
    else:
        calib = load_split("calib", args.data).select(range(10), per_class=args.per_class)
        x = loaded.description.normalize(calib.x)
        y = calib.y.astype("int64")
        stats, w, c = _timed(lambda: collect_stats(graph, x, y, loaded.description.num_classes, gram=True))
        print(f"statistics, {len(y)} images: means/moments/grams {w:.1f} s wall, {c:.1f} s CPU")
        stats.impact_grad, w2, c2 = _timed(lambda: grad_impacts(graph, x, y, loaded.description.num_classes))
        print(f"autograd impacts: {w2:.1f} s wall, {c2:.1f} s CPU; total {w + w2:.1f} s wall, {c + c2:.1f} s CPU")
    classes = [int(v) for v in args.classes.split(",")]
    method = graph_method(args.method)
    walls, cpus = [], []
    for i in range(args.builds + 1):
        spec, w, c = _timed(lambda: build_graph_specialist(loaded, stats, classes, args.level, method, graph=graph))
        if i:
            walls.append(w)
            cpus.append(c)
    print(f"{args.method} build, level {args.level:g}, classes {classes}: median {np.median(walls):.2f} s wall, "
          f"{np.median(cpus):.2f} s CPU over {args.builds} builds ({spec.flops_pruned_pct:.1f}% FLOPs pruned); "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

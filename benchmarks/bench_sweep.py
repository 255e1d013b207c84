"""Benchmark of the sweep's evaluation engines: image evaluations per second, printed as a table.

    python benchmarks/bench_sweep.py [--per-class 100] [--classes 0,2,4,6,8] [--no-xnnpack]

Specialists: the ``paper`` method at levels 10..50 for one class subset (what one task of a sweep does).
Rows: the reference path (``specialist.accuracy``: full forward per specialist, NCHW), the sweep engine
(shared CONV1/CCCP1 prefix per chunk) in NCHW and channels-last, with 1 and 2 torch threads, with 2 worker
processes, and ExecuTorch XNNPACK (one whole-network batch-1 program per specialist, as
``specialist.export`` lowers it: export time and run speed).  ``img/s`` counts specialist x image evaluations.
On a shared machine the figures move with the load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.pool import WorkerPool  # noqa: E402
from specialist.accuracy import subset_accuracy  # noqa: E402
from specialist.build import build_specialist  # noqa: E402
from specialist.data import load_split  # noqa: E402
from specialist.evaluate import EvalModel, EvalOptions, evaluate_models  # noqa: E402
from specialist.model import load_weights  # noqa: E402


def _half(base, weights, classes, split, engine, chunk):
    torch.set_num_threads(1)
    models = [EvalModel(w, classes) for w in weights]
    return evaluate_models(base, models, split, EvalOptions(engine=engine, chunk_images=chunk)).correct.sum(axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--classes", default="0,2,4,6,8")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--no-xnnpack", action="store_true")
    args = ap.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    base = load_weights()
    split = load_split("test").select(classes, per_class=args.per_class)
    t = time.perf_counter()
    specs = [build_specialist(classes, lvl, "paper", base=base) for lvl in (10, 20, 30, 40, 50)]
    build_s = time.perf_counter() - t
    n_evals = len(specs) * len(split)
    models = [EvalModel(s.weights, s.classes) for s in specs]
    rows = []
    ref_correct = None

    def row(name, seconds, correct=None, note=""):
        ok = "" if correct is None or ref_correct is None else ("same" if list(correct) == list(ref_correct)
                                                                 else "DIFFERENT")
        rows.append((name, seconds, n_evals / seconds, ok, note))

    torch.set_num_threads(2)
    t = time.perf_counter()
    ref_correct = [subset_accuracy(s.weights, s.classes, split, class_outputs=s.classes).correct for s in specs]
    row("reference (full forward, NCHW, 2 threads)", time.perf_counter() - t, ref_correct)
    for engine in ("torch", "torch-cl"):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t = time.perf_counter()
            res = evaluate_models(base, models, split, EvalOptions(engine=engine, chunk_images=args.chunk))
            row(f"sweep engine {engine}, {threads} thread{'s' if threads > 1 else ''}", time.perf_counter() - t,
                res.correct.sum(axis=1))
    with WorkerPool(2) as pool:  # as the sweep's: spawned, Ctrl-C left to this process
        pool.submit(int, 0).result()  # start both workers before timing
        pool.submit(int, 0).result()
        for engine in ("torch", "torch-cl"):
            t = time.perf_counter()
            parts = [pool.submit(_half, base, [s.weights for s in specs[i::2]], classes, split, engine, args.chunk)
                     for i in range(2)]
            a, b = (p.result() for p in parts)
            correct = [0] * len(specs)
            correct[0::2], correct[1::2] = list(a), list(b)
            row(f"sweep engine {engine}, 2 worker processes x 1 thread", time.perf_counter() - t, correct)
    if not args.no_xnnpack:
        from device.runner import HostProgram
        from specialist.export import ExportNet, lower

        torch.set_num_threads(2)
        x = base.normalize(split.x)
        export_s = run_s = 0.0
        correct = []
        with tempfile.TemporaryDirectory() as d:
            for i, s in enumerate(specs):
                t = time.perf_counter()
                path = Path(d) / f"s{i}.pte"
                path.write_bytes(lower(ExportNet(s.weights)))
                prog = HostProgram(path)
                export_s += time.perf_counter() - t
                t = time.perf_counter()
                out = np.stack([prog.run(x[j : j + 1]).reshape(-1) for j in range(len(x))])
                run_s += time.perf_counter() - t
                pred = np.asarray(s.classes)[out.argmax(axis=1)]
                correct.append(int((pred == split.y).sum()))
        row("ExecuTorch XNNPACK, batch 1, whole network (run only)", run_s, correct,
            f"+ export {export_s / len(specs):.1f} s per specialist")
    print(f"# bench_sweep: {len(specs)} paper specialists (levels 10-50) of classes {classes}, "
          f"{len(split)} images, {n_evals} evaluations; builds {build_s:.1f} s; cpu count {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| engine | seconds | img/s | predictions vs reference | note |")
    print("|---|---:|---:|---|---|")
    for name, sec, ips, ok, note in rows:
        print(f"| {name} | {sec:.2f} | {ips:.0f} | {ok} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Host Table 4: time saved vs FLOPs saved for the base NIN and specialists, XNNPACK and portable.

Builds one model per level (uniform removal in CCCP2..CCCP5, the paper's first two layers intact, the
classifier cut to the target classes), exports each with ``specialist.export`` (verified against
PyTorch), then times them interleaved with ``harness.hostrun.measure_host`` and prints Table-4-style
tables (Markdown) for every configuration asked for; the tables are also written under ``--out``.

Widths: with ``--builder`` the lead's specialist builder picks the channels (needs the statistics
artifact); otherwise the channels with the largest filter L1 norms are kept (same widths as the builder
for the same ``--multiple-of``: ``specialist.select.n_remove``; timing depends on widths, not values).

    python benchmarks/bench_host.py                       # 1 thread, multiple-of 1 and 16
    python benchmarks/bench_host.py --multiples 1,8,16 --threads 1,2 --portable
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cliutil import parse_int_list  # noqa: E402
from harness.hostrun import HostRunOptions, ModelEntry, measure_host, table4_markdown, write_tables  # noqa: E402
from specialist.flops import BASE_FLOPS, total_flops  # noqa: E402
from specialist.model import NIN_LAYERS, PRUNABLE, NinWeights, load_weights  # noqa: E402
from specialist.select import n_remove  # noqa: E402


def sliced_specialist(base: NinWeights, classes: list[int], level: float, multiple_of: int) -> NinWeights:
    """Uniform removal by filter L1 norm (no compensation): the builder's widths, no statistics needed."""
    keep: dict[str, np.ndarray] = {}
    for s in NIN_LAYERS:
        w = base.weights[s.name]
        if s.name in PRUNABLE and level > 0:
            k = w.shape[0] - n_remove(w.shape[0], level, multiple_of)
            keep[s.name] = np.sort(np.argsort(-np.abs(w).sum(axis=(1, 2, 3)), kind="stable")[:k])
        elif s.name == "CCCP6" and level > 0:
            keep[s.name] = np.asarray(sorted(classes))
        else:
            keep[s.name] = np.arange(w.shape[0])
    ws, bs, prev = {}, {}, np.arange(3)
    for s in NIN_LAYERS:
        ws[s.name] = np.ascontiguousarray(base.weights[s.name][keep[s.name]][:, prev])
        bs[s.name] = base.biases[s.name][keep[s.name]].copy()
        prev = keep[s.name]
    return NinWeights(ws, bs, base.input_mean.copy(), base.input_std.copy())


def build_models(levels, classes, multiple_of, backend, cache: Path, builder: bool, method: str,
                 fold: str = "bias") -> list[ModelEntry]:
    from harness.exportcheck import export_weights
    from specialist.export import ExportOptions

    base = load_weights()
    out = []
    for level in [0, *levels]:
        if level == 0:
            w = base
        elif builder:
            from specialist.build import build_specialist
            from specialist.methods import get_method

            m = get_method(method).replace(multiple_of=multiple_of)
            w = build_specialist(classes, float(level), m, fold="exact", base=base).weights
        else:
            w = sliced_specialist(base, classes, level, multiple_of)
        key = f"{w.content_hash()[:16]}-{backend}" + ("-exact" if fold == "exact" and w.consts else "")
        pte = cache / f"{key}.pte"
        if not pte.exists():
            t0 = time.perf_counter()
            rep, w = export_weights(w, pte, ExportOptions(backend=backend, verify_images=4, fold=fold),
                                    classes=classes)
            print(f"  exported L{level} m{multiple_of} {backend}: {w.channels()} in {time.perf_counter() - t0:.0f} s, "
                  f"max abs diff {rep.max_abs_diff:.2g}, portable ops {rep.portable_ops}", file=sys.stderr, flush=True)
        elif w.consts and fold == "bias":
            from specialist.export import fold_consts

            w, _ = fold_consts(w)
        fl = total_flops(w.channels())
        out.append(ModelEntry(level=float(level), pte_path=str(pte), flops=fl,
                              flops_pruned_pct=100.0 * (1 - fl / BASE_FLOPS), key=f"L{level}"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="10,20,30,40,50")
    ap.add_argument("--classes", default="0,1,2,3,4")
    ap.add_argument("--multiples", default="1,16", help="kept-width multiples to compare (1 = plain rounding)")
    ap.add_argument("--threads", default="1", help="thread counts, e.g. 1,2")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--order", default="abab", choices=("abab", "abba"))
    ap.add_argument("--portable", action="store_true", help="also the portable kernels (slow: ~1 s per inference)")
    ap.add_argument("--portable-iterations", type=int, default=5)
    ap.add_argument("--builder", action="store_true", help="widths from the specialist builder (needs stats)")
    ap.add_argument("--method", default="paper")
    ap.add_argument("--fold", default="bias", choices=("bias", "exact"),
                    help="builder specialists: fold mean constants into biases (default) or keep the add nodes")
    ap.add_argument("--cache", default="results/bench_host_cache", help="exported programs are kept here")
    ap.add_argument("--out", default="results", help="tables are written here")
    ap.add_argument("--json", metavar="FILE", help="also write every row to this JSON file")
    a = ap.parse_args(argv)
    levels = parse_int_list(a.levels, "--levels", 1, 95)
    classes = parse_int_list(a.classes, "--classes", 0, 9)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    configs = [("xnnpack", m, t, a.iterations, a.warmup) for m in parse_int_list(a.multiples, "--multiples", 1, 64)
               for t in parse_int_list(a.threads, "--threads", 1, 64)]
    if a.portable:
        configs.append(("portable", parse_int_list(a.multiples, "--multiples", 1, 64)[0], 1,
                        a.portable_iterations, 1))
    everything = {}
    for backend, mult, threads, iters, warm in configs:
        models = build_models(levels, classes, mult, backend, cache, a.builder, a.method, a.fold)
        t0 = time.perf_counter()
        res = measure_host(models, options=HostRunOptions(iterations=iters, warmup=warm, threads=threads,
                                                          order=a.order))
        title = (f"{backend}, {threads} thread(s), kept widths multiple of {mult}, "
                 f"{'builder ' + a.method + ' fold ' + a.fold if a.builder else 'L1-sliced'}, {iters} interleaved rounds "
                 f"(load avg {res.fingerprint.get('load_avg_1min')}, {time.perf_counter() - t0:.0f} s)")
        print(table4_markdown(res.rows, title))
        stem = f"host_table4_{backend}_t{threads}_m{mult}" + ("_exact" if a.fold == "exact" else "")
        md, cs = write_tables(res.rows, a.out, stem, title)
        print(f"(written {md} and {cs})\n", flush=True)
        everything[stem] = {"title": title, "rows": res.rows, "fingerprint": res.fingerprint}
    if a.json:
        Path(a.json).write_text(json.dumps(everything, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

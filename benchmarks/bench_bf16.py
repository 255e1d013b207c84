"""The measurement behind the bfloat16 engine's margin threshold (``specialist.evaluate.BF16_TAU``).

For the unpruned NIN and specialists of several methods, levels and subset sizes, the largest |bfloat16 -
float32| score error over every test image of the model's classes (every column), and the share of images whose
bfloat16 margin is below candidate thresholds (what the engine re-runs in float32).  Prints a Markdown table.

    python benchmarks/bench_bf16.py                       # whole test set: best, paper at 10-50, sizes 2,5,10
    python benchmarks/bench_bf16.py --per-class 100 --methods best
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.sweep.jobs import draw_subsets  # noqa: E402
from specialist.build import build_specialist  # noqa: E402
from specialist.data import load_split, resolve_data_dir  # noqa: E402
from specialist.evaluate import BF16_TAU, native_bf16, score_error  # noqa: E402
from specialist.model import load_weights  # noqa: E402

TAUS = (0.1, 0.2, BF16_TAU, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="best,paper,best-x16")
    ap.add_argument("--levels", default="10,20,30,40,50")
    ap.add_argument("--sizes", default="2,5,10")
    ap.add_argument("--per-class", type=int, default=None, help="test images per class (default all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_weights()
    test = load_split("test", str(resolve_data_dir(None))).select(range(10), per_class=args.per_class)
    print(f"native bfloat16: {native_bf16()}; taus {TAUS} (BF16_TAU = {BF16_TAU})\n")
    print("| model | classes | images | max abs error | " + " | ".join(f"margin < {t}" for t in TAUS) + " |")
    print("|---|---|---|---|" + "---|" * len(TAUS))
    rows = [("unpruned", tuple(range(10)), base)]
    for size in (int(s) for s in args.sizes.split(",")):
        subset = draw_subsets(size, 1, 0)[0][0]
        for method in args.methods.split(","):
            for level in (float(v) for v in args.levels.split(",")):
                rows.append((f"{method} {level:g}", subset, build_specialist(list(subset), level, method,
                                                                              base=base).weights))
    worst = 0.0
    t0 = time.perf_counter()
    for name, cls, w in rows:
        split = test.select(list(cls))
        err, marg = score_error(base, [w], split)
        worst = max(worst, float(err[0]))
        fr = " | ".join(f"{100 * float(np.mean(marg[0] < t)):.1f}%" for t in TAUS)
        print(f"| {name} | {','.join(map(str, cls))} | {len(split.y)} | {err[0]:.4f} | {fr} |", flush=True)
    print(f"\nlargest error {worst:.4f}; 2 x error = {2 * worst:.4f}; BF16_TAU / (2 x error) = "
          f"{BF16_TAU / max(2 * worst, 1e-12):.1f} (safety factor); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

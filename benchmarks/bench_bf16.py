"""The measurement behind the bfloat16 engine's margin thresholds (``specialist.evaluate.BF16_TAU``, ``BF16_REL``).

For the unpruned NIN and specialists of several methods, levels and subset sizes: the largest |bfloat16 -
float32| score error over every test image of the model's classes (every column), the largest error on the
model's calibration batch and their ratio, the model's threshold min(BF16_TAU, BF16_REL x calibration error),
and the share of images whose bfloat16 margin is below it (what the engine re-runs in float32) or below
BF16_TAU alone.  Prints a Markdown table.

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
from specialist.evaluate import BF16_REL, BF16_TAU, native_bf16, score_error  # noqa: E402
from specialist.model import load_weights  # noqa: E402


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
    print(f"native bfloat16: {native_bf16()}; BF16_TAU = {BF16_TAU}, BF16_REL = {BF16_REL}\n")
    print("| model | classes | images | max abs error | calibration error | ratio | threshold | re-run | "
          f"margin < {BF16_TAU} |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [("unpruned", tuple(range(10)), base)]
    for size in (int(s) for s in args.sizes.split(",")):
        subset = draw_subsets(size, 1, 0)[0][0]
        for method in args.methods.split(","):
            for level in (float(v) for v in args.levels.split(",")):
                rows.append((f"{method} {level:g}", subset, build_specialist(list(subset), level, method,
                                                                              base=base).weights))
    worst = ratio_max = 0.0
    reruns = []
    t0 = time.perf_counter()
    for name, cls, w in rows:
        split = test.select(list(cls))
        err, marg, calib = score_error(base, [w], split)
        ratio = float(err[0] / max(calib[0], 1e-12))
        worst, ratio_max = max(worst, float(err[0])), max(ratio_max, ratio)
        tau = min(BF16_TAU, BF16_REL * float(calib[0]))
        reruns.append(float(np.mean(marg[0] < tau)))
        print(f"| {name} | {','.join(map(str, cls))} | {len(split.y)} | {err[0]:.4f} | {calib[0]:.4f} | {ratio:.2f} | "
              f"{tau:.3f} | {100 * reruns[-1]:.1f}% | {100 * float(np.mean(marg[0] < BF16_TAU)):.1f}% |", flush=True)
    print(f"\nlargest error {worst:.4f}: BF16_TAU / (2 x error) = {BF16_TAU / max(2 * worst, 1e-12):.1f} (safety "
          f"factor); largest ratio {ratio_max:.2f}: BF16_REL / (2 x ratio) = {BF16_REL / max(2 * ratio_max, 1e-12):.1f} "
          f"(safety factor); mean re-run share {100 * float(np.mean(reruns)):.1f}%; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

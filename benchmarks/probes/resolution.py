"""Test-set resolution of the level-50 pair drops: per pair, the images only the unpruned model gets right and
those only the ``recon`` specialist gets right, the drop's paired (McNemar) standard error, and the standard
error of the ten-pair mean.  ``python benchmarks/probes/resolution.py`` (about 5-10 min on 2 cores)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.sweep import draw_subsets  # noqa: E402
from specialist.build import build_specialist, load_default_stats  # noqa: E402
from specialist.data import load_split  # noqa: E402
from specialist.methods import get_method  # noqa: E402
from specialist.model import load_weights  # noqa: E402
from specialist.recon import class_scores  # noqa: E402


def paired(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """Drop of b against a in points, its paired standard error, and the counts behind them."""
    a_only = int(np.sum((pred_a == y) & (pred_b != y)))
    b_only = int(np.sum((pred_a != y) & (pred_b == y)))
    n = len(y)
    se = 100 * np.sqrt(a_only + b_only - (a_only - b_only) ** 2 / n) / n
    return {"n": n, "orig_only": a_only, "spec_only": b_only, "drop": round(100 * (a_only - b_only) / n, 2),
            "se_drop": round(float(se), 3), "disagree_pct": round(100 * float(np.mean(pred_a != pred_b)), 2)}


def pair_specialists(level: float = 50.0):
    """For each of the ten seeded Table 2 pairs: ``(sub, base, spec, calib, test)``, ``spec`` the default
    ``recon`` specialist at ``level`` (single-threaded builds, as the probes measured them)."""
    torch.set_num_threads(1)
    base = load_weights()
    stats = load_default_stats(base)
    calib, test = load_split("calib"), load_split("test")
    for sub in draw_subsets(2, 10, 0)[0]:
        sub = [int(c) for c in sub]
        yield sub, base, build_specialist(sub, level, get_method("recon"), stats=stats, base=base, calib=calib), \
            calib, test


def main() -> int:
    rows = []
    for sub, base, spec, _calib, test in pair_specialists():
        t = test.select(sub)
        xn = base.normalize(t.x)
        cls = np.asarray(sub)
        row = {"sub": sub, **paired(t.y.astype(int), cls[class_scores(base, xn)[:, sub].argmax(1)],
                                    cls[class_scores(spec.weights, xn).argmax(1)])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    se_mean = float(np.sqrt(sum(r["se_drop"] ** 2 for r in rows))) / len(rows)
    print(json.dumps({"mean_drop": round(float(np.mean([r["drop"] for r in rows])), 3),
                      "se_mean": round(se_mean, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

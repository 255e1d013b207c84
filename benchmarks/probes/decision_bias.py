"""Is the level-50 pair specialists' loss a decision bias (one class favoured) that a score offset could fix?

Per Table 2 pair, builds the default ``recon`` specialist at level 50 and compares its score difference
``d_s = s_a - s_b`` with the unpruned model's ``d_o`` (restricted to the pair) on the whole test set and on the
calibration images (the 200 fitted per class, and 300 held-out ones per class after them): the mean of
``d_s - d_o`` (the bias), its spread, the disagreements in each direction, and on the test set the drop with
the best constant offset added to ``d_s`` (chosen on the test set itself: an upper bound for any offset rule).

    python benchmarks/probes/decision_bias.py        # about 3-5 min on 2 cores
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from resolution import pair_specialists  # noqa: E402

from specialist.calib_images import calibration_images  # noqa: E402
from specialist.recon import class_scores  # noqa: E402

OFFSETS = np.linspace(-2.0, 2.0, 401)


def compare(d_o: np.ndarray, d_s: np.ndarray) -> dict:
    """Bias and spread of ``d_s - d_o`` and the disagreements in each direction."""
    e = d_s - d_o
    return {"n": len(e), "bias": round(float(e.mean()), 3), "sd_err": round(float(e.std()), 3),
            "sd_orig": round(float(d_o.std()), 3), "orig_a_spec_b": int(np.sum((d_o > 0) & (d_s <= 0))),
            "orig_b_spec_a": int(np.sum((d_o <= 0) & (d_s > 0)))}


def best_offset(d_o: np.ndarray, d_s: np.ndarray, is_a: np.ndarray) -> dict:
    """Drop in points without an offset and with the offset that maximises the accuracy of ``d_s + offset``."""
    acc_o = np.mean((d_o > 0) == is_a)
    accs = ((d_s[None, :] + OFFSETS[:, None]) > 0) == is_a[None, :]
    accs = accs.mean(axis=1)
    i = int(accs.argmax())
    return {"drop": round(100 * float(acc_o - np.mean((d_s > 0) == is_a)), 2),
            "drop_best_offset": round(100 * float(acc_o - accs[i]), 2), "best_offset": round(float(OFFSETS[i]), 2)}


def main() -> int:
    rows = []
    for sub, base, spec, calib, test in pair_specialists():
        t = test.select(sub)
        row: dict = {"sub": sub}
        for name, x in (("test", base.normalize(t.x)), ("calib_fitted", calibration_images(base, sub, 200, calib)),
                        ("calib_held_out", calibration_images(base, sub, 300, calib, skip=200))):
            so, ss = class_scores(base, x)[:, sub], class_scores(spec.weights, x)
            d_o, d_s = so[:, 0] - so[:, 1], ss[:, 0] - ss[:, 1]
            row[name] = compare(d_o, d_s)
            if name == "test":
                row[name].update(best_offset(d_o, d_s, t.y == sub[0]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"mean_drop": round(float(np.mean([r["test"]["drop"] for r in rows])), 3),
                      "mean_drop_best_offset": round(float(np.mean([r["test"]["drop_best_offset"] for r in rows])), 3)}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

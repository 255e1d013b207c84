"""Trial of one ``recon`` setting: mean drop from the unpruned model over seeded subsets at one level.

    python benchmarks/bench_recon_trial.py --level 50 --setting '{"defaults": {"patch_samples": 64}}'

``--setting`` (JSON) changes what the trial builds, and nothing else: ``method`` overrides fields of the
``recon`` preset (``specialist.build.with_overrides``: ``{"max_remove_pct": 45.0}``, ``{"layer_weights":
{"CCCP5": 0.25}}``), ``defaults`` updates ``specialist.recon.RECON_DEFAULTS`` (``patch_samples``,
``relu_iters``, ``impute_iters``, ``class_aware``) and ``module`` sets constants of ``specialist.recon``
(``RIDGE_SCALE``, ``PATCH_RIDGE``); ``calib`` changes the calibration images: ``{"jpeg_quality": 75}`` replaces
the lossless ones (the calibration split's ``exact`` rows) by JPEG copies at that quality (Pillow, 4:2:0), as
the test set's 9,000 JPEG rows were made.  Subsets as ``bench_recon.py`` (``harness.sweep.draw_subsets``, default the
ten pairs of Table 2), whole test set of their classes.  Prints one line per subset (accuracy, drop, build
seconds) and the mean drop; docs/methods.md records the trials.  Slow: run by hand.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.sweep import draw_subsets  # noqa: E402
from specialist import recon  # noqa: E402
from specialist.build import build_specialist, load_default_stats, with_overrides  # noqa: E402
from specialist.data import Split, load_split  # noqa: E402
from specialist.evaluate import EvalModel, evaluate_models  # noqa: E402
from specialist.methods import get_method  # noqa: E402
from specialist.model import load_weights  # noqa: E402


def apply_setting(setting: dict):
    """The ``recon`` method for ``setting`` (module constants and RECON_DEFAULTS are set in place)."""
    for name, value in setting.get("module", {}).items():
        if not hasattr(recon, name):
            raise SystemExit(f"bench_recon_trial: specialist.recon has no {name}")
        setattr(recon, name, value)
    recon.RECON_DEFAULTS.update(setting.get("defaults", {}))
    fields = {k: tuple(sorted(v.items())) if isinstance(v, dict) else v for k, v in setting.get("method", {}).items()}
    method = get_method("recon")
    return with_overrides(method, fields) if fields else method


def jpeg_copies(x: np.ndarray, quality: int) -> np.ndarray:
    """``x`` [N, H, W, 3] uint8 after a JPEG round trip at ``quality`` (one encoder call per image: Pillow has
    no batch API)."""
    from PIL import Image

    out = np.empty_like(x)
    for i, im in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def apply_calib(setting: dict, calib: Split) -> Split:
    """The calibration split for ``setting["calib"]`` (unchanged without it)."""
    opts = setting.get("calib", {})
    unknown = set(opts) - {"jpeg_quality"}
    if unknown:
        raise SystemExit(f"bench_recon_trial: unknown calib option {sorted(unknown)[0]}")
    if "jpeg_quality" not in opts:
        return calib
    x = calib.x.copy()
    x[calib.exact] = jpeg_copies(calib.x[calib.exact], opts["jpeg_quality"])
    return Split(x, calib.y, np.zeros_like(calib.exact), f"{calib.source} (JPEG q{opts['jpeg_quality']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", type=float, default=50.0)
    ap.add_argument("--setting", default="{}", help="JSON: method / defaults / module overrides")
    ap.add_argument("--size", type=int, default=2)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    setting = json.loads(args.setting)
    torch.set_num_threads(args.threads)
    method = apply_setting(setting)
    base = load_weights()
    stats = load_default_stats(base)
    calib = apply_calib(setting, load_split("calib", args.data))
    test = load_split("test", args.data)
    drops = []
    for sub in draw_subsets(args.size, args.count, args.seed)[0]:
        sub = tuple(int(c) for c in sub)
        t0 = time.perf_counter()
        spec = build_specialist(list(sub), args.level, method, stats=stats, base=base, calib=calib)
        build_s = time.perf_counter() - t0
        models = [EvalModel(base, sub, columns=sub, outputs=sub), EvalModel(spec.weights, sub)]
        none, acc = 100 * evaluate_models(base, models, test.select(list(sub))).accuracy()
        drops.append(float(none - acc))
        print(json.dumps({"subset": list(sub), "level": args.level, "setting": setting, "none": round(float(none), 2),
                          "recon": round(float(acc), 2), "drop": round(drops[-1], 2),
                          "build_s": round(build_s, 1)}), flush=True)
    print(json.dumps({"setting": setting, "level": args.level, "subsets": len(drops),
                      "mean_drop": round(statistics.fmean(drops), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

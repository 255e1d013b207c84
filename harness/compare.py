"""Two runs compared model by model: the verdicts of ``harness compare`` and of the report's "earlier runs".

For every model in both runs and each metric (time, and energy when both runs measured it), a verdict for
run B against baseline run A from :func:`harness.verdict.compare_samples` (Mann-Whitney U on the per-window
values plus a minimum effect size).

The minimum effect is what the device reproduces between two runs of the same code, not what one run's CI
resolves: within a run each round pairs every model with the base model and drift cancels, but between runs
the device's own speed differs.  On the virtual lab (real ExecuTorch on a shared host) two consecutive default
runs of the same plan and code differed by 6-11% in every model, all in the same direction, and one run by 9%
between its first and second half (docs/run.md, "Comparing runs"), so the default minimum effect for two
virtual-lab runs is :data:`VIRTUAL_THRESHOLD_PCT`; for other devices it stays :data:`DEFAULT_THRESHOLD_PCT`
until their own run-to-run spread is measured (``--threshold`` overrides both).

The comparison also gives the **common shift** of each metric, the median of the per-model effects: when every
model moved together, the device (or the host behind a virtual lab) was faster or slower, not one model; each
comparison carries its effect relative to that shift (``effect_vs_common_pct``) so that a single model's change
stands out at a glance.  These are reported, not judged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.tables import window_values
from harness.verdict import compare_samples

#: Default minimum effect (% of the baseline median) when either run is on a real device or the host.
DEFAULT_THRESHOLD_PCT = 2.0
#: Default minimum effect for two virtual-lab runs: above the measured run-to-run spread of 11% (docs/run.md).
VIRTUAL_THRESHOLD_PCT = 15.0
#: A common shift at least this large (in %) gets a note.
COMMON_SHIFT_NOTE_PCT = 2.0


def default_threshold_pct(run_a, run_b) -> float:
    """The minimum effect for comparing ``run_b`` with ``run_a`` when the user gave none (see the module doc)."""
    return VIRTUAL_THRESHOLD_PCT if run_a.virtual and run_b.virtual else DEFAULT_THRESHOLD_PCT


def _relative_pct(effect_pct: float, shift_pct: float) -> float:
    """A model's change relative to the common shift, in %: (1 + effect) / (1 + shift) - 1."""
    if not (math.isfinite(effect_pct) and math.isfinite(shift_pct)) or shift_pct <= -100.0:
        return math.nan
    return ((1.0 + effect_pct / 100.0) / (1.0 + shift_pct / 100.0) - 1.0) * 100.0


def compare_runs(st, run_a: str, run_b: str, threshold_pct: float | None = None,
                 alpha: float = 0.05) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see ``harness compare --json``); ``threshold_pct`` None: the
    device's default (:func:`default_threshold_pct`)."""
    ra, rb = st.get_run(run_a), st.get_run(run_b)
    threshold_default = threshold_pct is None
    if threshold_pct is None:
        threshold_pct = default_threshold_pct(ra, rb)
    ma = {m.model_key: m for m in st.models(ra.run_id)}
    mb = {m.model_key: m for m in st.models(rb.run_id)}
    wa, wb = st.windows(ra.run_id), st.windows(rb.run_id)
    metrics = ["time_ms"] + (["energy_mj"] if ra.measures_energy and rb.measures_energy else [])
    out, shifts = [], {}
    for metric in metrics:
        va, vb = window_values(wa, metric), window_values(wb, metric)
        rows = []
        for key in sorted(set(ma) & set(mb), key=lambda k: ma[k].level_pct):
            v = compare_samples(va.get(key, []), vb.get(key, []), threshold_pct, alpha)
            rows.append({"model": key, "level": ma[key].level_pct, "metric": metric, **v.as_dict(),
                         "same_artifact": ma[key].artifact_hash == mb[key].artifact_hash})
        effects = [r["effect_pct"] for r in rows if math.isfinite(r["effect_pct"])]
        shift = float(np.median(effects)) if effects else math.nan
        shifts[metric] = None if math.isnan(shift) else shift
        for r in rows:
            rel = _relative_pct(r["effect_pct"], shift)
            r["effect_vs_common_pct"] = None if math.isnan(rel) else rel
        out += rows
    notes = []
    if ra.device_fingerprint != rb.device_fingerprint:
        notes.append(f"different devices: {ra.device} ({ra.device_fingerprint}) vs {rb.device} ({rb.device_fingerprint})")
    only = sorted(set(ma) ^ set(mb))
    if only:
        notes.append(f"models in only one run: {', '.join(only)}")
    for metric, shift in shifts.items():
        if shift is not None and abs(shift) >= COMMON_SHIFT_NOTE_PCT and len(set(ma) & set(mb)) >= 2:
            notes.append(f"{metric}: the models moved together by a median {shift:+.1f}% (the device's speed "
                         f"between the runs, not one model); effect_vs_common_pct is each model against it")
    counts = {k: sum(1 for c in out if c["verdict"] == k) for k in ("improved", "regressed", "same", "unknown")}
    return {"run_a": ra.run_id, "run_b": rb.run_id, "threshold_pct": threshold_pct,
            "threshold_default": threshold_default, "alpha": alpha, "comparisons": out,
            "common_shift_pct": shifts, "counts": counts, "regressed": counts["regressed"] > 0, "notes": notes}

"""Two runs compared model by model: the verdicts of ``harness compare`` and of the report's "earlier runs".

For every model in both runs and each metric (time, and energy when both runs measured it), a verdict for
run B against baseline run A from :func:`harness.verdict.compare_samples` (Mann-Whitney U on the per-window
values plus a minimum effect size).
"""

from __future__ import annotations

from typing import Any

from harness.tables import window_values
from harness.verdict import compare_samples


def compare_runs(st, run_a: str, run_b: str, threshold_pct: float = 2.0, alpha: float = 0.05) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see ``harness compare --json``)."""
    ra, rb = st.get_run(run_a), st.get_run(run_b)
    ma = {m.model_key: m for m in st.models(ra.run_id)}
    mb = {m.model_key: m for m in st.models(rb.run_id)}
    wa, wb = st.windows(ra.run_id), st.windows(rb.run_id)
    metrics = ["time_ms"] + (["energy_mj"] if ra.measures_energy and rb.measures_energy else [])
    out = []
    for metric in metrics:
        va, vb = window_values(wa, metric), window_values(wb, metric)
        for key in sorted(set(ma) & set(mb), key=lambda k: ma[k].level_pct):
            v = compare_samples(va.get(key, []), vb.get(key, []), threshold_pct, alpha)
            out.append({"model": key, "level": ma[key].level_pct, "metric": metric, **v.as_dict(),
                        "same_artifact": ma[key].artifact_hash == mb[key].artifact_hash})
    notes = []
    if ra.device_fingerprint != rb.device_fingerprint:
        notes.append(f"different devices: {ra.device} ({ra.device_fingerprint}) vs {rb.device} ({rb.device_fingerprint})")
    only = sorted(set(ma) ^ set(mb))
    if only:
        notes.append(f"models in only one run: {', '.join(only)}")
    counts = {k: sum(1 for c in out if c["verdict"] == k) for k in ("improved", "regressed", "same", "unknown")}
    return {"run_a": ra.run_id, "run_b": rb.run_id, "threshold_pct": threshold_pct, "alpha": alpha,
            "comparisons": out, "counts": counts, "regressed": counts["regressed"] > 0, "notes": notes}

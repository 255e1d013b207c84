"""What the lab report says, computed from the store: the run in words, per-window rows, latency, drift series
and the comparison with earlier runs.  Plain dicts and lists, ready for the template (harness/templates/).

Values a row may or may not carry yet (latency percentiles, load and first-inference times, savings CIs) are
read with ``.get`` and shown as a dash when absent.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.store import RunRecord, Store, WindowRecord

log = logging.getLogger(__name__)

#: Latency and phase columns of a row, in the order the report shows them.
LATENCY_KEYS = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "load_ms", "first_inference_ms")

#: How many earlier runs (same device fingerprint and code version) the report compares with.
EARLIER_RUNS = 3


def fmt(v: Any, digits: int = 2) -> str:
    """A number for a table cell: fixed digits, a dash for None/NaN/inf, text as is."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "–"
    return str(v)


def pm(mean: Any, ci: Any, digits: int = 2) -> str:
    """``mean ± ci`` (just the mean when the CI is unknown; a dash when the mean is)."""
    m = fmt(mean, digits)
    if m == "–":
        return m
    c = fmt(ci, digits)
    return m if c == "–" else f"{m} ± {c}"


def resolve_method(plan: dict[str, Any], models: Sequence[Any]) -> str:
    """The method by name: the plan's, else the one the specialists were built with, else the default preset."""
    from specialist.methods import DEFAULT_METHOD

    if plan.get("method"):
        return str(plan["method"])
    used = sorted({m.method for m in models if getattr(m, "level_pct", 0) > 0 and m.method})
    if used:
        return ", ".join(used)
    return f"{DEFAULT_METHOD} (the project's default preset)"


def _detail(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text) if text else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def precision_misses(rows: Sequence[dict], target_ci_pct: float | None) -> list[str]:
    """Models whose 95% CI half-width is above ``target_ci_pct`` of the mean, in words (time and energy).

    A model with no CI (fewer than 2 valid windows) misses too: nothing says how precise it is.
    """
    out = []
    for r in rows:
        if r.get("valid_windows", 2) < 2:
            out.append(f"{r['model']}: {r.get('valid_windows', 0)} valid window(s), no confidence interval")
            continue
        if not target_ci_pct:
            continue
        for key, what in (("time_ms", "time"), ("energy_mj", "energy")):
            mean, ci = r.get(key), r.get(key + "_ci")
            if mean is None or ci is None or not (math.isfinite(mean) and math.isfinite(ci)) or mean == 0:
                continue
            rel = ci / abs(mean) * 100.0
            if rel > target_ci_pct:
                out.append(f"{r['model']} {what} ±{rel:.1f}% (target ±{target_ci_pct:g}%)")
    return out


def run_status(events: Sequence[tuple[str, str, str]], rows: Sequence[dict], plan: dict[str, Any]) -> dict[str, Any]:
    """Status in words, whether the precision target was reached, wall time and overhead of the run loop.

    The store's events decide (the ``complete`` event's detail may say ``target_reached`` and which levels
    missed); where they do not say, the rows' CIs are checked against the plan's ``target_ci_pct``.
    """
    status = events[-1][0] if events else "unknown"
    complete = [_detail(d) for e, d, _ in events if e.startswith("complete")]
    info = complete[-1] if complete else {}
    stated = info.get("target_reached")
    if "not reached" in str(info.get("status", "")).replace("_", " "):
        stated = False
    missed_stated = info.get("target_missed") or info.get("missed") or []
    if isinstance(missed_stated, dict):
        missed_stated = [f"{k}: {v}" for k, v in missed_stated.items()]
    elif isinstance(missed_stated, str):
        missed_stated = [missed_stated]
    own = precision_misses(rows, plan.get("target_ci_pct"))
    named = any("not reached" in e.replace("_", " ") for e, _, _ in events)  # an event of its own, if any
    if named or "not reached" in status.replace("_", " "):
        reached: bool | None = False
    elif isinstance(stated, bool):
        reached = stated
    elif status.startswith("complete"):
        reached = not own
    else:
        reached = None
    words = status.replace("_", " ")
    if complete and reached is False and (status.startswith("complete") or named):
        words = "complete, target not reached"
    missed = [str(m) for m in missed_stated] if missed_stated else (own if reached is False else [])
    wall_s, measured_s = (v if isinstance(v, int | float) and math.isfinite(v) else None
                          for v in (info.get("wall_s"), info.get("measured_s")))
    overhead = None
    if wall_s is not None and measured_s is not None and wall_s > 0:
        overhead = (wall_s - measured_s) / wall_s * 100.0
    resumed = sum(1 for e, _, _ in events if e == "resumed")
    interrupted = sum(1 for e, _, _ in events if e == "interrupted")
    return {"status": words, "raw_status": status, "target_reached": reached, "missed": missed,
            "wall_s": wall_s, "measured_s": measured_s, "overhead_pct": overhead, "resumed": resumed,
            "interrupted": interrupted, "events": [{"event": e, "detail": d, "t_utc": t} for e, d, t in events]}


def _rounds(plan: dict[str, Any]) -> str:
    lo, hi = plan.get("min_reps"), plan.get("max_reps")
    target = f"±{fmt(plan.get('target_ci_pct'), 1)}% of its mean"
    if lo == hi:
        return f"{hi} rounds (precision target: every 95% CI within {target})"
    return f"{lo} to {hi} rounds, stopping early when every 95% CI is within {target}"


def plan_words(plan: dict[str, Any], method: str) -> list[str]:
    """The plan as a few sentences."""
    idle = plan.get("idle_s")
    idle_txt = "as long as the inference windows" if idle is None else f"{fmt(float(idle), 2)} s"
    out = [
        f"Levels {', '.join(str(v) for v in plan.get('levels', []))} % of channels removed (plus the full model), "
        f"classes {', '.join(str(c) for c in plan.get('classes', []))}, method {method}.",
        f"Inference windows of {fmt(plan.get('window_s'), 2)} s, idle windows {idle_txt}; "
        f"{_rounds(plan)}.",
        f"At least {plan.get('min_inferences_per_model')} inferences and {fmt(plan.get('min_inference_s_per_model'), 1)} s "
        f"per model, {plan.get('warmup_inferences')} warm-up inferences per window, {plan.get('threads')} thread(s), "
        f"seed {plan.get('seed')}.",
    ]
    if plan.get("cooldown_temp_c") is not None:
        out.append(f"Cool-down below {fmt(plan['cooldown_temp_c'], 1)} °C before each inference window "
                   f"(at most {fmt(plan.get('cooldown_timeout_s'), 0)} s).")
    return out


def _settings(w: WindowRecord) -> dict[str, Any]:
    return _detail(w.settings_json)


def idle_power_by_seq(windows: Sequence[WindowRecord]) -> dict[int, float]:
    """Mean power of each valid idle window, by sequence number."""
    return {w.seq: w.mean_power_w for w in windows
            if w.kind == "idle" and w.valid and w.mean_power_w is not None and math.isfinite(w.mean_power_w)}


def short_reason(reason: str, limit: int = 48) -> str:
    """The first clause of a window's reason, at most ``limit`` characters (the page has the rest on hover)."""
    first = reason.split(";")[0].split(" (")[0].strip() or reason
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def window_rows(windows: Sequence[WindowRecord], energy_by_seq: dict[int, float]) -> list[dict[str, str]]:
    """One row per window (idle and inference): the report's per-window table, as formatted cells."""
    idle = idle_power_by_seq(windows)
    out = []
    for w in windows:
        s = _settings(w)
        if w.kind == "idle":
            idle_w = w.mean_power_w
        else:
            around = [idle[k] for k in (w.seq - 1, w.seq + 1) if k in idle]
            idle_w = sum(around) / len(around) if around else None
        err = s.get("sync_error_bound_s")
        dropped = s.get("dropped_samples")
        out.append({
            "seq": str(w.seq), "round": str(w.round_idx + 1), "kind": w.kind, "model": w.model_key or "–",
            "valid": w.valid, "status": "valid" if w.valid else (w.reason or "invalid"),
            "status_short": "valid" if w.valid else short_reason(w.reason or "invalid"),
            "sync": str(s.get("sync", "–")) if w.kind == "inference" else "–",
            "sync_error_ms": fmt(err * 1000.0 if isinstance(err, int | float) else None, 2),
            "dropped": fmt(dropped if isinstance(dropped, int) else None),
            "idle_power_w": fmt(idle_w, 3), "temperature_c": fmt(w.temperature_c, 1),
            "n": str(w.n_inferences) if w.kind == "inference" else "–",
            "time_ms": fmt(w.time_ms, 3), "energy_mj": fmt(energy_by_seq.get(w.seq), 3),
        })
    return out


def drift_series(windows: Sequence[WindowRecord], metrics: dict[str, np.ndarray],
                 measures_energy: bool) -> dict[str, Any]:
    """Per-round values of each model (valid windows), idle power and temperature in schedule order."""
    def by_model(key: str) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for m, r, ok, v in zip(metrics["model_key"], metrics["round_idx"], metrics["valid"], metrics[key],
                               strict=True):
            if ok and math.isfinite(v):
                out.setdefault(str(m), []).append((int(r), float(v)))
        return out

    idle = [(w.seq, w.round_idx, w.mean_power_w) for w in windows
            if w.kind == "idle" and w.valid and w.mean_power_w is not None]
    temp = [(w.seq, w.round_idx, w.temperature_c) for w in windows if w.temperature_c is not None]
    return {"time_ms": by_model("time_ms"), "energy_mj": by_model("energy_mj") if measures_energy else {},
            "idle_power_w": idle if measures_energy else [], "temperature_c": temp}


def latency_rows(store: Store, rows: Sequence[dict], windows: Sequence[WindowRecord]) -> tuple[list[dict], bool]:
    """Per model p50/p90/p99 latency, load and first-inference time; ``(rows, computed_here)``.

    A row's own fields win; where a row has no percentiles they are computed here from the stored
    per-inference latencies of its valid windows (``computed_here`` says so).
    """
    computed = False
    out = []
    for r in rows:
        vals = {k: r.get(k) for k in LATENCY_KEYS}
        if all(vals[k] is None for k in LATENCY_KEYS[:3]):
            lat = _stored_latencies(store, [w for w in windows if w.kind == "inference" and w.valid
                                            and w.model_key == r["model"] and w.latencies_hash])
            if lat.size:
                p50, p90, p99 = np.percentile(lat, [50, 90, 99])
                vals.update(latency_p50_ms=float(p50), latency_p90_ms=float(p90), latency_p99_ms=float(p99))
                computed = True
        out.append({"model": r["model"], "level": r["level"], **{k: fmt(v, 3) for k, v in vals.items()}})
    return out, computed


def _stored_latencies(store: Store, windows: Sequence[WindowRecord]) -> np.ndarray:
    parts = []
    for w in windows:
        try:
            parts.append(np.asarray(store.traces.get(w.latencies_hash)["latencies_ms"], dtype=float))
        except Exception as exc:  # a damaged latency file must not stop the report  # noqa: BLE001
            log.warning("latencies of window %s skipped: %s", w.seq, exc)
    return np.concatenate(parts) if parts else np.zeros(0)


def earlier_runs(store: Store, run: RunRecord, limit: int = EARLIER_RUNS) -> dict[str, Any]:
    """Verdicts of this run against the latest earlier runs on the same device fingerprint and code version."""
    from harness.compare import compare_runs

    same_device = [s for s in store.list_runs() if s.run.device_fingerprint == run.device_fingerprint
                   and s.run.run_id != run.run_id and s.run.created_utc <= run.created_utc]
    same_code = [s for s in same_device if s.run.code_version == run.code_version
                 and s.status.startswith("complete")]
    picked = sorted(same_code, key=lambda s: s.run.created_utc)[-limit:][::-1]
    comparisons = []
    for s in picked:
        try:
            res = compare_runs(store, s.run.run_id, run.run_id)
        except Exception as exc:  # one unreadable earlier run must not stop the report  # noqa: BLE001
            log.warning("comparison with run %s skipped: %s", s.run.run_id, exc)
            continue
        comparisons.append({
            "run_id": s.run.run_id, "created_utc": s.run.created_utc, "counts": res["counts"],
            "notes": res["notes"],
            "rows": [{"model": c["model"], "metric": c["metric"], "verdict": c["verdict"],
                      "effect": fmt(c["effect_pct"], 2), "reason": c["reason"]} for c in res["comparisons"]],
        })
    return {"comparisons": comparisons, "same_device_runs": len(same_device),
            "other_code_runs": len(same_device) - len(same_code)}

"""Per-window metrics and the paper's Tables 3 (energy) and 4 (time), as rows, Markdown and CSV.

Energy per inference of one window = (energy over the window's busy span - idle power x busy
span) / inferences, the idle power being the mean of the two idle windows that bracket it (the
paper's "inference run minus an idle run of the same duration"): the idle-subtraction step of the one
analysis path, :func:`harness.window.energy_per_inference_mj`, over the stored windows (each window's
energy, span and validity came from :func:`harness.window.analyse_window`).

Estimates (docs/run.md, "Precision"): a window's time is the 10%-trimmed mean of its per-inference latencies;
a model's time and energy are the 20%-trimmed means of its valid windows' values (Tukey-McLaughlin 95% CIs,
:func:`harness.latency.robust_estimate`); savings against the base model (level 0) are the mean of the paired
per-round savings ``100 (1 - model_r / base_r)`` with a Student-t 95% CI (:func:`harness.latency.saved_estimate`).
Latency percentiles pool every timed inference of the model's valid windows; load, first inference and
warm-up are medians over its valid windows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness import latency
from harness.store import ModelRecord, WindowRecord
from harness.window import energy_per_inference_mj

#: Per-window latency and phase columns (``WindowRecord`` fields, schema version 3), medians per model.
PHASE_KEYS = ("load_ms", "first_inference_ms", "warmup_ms")
PERCENTILE_KEYS = tuple(f"latency_p{q}_ms" for q in latency.PERCENTILES)

#: The paper's Nexus 4 numbers (Guo & Potkonjak 2017, Tables 3 and 4), by channels removed (%).
PAPER_NEXUS4: dict[int, dict[str, float]] = {
    50: {"flops_pruned_pct": 57.8, "energy_mj": 157.9, "energy_saved_pct": 41.73, "time_ms": 60.89,
         "time_saved_pct": 24.90},
    40: {"flops_pruned_pct": 48.6, "energy_mj": 187.9, "energy_saved_pct": 30.67, "time_ms": 72.97,
         "time_saved_pct": 10.00},
    30: {"flops_pruned_pct": 38.9, "energy_mj": 209.6, "energy_saved_pct": 22.66, "time_ms": 78.00,
         "time_saved_pct": 3.799},
    20: {"flops_pruned_pct": 27.9, "energy_mj": 237.3, "energy_saved_pct": 12.44, "time_ms": 86.54,
         "time_saved_pct": -6.734},
    10: {"flops_pruned_pct": 14.3, "energy_mj": 266.0, "energy_saved_pct": 1.845, "time_ms": 86.75,
         "time_saved_pct": -6.993},
    0: {"flops_pruned_pct": 0.0, "energy_mj": 271.0, "energy_saved_pct": math.nan, "time_ms": 81.08,
        "time_saved_pct": math.nan},
}

VIRTUAL_NOTE = ("Numbers from the virtual lab (virtual phone + virtual Monsoon), not from a real phone; its times "
                "are the CPU time of the runner's thread on this host.")
HOST_NOTE = "Host timing only (no power monitor): energy is not measured."


def window_metrics(windows: Sequence[WindowRecord]) -> dict[str, np.ndarray]:
    """Per inference window: ``seq``, ``model_key``, ``round_idx``, ``valid``, ``time_ms``, ``energy_mj``, the
    latency percentiles and phases (:data:`PERCENTILE_KEYS`, :data:`PHASE_KEYS`, NaN when not recorded) and
    ``latencies_hash``.

    Idle neighbours are the windows at ``seq - 1`` and ``seq + 1`` when they are valid idle windows.
    """
    if not windows:
        empty = np.zeros(0)
        return {"seq": empty.astype(int), "model_key": empty.astype(str), "round_idx": empty.astype(int),
                "valid": empty.astype(bool), "time_ms": empty, "energy_mj": empty, "latencies_hash": empty.astype(str),
                **{k: empty for k in PERCENTILE_KEYS + PHASE_KEYS}}
    seq = np.array([w.seq for w in windows], dtype=np.int64)
    kind = np.array([w.kind for w in windows])
    valid = np.array([w.valid for w in windows])
    power = np.array([np.nan if w.mean_power_w is None else w.mean_power_w for w in windows], dtype=np.float64)
    idle_w = np.full(int(seq.max()) + 3, np.nan)
    is_idle = (kind == "idle") & valid
    idle_w[seq[is_idle] + 1] = power[is_idle]  # shifted by one so seq-1 >= -1 indexes safely
    inf = kind == "inference"
    s = seq[inf]

    def f(name: str) -> np.ndarray:
        return np.array([np.nan if getattr(w, name, None) is None else getattr(w, name) for w in windows],
                        dtype=np.float64)[inf]

    energy = energy_per_inference_mj(f("energy_j"), f("busy_s"), f("n_inferences"), idle_w[s], idle_w[s + 2])
    return {
        "seq": s,
        "model_key": np.array([w.model_key for w in windows])[inf],
        "round_idx": np.array([w.round_idx for w in windows], dtype=np.int64)[inf],
        "valid": valid[inf],
        "time_ms": f("time_ms"),
        "energy_mj": energy,
        "latencies_hash": np.array([w.latencies_hash for w in windows])[inf],
        **{k: f(k) for k in PERCENTILE_KEYS + PHASE_KEYS},
    }


def _by_round(m: dict[str, np.ndarray], ok: np.ndarray, metric: str, rounds: np.ndarray) -> np.ndarray:
    """The metric of the selected windows laid out by round (NaN where the round has no valid window)."""
    out = np.full(len(rounds), np.nan)
    pos = np.searchsorted(rounds, m["round_idx"][ok])
    out[pos] = m[metric][ok]
    return out


def _median(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _nan_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def model_rows(models: Sequence[ModelRecord], windows: Sequence[WindowRecord], measures_energy: bool = True,
               latencies: Callable[[str], np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per model (base first, then by level): the ``harness run --json`` rows.

    ``latencies`` (a window's ``latencies_hash`` -> its per-inference latencies, e.g. from the trace store; see
    :func:`run_rows`) gives pooled percentiles; without it each percentile is the median of the windows'.
    """
    m = window_metrics(windows)
    rounds = np.unique(m["round_idx"])
    metrics = ["time_ms"] + (["energy_mj"] if measures_energy else [])
    rows: list[dict[str, Any]] = []
    paired: dict[str, dict[str, np.ndarray]] = {}
    for model in sorted(models, key=lambda r: r.level_pct):
        sel = m["model_key"] == model.model_key
        ok = sel & m["valid"]
        est = {k: latency.robust_estimate(m[k][ok]) for k in metrics}
        paired[model.model_key] = {k: _by_round(m, ok, k, rounds) for k in metrics}
        t, e = est["time_ms"], est.get("energy_mj")
        row = {
            "model": model.model_key,
            "level": model.level_pct,
            "flops_pruned_pct": round(model.flops_pruned_pct, 2),
            "flops": model.flops,
            "time_ms": t.value, "time_ms_ci": t.ci, "time_saved_pct": math.nan, "time_saved_pct_ci": math.nan,
            "energy_mj": e.value if measures_energy else None,
            "energy_mj_ci": e.ci if measures_energy else None,
            "energy_saved_pct": math.nan if measures_energy else None,
            "energy_saved_pct_ci": math.nan if measures_energy else None,
            "paired_rounds": 0,
            "valid_windows": int(ok.sum()),
            "invalid_windows": int((sel & ~m["valid"]).sum()),
            "accuracy_pct": model.accuracy_pct,
        }
        row.update(_latency_fields(m, ok, latencies))
        rows.append(row)
    base = next((r for r in rows if r["level"] == 0), None)
    for r in rows:
        if base is None or r is base:
            continue
        for k, saved in (("time_ms", "time_saved_pct"), ("energy_mj", "energy_saved_pct")):
            if k not in metrics:
                continue
            s = latency.saved_estimate(paired[base["model"]][k], paired[r["model"]][k])
            r[saved], r[saved + "_ci"] = s.value, s.ci
            r["paired_rounds"] = max(r["paired_rounds"], s.n)
    return rows


def _latency_fields(m: dict[str, np.ndarray], ok: np.ndarray,
                    latencies: Callable[[str], np.ndarray] | None) -> dict[str, Any]:
    """Pooled latency percentiles (or medians of the windows' when latencies cannot be read) and phases."""
    out: dict[str, Any] = {}
    pooled = None
    if latencies is not None:
        arrays = []
        for h in m["latencies_hash"][ok]:
            if h:
                try:
                    arrays.append(np.asarray(latencies(str(h)), dtype=np.float64).ravel())
                except Exception:  # noqa: BLE001 - a missing trace file: fall back to the per-window values
                    arrays = []
                    break
        if arrays:
            pooled = latency.latency_percentiles(np.concatenate(arrays))
    out.update(pooled or {k: _median(m[k][ok]) for k in PERCENTILE_KEYS})
    out.update({k: _median(m[k][ok]) for k in PHASE_KEYS})
    return out


def run_rows(store: Any, run_id: str) -> list[dict[str, Any]]:
    """:func:`model_rows` of a stored run with pooled latency percentiles (per-inference latencies read from
    the store's traces): what ``run``, ``show``, ``export-results`` and the report print."""
    run = store.get_run(run_id)
    return model_rows(store.models(run.run_id), store.windows(run.run_id), run.measures_energy,
                      latencies=lambda h: store.traces.get(h)["latencies_ms"])


def window_values(windows: Sequence[WindowRecord], metric: str) -> dict[str, np.ndarray]:
    """Valid per-window values of ``metric`` (``time_ms`` or ``energy_mj``) by model key."""
    m = window_metrics(windows)
    out = {}
    for key in np.unique(m["model_key"]):
        sel = (m["model_key"] == key) & m["valid"]
        v = m[metric][sel]
        out[str(key)] = v[np.isfinite(v)]
    return out


# --------------------------------------------------------------------------- rendering


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _pm(mean: Any, ci: Any, digits: int = 2) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {_fmt(ci, digits)}" if ci is not None and math.isfinite(ci) else f"{mean:.{digits}f}"


def _notes(virtual: bool, measures_energy: bool, device: str) -> list[str]:
    notes = []
    if virtual:
        notes.append(VIRTUAL_NOTE)
    if not measures_energy:
        notes.append(HOST_NOTE)
    notes.append(f"Device: {device}. Trimmed means (20%) of the valid windows, ± 95% CI half-width; savings against "
                 "the full model from paired per-round ratios, ± 95% CI half-width in points.")
    return notes


def device_label(run: Any) -> str:
    """A run's device name plus its profile when they differ (``virtual (virtual-nexus4)``)."""
    import json

    try:
        profile = json.loads(run.fingerprint_json).get("profile", "")
    except (ValueError, AttributeError):
        profile = ""
    return f"{run.device} ({profile})" if profile and profile != run.device else run.device


def _paper_ref(device: str) -> bool:
    return "nexus4" in device.lower().replace(" ", "").replace("_", "")


@dataclass(frozen=True)
class _TableSpec:
    """What differs between Table 3 and Table 4: the measure, its unit and digits, and the paper's columns."""

    caption: str
    head: tuple[str, str]  # value column, saved column
    key: str  # row (and paper) key of the value; its CI is ``<key>_ci``
    saved: str
    digits: int
    paper_head: tuple[str, str]
    paper_digits: int


_TABLE3 = _TableSpec("**Table 3.** Average inference energy per sample.", ("energy (mJ)", "energy saved (%)"),
                     "energy_mj", "energy_saved_pct", 2, ("paper Nexus 4 (mJ)", "paper saved (%)"), 1)
_TABLE4 = _TableSpec("**Table 4.** Average inference wall-clock time per sample.", ("time (ms)", "time saved (%)"),
                     "time_ms", "time_saved_pct", 3, ("paper Nexus 4 (ms)", "paper saved (%)"), 2)


def _is_nin(rows: Sequence[dict]) -> bool:
    """The paper's columns are NIN's: shown only when the base model has NIN's FLOPs (not for --model resnet20)."""
    from specialist.flops import BASE_FLOPS

    return all(r.get("flops") in (None, int(BASE_FLOPS)) for r in rows if r["level"] == 0)


def _saving_table(spec: _TableSpec, rows: Sequence[dict], device: str, virtual: bool, measures_energy: bool) -> str:
    ref = _paper_ref(device) and _is_nin(rows)
    head = ["FLOPs pruned (%)", "channels removed (%)", *spec.head, "valid/invalid windows"]
    if ref:
        head += list(spec.paper_head)
    lines = [spec.caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -r["level"]):
        cells = [_fmt(r["flops_pruned_pct"], 1), str(r["level"]), _pm(r[spec.key], r[spec.key + "_ci"], spec.digits),
                 _pm(r[spec.saved], r.get(spec.saved + "_ci")), f"{r['valid_windows']}/{r['invalid_windows']}"]
        if ref:
            p = PAPER_NEXUS4.get(r["level"], {})
            cells += [_fmt(p.get(spec.key), spec.paper_digits), _fmt(p.get(spec.saved))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"_{n}_" for n in _notes(virtual, measures_energy, device)]) + "\n"


def table3_markdown(rows: Sequence[dict], device: str, virtual: bool, measures_energy: bool = True) -> str:
    """Table 3: energy per inference (mJ) and % saved, highest level first, base last."""
    return _saving_table(_TABLE3, rows, device, virtual, measures_energy)


def table4_markdown(rows: Sequence[dict], device: str, virtual: bool, measures_energy: bool = True) -> str:
    """Table 4: wall-clock time per inference (ms) and % saved."""
    return _saving_table(_TABLE4, rows, device, virtual, measures_energy)


def latency_markdown(rows: Sequence[dict], device: str) -> str:
    """Latency distribution and phases per model: p50/p90/p99 of the timed inferences, load, first inference,
    warm-up (ms), highest level first."""
    head = ["model", "channels removed (%)", "p50 (ms)", "p90 (ms)", "p99 (ms)", "load (ms)", "first inference (ms)",
            "warm-up (ms)"]
    lines = ["**Latency.** Per-inference latency percentiles and the phases before the timed inferences.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -r["level"]):
        cells = [r["model"], str(r["level"])] + [_fmt(r.get(k), 3) for k in PERCENTILE_KEYS + PHASE_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"_Device: {device}. Percentiles pool every timed inference of the valid windows; load (runner start to "
            "first inference), first inference and warm-up (all warm-up executions) are medians over the windows._")
    return "\n".join(lines + ["", note]) + "\n"


CSV_COLUMNS = ("level", "flops_pruned_pct", "time_ms", "time_ms_ci", "time_saved_pct", "time_saved_pct_ci",
               "energy_mj", "energy_mj_ci", "energy_saved_pct", "energy_saved_pct_ci", "paired_rounds",
               "valid_windows", "invalid_windows", "accuracy_pct", *PERCENTILE_KEYS, *PHASE_KEYS)


def rows_csv(rows: Sequence[dict], device: str, virtual: bool) -> str:
    """Both tables as one CSV (one line per model) with ``device`` and ``virtual`` columns."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(("device", "virtual") + CSV_COLUMNS)
    for r in sorted(rows, key=lambda r: -r["level"]):
        vals = []
        for c in CSV_COLUMNS:
            v = r.get(c)
            vals.append("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                        (f"{v:.6g}" if isinstance(v, float) else v))
        wr.writerow([device, int(virtual)] + vals)
    return buf.getvalue()

"""Per-window metrics and the paper's Tables 3 (energy) and 4 (time), as rows, Markdown and CSV.

Energy per inference of one window = (energy over the window's busy span - idle power x busy
span) / inferences, the idle power being the mean of the two idle windows that bracket it (the
paper's "inference run minus an idle run of the same duration"): the idle-subtraction step of the one
analysis path, :func:`harness.window.energy_per_inference_mj`, over the stored windows (each window's
energy, span and validity came from :func:`harness.window.analyse_window`).  Table values are means over the
valid windows with Student-t 95% CIs; savings are against the base model (level 0).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.store import ModelRecord, WindowRecord
from harness.verdict import mean_ci
from harness.window import energy_per_inference_mj

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

VIRTUAL_NOTE = "Numbers from the virtual lab (virtual phone + virtual Monsoon), not from a real phone."
HOST_NOTE = "Host timing only (no power monitor): energy is not measured."


def window_metrics(windows: Sequence[WindowRecord]) -> dict[str, np.ndarray]:
    """Per inference window: ``seq``, ``model_key``, ``round_idx``, ``valid``, ``time_ms``, ``energy_mj``.

    Idle neighbours are the windows at ``seq - 1`` and ``seq + 1`` when they are valid idle windows.
    """
    if not windows:
        empty = np.zeros(0)
        return {"seq": empty.astype(int), "model_key": empty.astype(str), "round_idx": empty.astype(int),
                "valid": empty.astype(bool), "time_ms": empty, "energy_mj": empty}
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
        return np.array([np.nan if getattr(w, name) is None else getattr(w, name) for w in windows],
                        dtype=np.float64)[inf]

    energy = energy_per_inference_mj(f("energy_j"), f("busy_s"), f("n_inferences"), idle_w[s], idle_w[s + 2])
    return {
        "seq": s,
        "model_key": np.array([w.model_key for w in windows])[inf],
        "round_idx": np.array([w.round_idx for w in windows], dtype=np.int64)[inf],
        "valid": valid[inf],
        "time_ms": f("time_ms"),
        "energy_mj": energy,
    }


def model_rows(models: Sequence[ModelRecord], windows: Sequence[WindowRecord],
               measures_energy: bool = True) -> list[dict[str, Any]]:
    """One row per model (base first, then by level): the ``harness run --json`` rows."""
    m = window_metrics(windows)
    rows: list[dict[str, Any]] = []
    for model in sorted(models, key=lambda r: r.level_pct):
        sel = m["model_key"] == model.model_key
        ok = sel & m["valid"]
        t_mean, t_ci = mean_ci(m["time_ms"][ok])
        e_mean, e_ci = mean_ci(m["energy_mj"][ok]) if measures_energy else (math.nan, math.nan)
        rows.append({
            "model": model.model_key,
            "level": model.level_pct,
            "flops_pruned_pct": round(model.flops_pruned_pct, 2),
            "flops": model.flops,
            "time_ms": t_mean, "time_ms_ci": t_ci, "time_saved_pct": math.nan,
            "energy_mj": e_mean if measures_energy else None,
            "energy_mj_ci": e_ci if measures_energy else None,
            "energy_saved_pct": math.nan if measures_energy else None,
            "valid_windows": int(ok.sum()),
            "invalid_windows": int((sel & ~m["valid"]).sum()),
            "accuracy_pct": model.accuracy_pct,
        })
    base = next((r for r in rows if r["level"] == 0), None)
    for r in rows:
        if base is None or r is base:
            continue
        r["time_saved_pct"] = _saved(base["time_ms"], r["time_ms"])
        if measures_energy:
            r["energy_saved_pct"] = _saved(base["energy_mj"], r["energy_mj"])
    return rows


def _saved(base: float, value: float) -> float:
    if base is None or value is None or not (math.isfinite(base) and math.isfinite(value)) or base == 0:
        return math.nan
    return (base - value) / base * 100.0


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
    notes.append(f"Device: {device}. Means over valid windows, ± 95% CI half-width; savings against the full model.")
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
                 _fmt(r[spec.saved]), f"{r['valid_windows']}/{r['invalid_windows']}"]
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


CSV_COLUMNS = ("level", "flops_pruned_pct", "time_ms", "time_ms_ci", "time_saved_pct", "energy_mj",
               "energy_mj_ci", "energy_saved_pct", "valid_windows", "invalid_windows", "accuracy_pct")


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

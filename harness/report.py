"""A run's lab report, rebuilt from the store: tables (Markdown, CSV, JSON, Parquet), PNG figures and a static
HTML page rendered from a jinja2 template (``harness/templates/report.html.j2``).

Everything lands in ``<db dir>/<run_id>/`` (``results/<run>/`` by default): ``table3.md``, ``table4.md``,
``tables.csv``, ``rows.json``, ``rows.parquet``, ``windows.csv``, ``windows.parquet``, ``energy_time_vs_flops.png``,
``drift.png`` (per-round values), ``power_trace.png`` and ``traces.png`` (one window in full, every window as a
thumbnail; when raw traces are kept), ``pareto.png`` (when accuracies are known) and ``report.html``.
Files are written atomically; figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import report_data as data
from harness import report_plots as plots
from harness.cliutil import _clean, atomic_write_bytes
from harness.store import Store, WindowRecord
from harness.tables import (
    HOST_NOTE,
    PAPER_NEXUS4,
    _paper_ref,
    device_label,
    model_rows,
    rows_csv,
    table3_markdown,
    table4_markdown,
    window_metrics,
)

log = logging.getLogger(__name__)

VIRTUAL_PAGE_NOTE = "These numbers are from the VIRTUAL LAB (virtual phone + virtual Monsoon), not a real phone."

#: At most this many windows in the trace thumbnails (spread evenly over the run when there are more).
MAX_TRACE_THUMBNAILS = 48


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote and the rows it computed."""

    out_dir: Path
    files: dict[str, Path]
    rows: list[dict[str, Any]]


def run_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The ``--json`` rows of a run, from the store."""
    run = store.get_run(run_id)
    return model_rows(store.models(run.run_id), store.windows(run.run_id), run.measures_energy)


def _pick_trace_window(windows: Sequence[WindowRecord]) -> WindowRecord | None:
    for w in windows:
        if w.kind == "inference" and w.valid and w.trace_hash:
            return w
    return None


def _thumbnail_windows(windows: Sequence[WindowRecord]) -> list[WindowRecord]:
    with_trace = [w for w in windows if w.kind == "inference" and w.trace_hash]
    if len(with_trace) <= MAX_TRACE_THUMBNAILS:
        return with_trace
    idx = np.unique(np.linspace(0, len(with_trace) - 1, MAX_TRACE_THUMBNAILS).round().astype(int))
    return [with_trace[i] for i in idx]


def _saving_table(rows: Sequence[dict], key: str, saved: str, digits: int, paper_ref: bool) -> list[dict[str, str]]:
    out = []
    for r in sorted(rows, key=lambda r: -r["level"]):
        p = PAPER_NEXUS4.get(r["level"], {}) if paper_ref else {}
        out.append({"flops": data.fmt(r["flops_pruned_pct"], 1), "level": str(r["level"]), "model": r["model"],
                    "value": data.pm(r.get(key), r.get(key + "_ci"), digits),
                    "saved": data.pm(r.get(saved), r.get(saved + "_ci"), 2),
                    "windows": f"{r['valid_windows']}/{r['invalid_windows']}",
                    "paper_saved": data.fmt(p.get(saved), 2)})
    return out


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("harness", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(context: dict[str, Any]) -> str:
    """The report page from ``report.html.j2`` (every value escaped)."""
    return _environment().get_template("report.html.j2").render(**context)


def _parquet(frame_rows: Sequence[dict]) -> bytes | None:
    try:
        import pandas as pd

        buf = io.BytesIO()
        pd.DataFrame(list(frame_rows)).to_parquet(buf, index=False)
        return buf.getvalue()
    except Exception as exc:  # pyarrow missing or a type it cannot store: the CSV/JSON remain  # noqa: BLE001
        log.warning("parquet output skipped: %s", exc)
        return None


def _windows_csv(windows: Sequence[WindowRecord]) -> str:
    import csv

    cols = ["seq", "round_idx", "kind", "model_key", "status", "reason", "n_inferences", "duration_s", "busy_s",
            "time_ms", "energy_j", "mean_power_w", "temperature_c", "settings_json"]
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(cols)
    for w in windows:
        wr.writerow(["" if getattr(w, c) is None else getattr(w, c) for c in cols])
    return buf.getvalue()


def build_report(store: Store, run_id: str, out_dir: str | Path | None = None) -> Report:
    """Rebuild a run's tables, figures and HTML page from the store."""
    run = store.get_run(run_id)
    models = store.models(run.run_id)
    windows = store.windows(run.run_id)
    rows = model_rows(models, windows, run.measures_energy)
    out = Path(out_dir) if out_dir is not None else store.work_dir / run.run_id
    files: dict[str, Path] = {}

    def put(name: str, payload: bytes | None) -> bool:
        if payload is None:
            return False
        atomic_write_bytes(out / name, payload)
        files[name] = out / name
        return True

    label = device_label(run)
    paper_ref = _paper_ref(label)
    plan = json.loads(run.plan_json or "{}")
    method = data.resolve_method(plan, models)
    plan_shown = {**plan, "method": method} if not plan.get("method") else plan
    if run.measures_energy:
        put("table3.md", table3_markdown(rows, label, run.virtual, run.measures_energy).encode())
    put("table4.md", table4_markdown(rows, label, run.virtual, run.measures_energy).encode())
    put("tables.csv", rows_csv(rows, run.device, run.virtual).encode())
    put("rows.json", json.dumps(_clean({"run_id": run.run_id, "device": run.device, "virtual": run.virtual,
                                        "method": method, "rows": rows}), indent=2).encode())
    put("windows.csv", _windows_csv(windows).encode())
    put("rows.parquet", _parquet([{"run_id": run.run_id, **{k: v for k, v in r.items()}} for r in rows]))
    put("windows.parquet", _parquet([w.__dict__ for w in windows]))

    metrics = window_metrics(windows)
    energy_by_seq = {int(s): float(e) for s, e in zip(metrics["seq"], metrics["energy_mj"], strict=True)
                     if math.isfinite(e)}
    figures: list[dict[str, str]] = []
    if any(r["valid_windows"] for r in rows):
        put("energy_time_vs_flops.png", plots.plot_vs_flops(rows, label, run.virtual, run.measures_energy, paper_ref))
        figures.append({"id": "fig-flops", "file": "energy_time_vs_flops.png",
                        "caption": "Per inference " + ("energy and time" if run.measures_energy else "time") +
                                   " against FLOPs pruned (left), and savings against the full model (right)" +
                                   ("; the paper's Nexus 4 appears as savings only" if paper_ref else "")})
        put("drift.png", plots.plot_drift(data.drift_series(windows, metrics, run.measures_energy)))
        figures.append({"id": "fig-drift", "file": "drift.png",
                        "caption": "Per round: each model's value as % of its median (drift shows as a trend)"
                                   + (", idle power" if run.measures_energy else "")
                                   + " and temperature (when read) in schedule order"})
    traces = _trace_figures(store, windows, put)
    pareto = plots.plot_pareto(rows, run.measures_energy)
    if put("pareto.png", pareto):
        figures.append({"id": "fig-pareto", "file": "pareto.png",
                        "caption": "Accuracy against " + ("energy" if run.measures_energy else "time")
                                   + " per inference"})
    status = data.run_status(store.events(run.run_id), rows, plan)
    latency, latency_computed = data.latency_rows(store, rows, windows)
    try:
        fingerprint = json.dumps(json.loads(run.fingerprint_json), indent=2, sort_keys=True)
    except ValueError:
        fingerprint = run.fingerprint_json
    notes = ([VIRTUAL_PAGE_NOTE] if run.virtual else []) + ([HOST_NOTE] if not run.measures_energy else [])
    links = [{"file": n, "what": what} for n, what in (
        ("table3.md", "Table 3 (Markdown)"), ("table4.md", "Table 4 (Markdown)"),
        ("tables.csv", "Tables 3 and 4 (CSV)"), ("rows.json", "per-model rows (JSON)"),
        ("rows.parquet", "per-model rows (Parquet)"), ("windows.csv", "every window (CSV)"),
        ("windows.parquet", "every window (Parquet)")) if n in files]
    context = {
        "run": run, "label": label, "notes": notes, "method": method, "status": status,
        "plan_words": data.plan_words(plan, method), "plan_json": json.dumps(plan_shown, indent=2, sort_keys=True),
        "measures_energy": run.measures_energy, "paper_ref": paper_ref,
        "table3": _saving_table(rows, "energy_mj", "energy_saved_pct", 2, paper_ref) if run.measures_energy else [],
        "table4": _saving_table(rows, "time_ms", "time_saved_pct", 3, paper_ref),
        "has_saved_ci": any(r.get("time_saved_pct_ci") is not None for r in rows),
        "latency": latency, "latency_computed": latency_computed,
        "accuracy": [{"model": r["model"], "level": r["level"], "accuracy": data.fmt(r.get("accuracy_pct"), 1)}
                     for r in rows if r.get("accuracy_pct") is not None],
        "windows": data.window_rows(windows, energy_by_seq),
        "n_valid": sum(1 for w in windows if w.valid), "n_invalid": sum(1 for w in windows if not w.valid),
        "figures": figures, "traces": traces, "fingerprint": fingerprint,
        "earlier": data.earlier_runs(store, run), "links": links,
    }
    put("report.html", render_html(context).encode())
    return Report(out, files, rows)


def _trace_figures(store: Store, windows: Sequence[WindowRecord], put) -> dict[str, Any]:
    """The full trace of one window and thumbnails of every window (a damaged trace is skipped, logged)."""
    out: dict[str, Any] = {"full": None, "grid": None, "shown": 0, "total": 0}
    tw = _pick_trace_window(windows)
    if tw is not None:
        try:
            arrays = store.traces.get(tw.trace_hash)
            if "t_s" in arrays and "power_w" in arrays:
                put("power_trace.png", plots.plot_trace(
                    arrays, f"window {tw.seq} (round {tw.round_idx + 1}): {tw.model_key}, {tw.n_inferences} inferences"))
                out["full"] = {"file": "power_trace.png", "seq": tw.seq, "model": tw.model_key}
        except Exception as exc:  # a damaged trace must not stop the report  # noqa: BLE001
            log.warning("power trace plot skipped: %s", exc)
    picked = _thumbnail_windows(windows)
    out["total"] = sum(1 for w in windows if w.kind == "inference" and w.trace_hash)
    thumbs = []
    for w in picked:
        try:
            arrays = store.traces.get(w.trace_hash)
        except Exception as exc:  # noqa: BLE001
            log.warning("trace of window %s skipped: %s", w.seq, exc)
            continue
        if "t_s" in arrays and "power_w" in arrays:
            state = "" if w.valid else " INVALID"
            thumbs.append((f"w{w.seq} r{w.round_idx + 1} {w.model_key}{state}", arrays))
    if thumbs:
        put("traces.png", plots.plot_trace_grid(thumbs))
        out["grid"] = {"file": "traces.png"}
        out["shown"] = len(thumbs)
    return out

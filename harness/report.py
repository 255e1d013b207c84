"""A run's report, rebuilt from the store: tables (Markdown, CSV), PNG plots and a static HTML page.

Everything lands in ``<db dir>/<run_id>/`` (``results/<run>/`` by default): ``table3.md``,
``table4.md``, ``tables.csv``, ``rows.json``, ``energy_time_vs_flops.png``, ``power_trace.png``
(when a raw trace is kept), ``pareto.png`` (when accuracies are known) and ``report.html``.
Files are written atomically; plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.cliutil import _clean, atomic_write_bytes
from harness.store import Store, WindowRecord
from harness.tables import (
    PAPER_NEXUS4,
    _paper_ref,
    device_label,
    model_rows,
    rows_csv,
    table3_markdown,
    table4_markdown,
)

log = logging.getLogger(__name__)

PHASE_COLOURS = {"idle": "#d9d9d9", "sync": "#f4a582", "inference": "#92c5de", "warmup": "#fddbc7"}


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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_vs_flops(rows: Sequence[dict], device: str, virtual: bool, measures_energy: bool) -> bytes:
    """Energy and time per inference, and their savings, against FLOPs pruned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["flops_pruned_pct"])
    x = np.array([r["flops_pruned_pct"] for r in rows], dtype=float)

    def col(k: str) -> np.ndarray:
        return np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=float)

    panels = [("time_ms", "time_ms_ci", "time per inference (ms)"), ("time_saved_pct", None, "time saved (%)")]
    if measures_energy:
        panels = [("energy_mj", "energy_mj_ci", "energy per inference (mJ)"),
                  ("energy_saved_pct", None, "energy saved (%)")] + panels
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    ref = _paper_ref(device)
    paper = sorted(PAPER_NEXUS4.values(), key=lambda p: p["flops_pruned_pct"])
    for ax, (key, ci, label) in zip(axes[0], panels, strict=True):
        yerr = col(ci) if ci else None
        ax.errorbar(x, col(key), yerr=yerr, marker="o", capsize=3, label="this run" + (" (virtual lab)" if virtual else ""))
        if ref:
            ax.plot([p["flops_pruned_pct"] for p in paper], [p[key] for p in paper], "k--", marker="x",
                    label="paper, Nexus 4")
        ax.set_xlabel("FLOPs pruned (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{device}{' — virtual lab' if virtual else ''}", fontsize=10)
    return _png(fig)


def plot_trace(arrays: dict[str, np.ndarray], title: str) -> bytes:
    """Power over one window with idle, sync marks and inference phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(arrays["t_s"], dtype=float)
    p = np.asarray(arrays["power_w"], dtype=float)
    step = max(1, len(t) // 20000)  # plot at most ~20k points
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(t[::step], p[::step], lw=0.6, color="#2166ac")
    seen = set()
    names = arrays.get("phase_name", np.zeros(0, dtype="<U1"))
    for a, b, name in zip(arrays.get("phase_start_s", []), arrays.get("phase_end_s", []), names, strict=False):
        name = str(name)
        ax.axvspan(a, b, color=PHASE_COLOURS.get(name, "#eeeeee"), alpha=0.6,
                   label=None if name in seen else name, lw=0)
        seen.add(name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("power (W)")
    ax.set_title(title, fontsize=10)
    if seen:
        ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def plot_pareto(rows: Sequence[dict], measures_energy: bool) -> bytes | None:
    """Accuracy against energy (or time) per inference; None when no accuracy is known."""
    pts = [r for r in rows if r.get("accuracy_pct") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "energy_mj" if measures_energy else "time_ms"
    x = np.array([np.nan if r[key] is None else r[key] for r in pts], dtype=float)
    y = np.array([r["accuracy_pct"] for r in pts], dtype=float)
    order = np.argsort(x)
    best = np.maximum.accumulate(y[order])
    front = order[y[order] >= best]  # non-dominated: no cheaper model is at least as accurate
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(x, y)
    for xi, yi, r in zip(x, y, pts, strict=True):
        ax.annotate(f"{r['level']}%", (xi, yi), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.step(x[front], y[front], where="post", color="k", lw=0.8, label="Pareto front")
    ax.set_xlabel("energy per inference (mJ)" if measures_energy else "time per inference (ms)")
    ax.set_ylabel("accuracy on target classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _pick_trace_window(windows: Sequence[WindowRecord]) -> WindowRecord | None:
    for w in windows:
        if w.kind == "inference" and w.valid and w.trace_hash:
            return w
    return None


def _html_table(rows: Sequence[dict], measures_energy: bool, virtual: bool) -> str:
    cols = [("level", "channels removed (%)"), ("flops_pruned_pct", "FLOPs pruned (%)"),
            ("time_ms", "time (ms)"), ("time_ms_ci", "± CI"), ("time_saved_pct", "time saved (%)")]
    if measures_energy:
        cols += [("energy_mj", "energy (mJ)"), ("energy_mj_ci", "± CI"), ("energy_saved_pct", "energy saved (%)")]
    cols += [("valid_windows", "valid"), ("invalid_windows", "invalid"), ("accuracy_pct", "accuracy (%)")]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for _, h in cols) + "</tr>"]
    for r in sorted(rows, key=lambda r: -r["level"]):
        cells = []
        for k, _ in cols:
            v = r.get(k)
            txt = "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (
                f"{v:.3f}" if isinstance(v, float) else str(v))
            cells.append(f"<td>{html.escape(txt)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def build_report(store: Store, run_id: str, out_dir: str | Path | None = None) -> Report:
    """Rebuild a run's tables, plots and HTML from the store."""
    run = store.get_run(run_id)
    models = store.models(run.run_id)
    windows = store.windows(run.run_id)
    rows = model_rows(models, windows, run.measures_energy)
    out = Path(out_dir) if out_dir is not None else store.work_dir / run.run_id
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        atomic_write_bytes(out / name, data)
        files[name] = out / name

    label = device_label(run)
    t3 = table3_markdown(rows, label, run.virtual, run.measures_energy) if run.measures_energy else ""
    t4 = table4_markdown(rows, label, run.virtual, run.measures_energy)
    if t3:
        put("table3.md", t3.encode())
    put("table4.md", t4.encode())
    put("tables.csv", rows_csv(rows, run.device, run.virtual).encode())
    put("rows.json", json.dumps(_clean({"run_id": run.run_id, "device": run.device, "virtual": run.virtual,
                                        "rows": rows}), indent=2).encode())
    images: list[tuple[str, str]] = []
    if any(r["valid_windows"] for r in rows):
        put("energy_time_vs_flops.png", plot_vs_flops(rows, label, run.virtual, run.measures_energy))
        images.append(("energy_time_vs_flops.png", "Energy and time per inference against FLOPs pruned"))
    tw = _pick_trace_window(windows)
    if tw is not None:
        try:
            arrays = store.traces.get(tw.trace_hash)
            if "t_s" in arrays and "power_w" in arrays:
                put("power_trace.png", plot_trace(arrays, f"window {tw.seq}: {tw.model_key}, "
                                                          f"{tw.n_inferences} inferences"))
                images.append(("power_trace.png", "Power trace of one window (idle, sync marks, inference)"))
        except Exception as exc:  # a damaged trace must not stop the report  # noqa: BLE001
            log.warning("power trace plot skipped: %s", exc)
    pareto = plot_pareto(rows, run.measures_energy)
    if pareto is not None:
        put("pareto.png", pareto)
        images.append(("pareto.png", "Accuracy against energy per inference"))
    notes = []
    if run.virtual:
        notes.append("These numbers are from the VIRTUAL LAB (virtual phone + virtual Monsoon), not a real phone.")
    if not run.measures_energy:
        notes.append("Host timing only: nothing measured energy.")
    status = store.run_status(run.run_id)
    body = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>harness run {html.escape(run.run_id)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}.note{background:#fff3cd;padding:6px}"
        "</style></head><body>",
        f"<h1>Run {html.escape(run.run_id)}</h1>",
        *[f"<p class='note'>{html.escape(n)}</p>" for n in notes],
        "<p>" + "<br>".join(html.escape(x) for x in [
            f"device: {label} (fingerprint {run.device_fingerprint})",
            f"instrument: {run.instrument}", f"code: {run.code_version}", f"created: {run.created_utc}",
            f"status: {status}"]) + "</p>",
        "<h2>Tables 3 and 4</h2>", _html_table(rows, run.measures_energy, run.virtual),
        *[f"<h2>{html.escape(cap)}</h2><img src='{html.escape(name)}' alt='{html.escape(cap)}'>"
          for name, cap in images],
        "<h2>Plan</h2><pre>" + html.escape(json.dumps(json.loads(run.plan_json), indent=2)) + "</pre>",
        "</body></html>",
    ]
    put("report.html", "\n".join(body).encode())
    return Report(out, files, rows)

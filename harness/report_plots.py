"""The report's figures as PNG bytes (matplotlib's Agg backend, no display needed).

Every figure is sized for a page about 1000 px wide (the page scales images down, never up), so nothing is
cut off.  The paper's Nexus 4 numbers appear only as savings (%) beside this run's savings, never on an
absolute axis (271 mJ beside a virtual lab's 2 mJ would flatten the run to zero).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.tables import PAPER_NEXUS4

PHASE_COLOURS = {"idle": "#d9d9d9", "sync": "#f4a582", "inference": "#92c5de", "warmup": "#fddbc7"}

#: Width of every figure in inches at :data:`DPI`: 9.5 in x 100 dpi = 950 px, inside the page's 1000 px column.
FIG_W_IN = 9.5
DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox "tight": the size stays the one asked for
    _plt().close(fig)
    return buf.getvalue()


def _col(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def plot_vs_flops(rows: Sequence[dict], device: str, virtual: bool, measures_energy: bool,
                  paper_ref: bool) -> bytes:
    """Per inference time (and energy) and their savings against FLOPs pruned, as a 2 x 2 (or 1 x 2) grid.

    Absolute panels show this run only; savings panels add the paper's Nexus 4 savings when ``paper_ref``.
    Error bars are the 95% CI half-widths (``<key>_ci``), savings CIs when the rows carry them.
    """
    plt = _plt()
    rows = sorted(rows, key=lambda r: r["flops_pruned_pct"])
    x = _col(rows, "flops_pruned_pct")
    metrics = [("time_ms", "time_saved_pct", "time per inference (ms)", "time saved (%)")]
    if measures_energy:
        metrics.insert(0, ("energy_mj", "energy_saved_pct", "energy per inference (mJ)", "energy saved (%)"))
    h = 3.0 * len(metrics) + 0.3
    fig, axes = plt.subplots(len(metrics), 2, figsize=(FIG_W_IN, h), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / h, top=1 - 0.4 / h, wspace=0.25, hspace=0.35)
    run_label = "this run" + (" (virtual lab)" if virtual else "")
    paper = sorted(PAPER_NEXUS4.values(), key=lambda p: p["flops_pruned_pct"])
    for (key, saved, label, saved_label), (ax_abs, ax_sav) in zip(metrics, axes, strict=True):
        ax_abs.errorbar(x, _col(rows, key), yerr=_col(rows, key + "_ci"), marker="o", capsize=3, label=run_label)
        ax_abs.set_ylabel(label)
        ax_sav.errorbar(x, _col(rows, saved), yerr=_col(rows, saved + "_ci"), marker="o", capsize=3, label=run_label)
        if paper_ref:
            ax_sav.plot([p["flops_pruned_pct"] for p in paper], [p[saved] for p in paper], "k--", marker="x",
                        label="paper, Nexus 4 (savings only)")
        ax_sav.set_ylabel(saved_label)
        for ax in (ax_abs, ax_sav):
            ax.set_xlabel("FLOPs pruned (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{device}{' — virtual lab' if virtual else ''}", fontsize=10)
    return _png(fig)


def plot_trace(arrays: dict[str, np.ndarray], title: str) -> bytes:
    """Power over one window with idle, sync marks and inference phases shaded."""
    plt = _plt()
    t = np.asarray(arrays["t_s"], dtype=float)
    p = np.asarray(arrays["power_w"], dtype=float)
    step = max(1, len(t) // 20000)  # plot at most ~20k points
    fig, ax = plt.subplots(figsize=(FIG_W_IN, 3.0))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.9)
    ax.plot(t[::step], p[::step], lw=0.6, color="#2166ac")
    seen = _shade_phases(ax, arrays, with_labels=True)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("power (W)")
    ax.set_title(title, fontsize=10)
    if seen:
        ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _shade_phases(ax, arrays: dict[str, np.ndarray], with_labels: bool) -> set[str]:
    seen: set[str] = set()
    names = arrays.get("phase_name", np.zeros(0, dtype="<U1"))
    for a, b, name in zip(arrays.get("phase_start_s", []), arrays.get("phase_end_s", []), names, strict=False):
        name = str(name)
        ax.axvspan(a, b, color=PHASE_COLOURS.get(name, "#eeeeee"), alpha=0.6,
                   label=None if (name in seen or not with_labels) else name, lw=0)
        seen.add(name)
    return seen


def plot_trace_grid(traces: Sequence[tuple[str, dict[str, np.ndarray]]], cols: int = 4) -> bytes:
    """Small multiples: one thumbnail per window (``(title, arrays)``), one power scale for all, phases shaded.

    Thumbnails carry no ticks (the scale is in the figure's label): tick layout is most of matplotlib's cost
    and a run has dozens of windows.
    """
    plt = _plt()
    n = len(traces)
    rows = max(1, math.ceil(n / cols))
    top = max((float(np.nanmax(a["power_w"])) for _, a in traces if len(a["power_w"])), default=1.0)
    top = top * 1.05 if math.isfinite(top) and top > 0 else 1.0
    h = 1.25 * rows + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(FIG_W_IN, h), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.3 / h, top=1 - 0.2 / h, wspace=0.06, hspace=0.32)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        title, arrays = traces[i]
        t = np.asarray(arrays["t_s"], dtype=float)
        p = np.asarray(arrays["power_w"], dtype=float)
        step = max(1, len(t) // 600)
        ax.plot(t[::step], p[::step], lw=0.5, color="#2166ac")
        _shade_phases(ax, arrays, with_labels=False)
        ax.set_ylim(0.0, top)
        if len(t):
            ax.set_xlim(float(t[0]), float(t[-1]))
        ax.set_title(title, fontsize=7, pad=2)
    fig.text(0.5, 0.08 / h, f"each panel: one window over its own time span; power 0 to {top:.2f} W on every panel",
             ha="center", fontsize=8)
    return _png(fig)


def plot_drift(series: dict[str, Any]) -> bytes:
    """Per-round values relative to each model's median (%), so slow drift shows on one axis for all models.

    ``series``: ``{"time_ms": {model: [(round, value), ...]}, "energy_mj": {...} (optional),
    "idle_power_w": [(seq, round, watts), ...], "temperature_c": [(seq, round, celsius), ...]}``.
    """
    plt = _plt()
    panels: list[tuple[str, Any]] = [("time per inference, each model as % of its median", series["time_ms"])]
    if series.get("energy_mj"):
        panels.append(("energy per inference, each model as % of its median", series["energy_mj"]))
    extra = [(k, lab) for k, lab in (("idle_power_w", "idle power (W)"), ("temperature_c", "temperature (°C)"))
             if series.get(k)]
    n = len(panels) + len(extra)
    from matplotlib.ticker import MaxNLocator

    h = 2.4 * n + 0.2
    fig, axes = plt.subplots(n, 1, figsize=(FIG_W_IN, h), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / h, top=1 - 0.3 / h, hspace=0.6)
    axes = axes[:, 0]
    for ax, (label, by_model) in zip(axes, panels, strict=False):
        for model, pts in sorted(by_model.items(), key=lambda kv: _level(kv[0])):
            r = np.array([p[0] for p in pts], dtype=float)
            v = np.array([p[1] for p in pts], dtype=float)
            ok = np.isfinite(v)
            if not ok.any():
                continue
            med = float(np.median(v[ok]))
            if med == 0:
                continue
            ax.plot(r[ok] + 1, v[ok] / med * 100.0, marker="o", ms=3, lw=1, label=model)
        ax.axhline(100.0, color="k", lw=0.6, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("% of median", fontsize=8)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=8, loc="upper left")
    for ax, (key, label) in zip(axes[len(panels):], extra, strict=True):
        pts = series[key]
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker=".", lw=0.8, color="#555555")
        ax.set_title(label + " by window", fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("window (schedule order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return _png(fig)


def _level(model_key: str) -> int:
    try:
        return int(model_key.lstrip("L"))
    except ValueError:
        return 10**6


def plot_pareto(rows: Sequence[dict], measures_energy: bool) -> bytes | None:
    """Accuracy against energy (or time) per inference; None when no accuracy is known."""
    pts = [r for r in rows if r.get("accuracy_pct") is not None]
    if not pts:
        return None
    plt = _plt()
    key = "energy_mj" if measures_energy else "time_ms"
    x = _col(pts, key)
    y = np.array([r["accuracy_pct"] for r in pts], dtype=float)
    order = np.argsort(x)
    best = np.maximum.accumulate(y[order])
    front = order[y[order] >= best]  # non-dominated: no cheaper model is at least as accurate
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.96)
    ax.scatter(x, y)
    for xi, yi, r in zip(x, y, pts, strict=True):
        ax.annotate(f"{r['level']}%", (xi, yi), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.step(x[front], y[front], where="post", color="k", lw=0.8, label="Pareto front")
    ax.set_xlabel("energy per inference (mJ)" if measures_energy else "time per inference (ms)")
    ax.set_ylabel("accuracy on target classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)

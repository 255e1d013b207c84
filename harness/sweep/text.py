"""Table 2 as text: Markdown tables (one method, beside the paper, methods side by side) and the wide CSV."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.sweep.paper import PAPER_LEVEL_FLOPS_PCT, PaperTable
from harness.sweep.tables import MethodTable, SweepResult
from harness.verdict import mean_ci_along


def fmt(mean: float, ci: float, digits: int = 1) -> str:
    """``mean ± ci`` (just the mean without a CI; a dash without a mean)."""
    if mean is None or not np.isfinite(mean):
        return "–"
    if ci is None or not np.isfinite(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def num(v: Any, digits: int = 3) -> float | None:
    """A JSON number: rounded, None where not finite."""
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def level_label(level: float) -> str:
    return f"{level:g}"


def table2_markdown(t: MethodTable) -> str:
    """Table 2 layout: one row per subset size, levels from the most pruned, then the None column."""
    c = t.cells()
    lf = t.level_flops_pct()
    order = list(range(len(t.levels)))[::-1]
    head = ["classes"] + [f"{lf[i]:.1f}% FLOPs (L{level_label(t.levels[i])})" for i in order] + ["None"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for si, size in enumerate(t.sizes):
        row = [str(size)] + [fmt(c["mean"][si, i], c["ci"][si, i]) for i in order]
        row.append(fmt(c["none_mean"][si], c["none_ci"][si]))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("FLOPs pruned % per cell (mean over subsets):")
    lines.append("")
    head2 = ["classes"] + [f"L{level_label(t.levels[i])}" for i in order]
    lines += ["| " + " | ".join(head2) + " |", "|" + "---:|" * len(head2)]
    for si, size in enumerate(t.sizes):
        row = [str(size)] + [("–" if not np.isfinite(c["flops_pruned_pct"][si, i])
                              else f"{c['flops_pruned_pct'][si, i]:.2f}") for i in order]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def table2_csv(t: MethodTable) -> str:
    """Wide CSV in the paper's layout: ``classes``, per level (most pruned first) ``L<l>_mean,L<l>_ci,
    L<l>_flops_pruned_pct``, then ``none_mean,none_ci`` (accuracy in percent, CI = 95% half-width)."""
    c = t.cells()
    order = list(range(len(t.levels)))[::-1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["classes"]
    for i in order:
        lab = level_label(t.levels[i])
        head += [f"L{lab}_mean", f"L{lab}_ci", f"L{lab}_flops_pruned_pct"]
    w.writerow(head + ["none_mean", "none_ci"])

    def f(v: float, d: int = 2) -> str:
        return "" if not np.isfinite(v) else f"{v:.{d}f}"

    for si, size in enumerate(t.sizes):
        row = [str(size)]
        for i in order:
            row += [f(c["mean"][si, i]), f(c["ci"][si, i]), f(c["flops_pruned_pct"][si, i], 3)]
        w.writerow(row + [f(c["none_mean"][si]), f(c["none_ci"][si])])
    return buf.getvalue()


def compare_paper_markdown(t: MethodTable, paper: PaperTable) -> str:
    """Our cells beside the paper's: ``ours ± ci / paper ± ci (Δ)`` per cell, levels most pruned first."""
    c = t.cells()
    order = list(range(len(t.levels)))[::-1]
    head = ["classes"] + [f"L{level_label(t.levels[i])} ({PAPER_LEVEL_FLOPS_PCT.get(t.levels[i], math.nan):.1f}% "
                          "paper FLOPs)" for i in order] + ["None"]
    lines = [f"Ours ({t.method}) / paper, accuracy % (mean ± 95% CI half-width), Δ = ours − paper", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]

    def cell(m: float, ci: float, pm: float, pc: float) -> str:
        ours = fmt(m, ci)
        if not np.isfinite(pm):
            return f"{ours} / –"
        delta = "" if not np.isfinite(m) else f" ({m - pm:+.1f})"
        return f"{ours} / {fmt(pm, pc)}{delta}"

    for si, size in enumerate(t.sizes):
        prow = paper.get(size, {})
        row = [str(size)]
        for i in order:
            pm, pc = prow.get(float(t.levels[i]), (math.nan, math.nan))
            row.append(cell(c["mean"][si, i], c["ci"][si, i], pm, pc))
        pm, pc = prow.get(0.0, (math.nan, math.nan))
        row.append(cell(c["none_mean"][si], c["none_ci"][si], pm, pc))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def methods_markdown(tables: Sequence[MethodTable]) -> str:
    """Every method's mean per cell, and each later method's paired difference to the first (mean ± CI)."""
    first = tables[0]
    order = list(range(len(first.levels)))[::-1]
    head = ["classes", "method"] + [f"L{level_label(first.levels[i])}" for i in order] + ["None"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for si, size in enumerate(first.sizes):
        for t in tables:
            c = t.cells()
            row = [str(size), t.method] + [fmt(c["mean"][si, i], c["ci"][si, i]) for i in order]
            row.append(fmt(c["none_mean"][si], c["none_ci"][si]))
            lines.append("| " + " | ".join(row) + " |")
        for t in tables[1:]:
            dm, dc, _ = mean_ci_along(t.acc_pct[si] - first.acc_pct[si])
            row = [str(size), f"{t.method} − {first.method}"] + [
                ("–" if not np.isfinite(dm[i]) else f"{dm[i]:+.1f}" + ("" if not np.isfinite(dc[i])
                                                                        else f" ± {dc[i]:.1f}")) for i in order]
            lines.append("| " + " | ".join(row + [""]) + " |")
    return "\n".join(lines) + "\n"


def footer(res: SweepResult, t: MethodTable) -> str:
    """The lines under a method's Table 2: build time, what the cells average over, wall time, notes."""
    o = res.options
    per = "all" if o.per_class is None else str(o.per_class)
    build = (f"{np.nanmean(t.build_ms):.0f} ms" if np.isfinite(t.build_ms).any() else "–")
    return (f"\nMean build time per specialist ({t.method}): {build}.\n"
            f"\nMean ± 95% CI half-width (Student t) over {o.subsets} random subsets per size (seed {o.seed}); "
            f"test images per class: {per}{' (bit-exact only)' if o.exact_only else ''}; "
            f"{res.data.get('images', '?')} images.  Wall time {res.wall_s:.1f} s "
            f"({res.jobs_run} jobs run, {res.jobs_resumed} resumed).\n"
            + "".join(f"\nNote: {n}\n" for n in res.notes))

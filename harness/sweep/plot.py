"""Table 2 as a picture: accuracy against FLOPs pruned, one line per subset size."""

from __future__ import annotations

import io

import numpy as np

from harness.sweep.tables import MethodTable


def plot_png(t: MethodTable) -> bytes:
    """Accuracy against FLOPs pruned: one line per subset size (the None column at its FLOPs), CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = t.cells()
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    cmap = plt.get_cmap("viridis")
    for si, size in enumerate(t.sizes):
        x = np.concatenate([[0.0], c["flops_pruned_pct"][si]])
        y = np.concatenate([[c["none_mean"][si]], c["mean"][si]])
        e = np.nan_to_num(np.concatenate([[c["none_ci"][si]], c["ci"][si]]), nan=0.0)
        ok = np.isfinite(x) & np.isfinite(y)
        color = cmap(si / max(len(t.sizes) - 1, 1))
        ax.errorbar(x[ok], y[ok], yerr=e[ok], marker="o", ms=3, capsize=2, lw=1.2, color=color,
                    label=f"{size} classes")
    means = np.concatenate([c["none_mean"].ravel(), c["mean"].ravel()])
    lo = float(np.nanmin(means)) if np.isfinite(means).any() else 0.0
    ax.set_ylim(max(0.0, lo - 10.0), 101.0)  # accuracy is a percentage: CI bars beyond it are clipped
    ax.set_xlabel("FLOPs pruned (%)")
    ax.set_ylabel("accuracy on the target classes' test images (%)")
    ax.set_title(f"Specialist accuracy vs FLOPs pruned — method {t.method}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

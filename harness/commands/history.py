"""``harness history --device D``: a metric over runs on one device, with change points and a plot.

The series of per-run means over the runs of one device fingerprint (a device name picks the fingerprint of
its latest run), change points marked by step detection, and a PNG plot against the runs' dates, with 95% CI
error bars and the commit each run measured.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from harness.cliutil import add_command, add_json_flag, add_output_flag, add_refused_flag, print_json
from harness.commands.run import add_db_flag
from harness.errors import InputError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "history", run,
                    "a metric over runs on one device, with change points (step detection) and a plot", __doc__)
    p.add_argument("--device", required=True, help="device name (as given to harness run) or fingerprint")
    p.add_argument("--metric", choices=("energy", "time"), default=None,
                   help="energy (mJ per inference) or time (ms per inference); default energy when measured")
    p.add_argument("--model-key", dest="model", action="append", default=[], metavar="KEY",
                   help="model key (L0 base, L30...) or level; repeat; default all")
    add_refused_flag(p, "--model", "is --model-key here (a model key such as L30); --model names a base model "
                                   "file in 'harness run'")
    add_output_flag(p, "plot path (default <db dir>/history-<fp>-<metric>.png)", dest="plot", old=("--plot",),
                    default=None, metavar="PNG")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    add_db_flag(p)
    add_json_flag(p)


def history(st, device: str, metric: str | None, model_keys: list[str]) -> dict:
    """Series per model over the runs of one fingerprint, with change points (JSON-ready)."""
    from harness.changepoints import detect_steps
    from harness.tables import model_rows

    runs = [s for s in st.list_runs(device)]
    if not runs:
        known = sorted({s.run.device for s in st.list_runs()})
        raise InputError(f"no runs for device {device!r}; devices in the store: {', '.join(known) or 'none'}")
    fp = runs[-1].run.device_fingerprint
    others = sorted({s.run.device_fingerprint for s in runs} - {fp})
    runs = [s for s in runs if s.run.device_fingerprint == fp]
    if metric is None:
        metric = "energy" if all(s.run.measures_energy for s in runs) else "time"
    col = "energy_mj" if metric == "energy" else "time_ms"
    if metric == "energy" and not any(s.run.measures_energy for s in runs):
        raise InputError(f"no run on {device!r} measured energy; use --metric time")
    wanted = {k if k.startswith("L") else f"L{k}" for k in model_keys}
    series: dict[str, dict] = {}
    for s in runs:
        for row in model_rows(st.models(s.run.run_id), st.windows(s.run.run_id), s.run.measures_energy):
            if wanted and row["model"] not in wanted:
                continue
            ser = series.setdefault(row["model"], {"model": row["model"], "level": row["level"], "points": []})
            v = row[col]
            ser["points"].append({"run_id": s.run.run_id, "created_utc": s.run.created_utc,
                                  "value": v if v is not None and math.isfinite(v) else None,
                                  "ci": row[col + "_ci"], "code_version": s.run.code_version,
                                  "commit": commit_label(s.run.code_version)})
    if wanted and not series:
        raise InputError(f"no model {', '.join(sorted(wanted))} in the runs of {device!r}")
    for ser in series.values():
        vals = [math.nan if p["value"] is None else p["value"] for p in ser["points"]]
        ser["steps"] = [{"index": st_.index, "run_id": ser["points"][st_.index]["run_id"], "before": st_.before,
                         "after": st_.after, "change_pct": st_.change_pct} for st_ in detect_steps(vals)]
    return {"device": device, "device_fingerprint": fp, "other_fingerprints": others, "metric": metric,
            "unit": "mJ" if metric == "energy" else "ms", "runs": len(runs),
            "series": sorted(series.values(), key=lambda s: s["level"])}


def commit_label(code_version: str) -> str:
    """The short commit of a stored code version (``harness 0.1.0 3dd395f6b13d`` -> ``3dd395f``), else the version."""
    parts = code_version.split()
    if len(parts) >= 3:
        return parts[-1][:7]
    return parts[-1] if parts else "?"


def _when(utc: str):
    import datetime as dt

    return dt.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def plot_history(res: dict) -> bytes:
    """Per-run means with 95% CI error bars against the run's date, commit labels, change points dotted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    fig, ax = plt.subplots(figsize=(9, 4.4))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.22, top=0.9)
    commits: dict = {}
    for ser in res["series"]:
        pts = ser["points"]
        x = [_when(p["created_utc"]) for p in pts]
        y = [math.nan if p["value"] is None else p["value"] for p in pts]
        e = [math.nan if p["ci"] is None or not math.isfinite(p["ci"]) else p["ci"] for p in pts]
        bars = ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=3, lw=1, label=ser["model"])
        for s in ser["steps"]:
            i = s["index"]
            mid = x[i - 1] + (x[i] - x[i - 1]) / 2 if i > 0 else x[i]
            ax.axvline(mid, color=bars.lines[0].get_color(), ls=":", lw=1)
        for xi, p in zip(x, pts, strict=True):
            commits.setdefault(xi, commit_label(p["code_version"]))
    # one commit label per run, below the plot area; a label is written only where the commit changes
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    last = None
    for xi in sorted(commits):
        if commits[xi] != last:
            ax.text(xi, -0.13, commits[xi], transform=trans, rotation=30, ha="right", va="top", fontsize=7,
                    color="#555555")
            ax.plot([xi], [0.0], transform=trans, marker="|", color="#555555", ms=6, clip_on=False)
            last = commits[xi]
    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_ylabel(f"{res['metric']} per inference ({res['unit']})")
    ax.set_title(f"{res['device']} ({res['device_fingerprint']}): mean ± 95% CI per run; dotted = change point; "
                 f"grey = commit", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def run(args) -> int:
    from harness.cliutil import write_output
    from harness.store import Store

    with Store(args.db, readonly=True) as st:
        res = history(st, args.device, args.metric, args.model)
        work_dir = st.work_dir
    if not args.no_plot:
        path = Path(args.plot) if args.plot else work_dir / (
            f"history-{res['device_fingerprint']}-{res['metric']}.png")
        write_output(path, plot_history(res), "-o")
        res["plot"] = str(path)
    if args.json:
        print_json(res)
        return 0
    print(f"{res['device']} ({res['device_fingerprint']}), {res['metric']} per inference ({res['unit']}), "
          f"{res['runs']} runs")
    for ser in res["series"]:
        vals = " ".join("-" if p["value"] is None else f"{p['value']:.3f}" for p in ser["points"])
        print(f"  {ser['model']:>5}: {vals}")
        for s in ser["steps"]:
            print(f"         change at run {s['run_id']}: {s['before']:.3f} -> {s['after']:.3f} "
                  f"({s['change_pct']:+.1f}%)")
    if res.get("plot"):
        print(f"plot: {res['plot']}")
    return 0

"""``harness energy``: energy of a window of a power trace, idle-subtracted, per inference, with 95% CIs.

The analysis is :func:`harness.window.analyse_window`, the one path ``harness run`` also takes.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from harness.cliutil import add_json_flag, print_json
from harness.errors import UsageError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "energy",
        help="energy of a window of a power trace (Monsoon CSV or .ptrc), idle-subtracted, with 95%% CIs",
        description="Energy (J), mean power (W), duration, samples and dropped samples of a window of a trace; "
        "with --idle windows the idle power (mean of the bracketing idle windows) and the net energy; with "
        "--inferences the net energy per inference.  Times are seconds from the first sample.",
    )
    p.add_argument("trace", help="trace file: our .ptrc, or a Monsoon CSV (sampleEngine or PowerTool)")
    p.add_argument("--window", required=True, metavar="START:END", help="the measured window, seconds")
    p.add_argument("--idle", action="append", default=[], metavar="START:END",
                   help="an idle window (repeat; the ones just before and after the window are used)")
    p.add_argument("--inferences", type=int, default=None, metavar="N", help="inferences run in the window")
    p.add_argument("--rate-hz", type=float, default=None, help="sample rate of a CSV (default 5000)")
    p.add_argument("--time-unit", choices=("s", "ms"), default=None,
                   help="force the unit of a CSV's time column (default: detected from the spacing)")
    p.add_argument("--sync", action="store_true",
                   help="snap the window to the sync markers found within --sync-search-s of its ends")
    p.add_argument("--sync-search-s", type=float, default=1.0, help="search half-width for --sync (s)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _ci(pair) -> list[float]:
    return [float(pair[0]), float(pair[1])]


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the command reports, as one dict (raises InputError/DataError on bad input)."""
    from device.tracefile import open_trace
    from harness import energy as E
    from harness.window import WindowLimits, WindowMarks, analyse_window

    win = E.parse_window(args.window, "--window")
    idles = [E.parse_window(t, "--idle") for t in args.idle]
    if args.inferences is not None and args.inferences <= 0:
        raise UsageError(f"--inferences must be a positive whole number, not {args.inferences}")
    if args.inferences and not idles:
        raise UsageError("--inferences needs at least one --idle window (net energy = window - idle baseline)")
    if args.rate_hz is not None and not (math.isfinite(args.rate_hz) and args.rate_hz > 0):
        raise UsageError(f"--rate-hz must be positive, not {args.rate_hz}")
    src = open_trace(args.trace, args.rate_hz, args.time_unit)
    rate = src.rate_hz
    first = src.first_index
    out: dict[str, Any] = {"trace": str(args.trace), "kind": src.kind, "rate_hz": rate}
    if getattr(src, "time_mode", None):
        out["time_mode"] = src.time_mode
    if src.samples == 0:
        raise UsageError(f"{args.trace}: the trace holds no samples")
    trace_end_s = (src.end_index - first) / rate
    trailer = getattr(src, "trailer", None) or {}
    ended_early = (not src.complete) or not str(trailer.get("end_reason", "stopped")).startswith(
        ("stopped", "closed", "converted", "bench"))
    out["trace_complete"] = bool(src.complete)
    if trailer.get("end_reason"):
        out["trace_end_reason"] = trailer["end_reason"]
    for name, (a, b) in [("--window", win)] + [("--idle", w) for w in idles]:
        if a >= trace_end_s or (b > trace_end_s + 1e-9 and not ended_early):
            raise UsageError(f"{name} {a:g}:{b:g} is outside the trace (0 to {trace_end_s:.4f} s)")
        # a monitor that stopped mid-window: the window is analysed and marked invalid, not refused
    marks = WindowMarks(win[0], win[1], kind="window", sync=bool(args.sync), n_inferences=args.inferences or 0)
    res = analyse_window(src, marks, WindowLimits(sync_search_s=args.sync_search_s), idles)
    if res.markers:
        out["sync"] = {
            k: {"sync_point_s": m.sync_point_s, "sync_error_s": m.sync_error_s, "score": m.score,
                "busy_scale": m.busy_scale}
            for k, m in res.markers.items()
        }
    win = res.window_s
    w = res.stats
    out.update(
        window_s=[win[0], win[1]],
        energy_j=w.energy_j, energy_j_ci=_ci(w.energy_ci_j),
        mean_power_w=w.mean_power_w, mean_power_w_ci=_ci(w.mean_power_ci_w),
        duration_s=w.duration_s, samples=w.samples, expected_samples=w.expected_samples, dropped=w.dropped,
        trace_samples=src.samples, trace_dropped=src.dropped_samples,
        mean_voltage_v=w.mean_voltage_v, voltage_drift_frac=w.voltage_drift_frac, sync_mode=res.sync,
    )
    if res.net is not None:
        ne = res.net
        out.update(
            idle_power_w=ne.idle_power_w, idle_power_w_ci=_ci(ne.idle_power_ci_w),
            idle_windows_s=[list(idles[i]) for i in ne.idle_windows],
            net_energy_j=ne.net_energy_j, net_energy_j_ci=_ci(ne.net_energy_ci_j),
        )
        if args.inferences:
            n = args.inferences
            out.update(
                inferences=n, net_energy_per_inference_j=res.net_energy_per_inference_j,
                net_energy_per_inference_j_ci=[v / n for v in ne.net_energy_ci_j],
            )
    valid = res.valid
    reasons = list(res.reasons)
    if ended_early and win[1] > trace_end_s:
        why = trailer.get("end_reason") or "the sampler did not close the file"
        reasons.append(f"the trace ends at {trace_end_s:.4f} s, inside the window ({why})")
        valid = False
    out["valid"] = valid
    out["reasons"] = reasons
    return out


def run(args: argparse.Namespace) -> int:
    out = analyse(args)
    if args.json:
        print_json(out)
    else:
        rows = [("energy_j", "J"), ("mean_power_w", "W"), ("idle_power_w", "W"), ("net_energy_j", "J"),
                ("net_energy_per_inference_j", "J")]
        print(f"trace {out['trace']} ({out['kind']}, {out['rate_hz']:g} Hz)")
        print(f"window {out['window_s'][0]:.6f}..{out['window_s'][1]:.6f} s  duration {out['duration_s']:.6f} s  "
              f"samples {out['samples']}/{out['expected_samples']}  dropped {out['dropped']}")
        for key, unit in rows:
            if key in out:
                lo, hi = out[f"{key}_ci"]
                print(f"  {key:28s} {out[key]:.6g} {unit}  (95% CI {lo:.6g} .. {hi:.6g})")
        for k, m in out.get("sync", {}).items():
            print(f"  sync {k}: {m['sync_point_s']:.6f} s, error vs given {1e3 * m['sync_error_s']:+.3f} ms, "
                  f"score {m['score']:.3f}")
        print("  valid" if out["valid"] else "  INVALID: " + "; ".join(out["reasons"]))
    if not out["valid"]:
        log.warning("window is invalid: %s", "; ".join(out["reasons"]))
        return 1
    return 0

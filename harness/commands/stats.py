"""harness stats: per-class calibration statistics of a base model, saved as one versioned artifact."""

from __future__ import annotations

import logging

from harness.cliutil import add_json_flag, bounded_int, check_output_file, print_json, write_output

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("stats", help="compute the calibration statistics artifact of a base model")
    p.add_argument("--model", metavar="MODEL", help="base model: NIN weights .npz (default: the shipped NIN), a zoo "
                   "name (resnet20, ...), package.module:factory or a .pt2 program")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 directory (default: $HARNESS_DATA or ../shared/data/cifar10)")
    p.add_argument("--per-class", type=bounded_int(1, 100_000), default=500, metavar="N", help="calibration images per class (default 500)")
    p.add_argument("--impact", choices=("grad", "fd", "both"), default="grad",
                   help="impacts by autograd (fast), finite differences (slow), or both (default grad)")
    p.add_argument("--fd-per-class", type=bounded_int(1, 100_000), default=10, metavar="N",
                   help="images per class for finite differences (each costs one partial forward per channel)")
    p.add_argument("--shift-per-class", type=bounded_int(1, 100_000), default=100, metavar="N",
                   help="images per class for the spatial cross-correlations (default 100)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="artifact path (.npz)")
    from harness.graphargs import add_graph_args

    add_graph_args(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from harness.cliutil import progress
    from harness.errors import UsageError
    from harness.graphargs import graph_stats, is_graph_model, nin_branch
    from specialist.data import load_split
    from specialist.model import load_weights
    from specialist.stats import compute_stats, stats_to_bytes

    if is_graph_model(args):
        out = graph_stats(args)
        if args.json:
            print_json(out)
        else:
            print(f"statistics of {out['images']} images ({out['consumers']} consumers, {out['groups']} groups) "
                  f"written to {args.output} ({out['bytes'] / 1e6:.1f} MB) in {out['seconds']:.1f} s")
        return 0
    nin_branch(args)
    for flag in ("per_class", "fd_per_class", "shift_per_class"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    check_output_file(args.output)  # before hours of statistics
    w = load_weights(args.model)
    calib = load_split("calib", args.data).select(range(10), per_class=args.per_class)
    bars: dict = {}

    def cb(done, total, phase):
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = iter(progress(range(total), total=total, desc=phase, unit="img"))
            bars[phase + "#"] = 0
        for _ in range(done - bars[phase + "#"]):
            next(bar, None)
        bars[phase + "#"] = done

    t0 = time.perf_counter()
    st = compute_stats(w, calib.x, calib.y, impact=args.impact, fd_per_class=args.fd_per_class,
                       shift_per_class=args.shift_per_class, progress=cb)
    blob = stats_to_bytes(st, {"per_class": args.per_class, "data": calib.source})
    write_output(args.output, blob)
    out = {"output": args.output, "model_hash": st.model_hash, "images": int(st.counts.sum()),
           "impact": args.impact, "seconds": round(time.perf_counter() - t0, 2), "bytes": len(blob)}
    if args.json:
        print_json(out)
    else:
        print(f"statistics of {out['images']} images ({args.impact} impacts) written to {args.output} "
              f"({len(blob) / 1e6:.1f} MB) in {out['seconds']:.1f} s")
    return 0

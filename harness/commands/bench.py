"""``harness bench``: time one ``.pte`` on this machine through the runner contract.

Run FILE.pte with the ExecuTorch runtime: W warm-up inferences, then N timed ones, on the input file given
(raw little-endian float32, normalised NCHW, as executor_runner --inputs reads it; or .npy) or on all ones.  A
manifest next to the file must match it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cliutil import add_command, add_json_flag, bounded_int, max_threads, print_json


def register(sub) -> None:
    p = add_command(sub, "bench", run,
                    "time one ExecuTorch program on this machine (mean, trimmed mean, p50, p90, 95%% CI)", __doc__)
    p.add_argument("model", metavar="FILE.pte", help="ExecuTorch program")
    p.add_argument("--iterations", type=bounded_int(1, 1_000_000), default=200, metavar="N", help="timed inferences (default 200)")
    p.add_argument("--warmup", type=bounded_int(0, 1_000_000), default=20, metavar="W", help="warm-up inferences (default 20)")
    p.add_argument("--threads", type=bounded_int(1, max_threads()), default=1, metavar="T", help="runtime threads (default 1)")
    p.add_argument("--input", metavar="FILE", help="input tensor file (default: all ones, as executor_runner)")
    p.add_argument("--no-manifest", action="store_true", help="do not look for FILE.manifest.json")
    add_json_flag(p)


def run(args) -> int:
    from device.runner import RunSpec, check_pte_file, run_host
    from harness.latency import summarize
    from specialist.manifest import check_manifest, manifest_path_for

    path = check_pte_file(args.model)
    manifest = None
    if not args.no_manifest and manifest_path_for(path).is_file():
        manifest = check_manifest(path)
    spec = RunSpec(model_path=path, iterations=args.iterations, warmup=args.warmup, input_path=args.input,
                   threads=args.threads)
    res = run_host(spec)
    st = summarize(res.latencies_ms)
    out = {
        "model": str(path), "manifest": str(manifest_path_for(path)) if manifest else None,
        "level": manifest.level if manifest else None,
        "flops_pruned_pct": manifest.flops_pruned_pct if manifest else None,
        "backend": manifest.backend if manifest else None,
        "iterations": res.iterations, "warmup": res.warmup, "threads": args.threads,
        "input": args.input or "ones",
        "time_ms": st.trimmed_mean_ms, "time_ms_ci": st.trimmed_mean_ms_ci,
        "time_ms_mean": st.mean_ms, "time_ms_p50": st.p50_ms, "time_ms_p90": st.p90_ms,
        "time_ms_min": st.min_ms, "time_ms_max": st.max_ms, "time_ms_std": st.std_ms, "trim": st.trim,
        "confidence": st.confidence, "total_ms": res.total_ms, "output": res.output.tolist(),
    }
    if args.json:
        print_json(out)
    else:
        print(f"{Path(path).name}: {res.iterations} inferences after {res.warmup} warm-up, {args.threads} thread(s)")
        print(f"  trimmed mean {st.trimmed_mean_ms:.3f} ms ± {st.trimmed_mean_ms_ci:.3f} (95% CI)   "
              f"mean {st.mean_ms:.3f}   p50 {st.p50_ms:.3f}   p90 {st.p90_ms:.3f}   "
              f"min {st.min_ms:.3f}   max {st.max_ms:.3f}")
        sys.stdout.flush()
    return 0

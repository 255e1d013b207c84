"""``harness compare RUN_A RUN_B``: per model and metric, improved / regressed / same / unknown.

For every model in both runs and each metric (time, and energy when both runs measured it), a verdict for
RUN_B against RUN_A: improved, regressed, same, or unknown with how many more repetitions would decide.  Exit
code 1 if anything regressed.
"""

from __future__ import annotations

import sys

from harness.cliutil import add_command, add_json_flag, finite_float, print_json
from harness.commands.run import add_db_flag
from harness.errors import UsageError


def register(subparsers) -> None:
    p = add_command(subparsers, "compare", run,
                    "compare two runs (Mann-Whitney U + minimum effect); exit 1 if anything regressed", __doc__)
    p.add_argument("run_a", help="baseline run")
    p.add_argument("run_b", help="run to judge")
    p.add_argument("--threshold", type=finite_float(0.0, 1000.0), default=2.0, metavar="PCT",
                   help="minimum effect size, percent of the baseline median (default 2)")
    p.add_argument("--alpha", type=finite_float(0.0, 1.0, lo_open=True), default=0.05, help="significance level of the U test (default 0.05)")
    add_db_flag(p)
    add_json_flag(p)


def compare_runs(st, run_a: str, run_b: str, threshold_pct: float, alpha: float) -> dict:
    """The comparison as a JSON-ready dict (see ``harness compare --json``)."""
    from harness.tables import window_values
    from harness.verdict import compare_samples

    ra, rb = st.get_run(run_a), st.get_run(run_b)
    ma = {m.model_key: m for m in st.models(ra.run_id)}
    mb = {m.model_key: m for m in st.models(rb.run_id)}
    wa, wb = st.windows(ra.run_id), st.windows(rb.run_id)
    metrics = ["time_ms"] + (["energy_mj"] if ra.measures_energy and rb.measures_energy else [])
    out = []
    for metric in metrics:
        va, vb = window_values(wa, metric), window_values(wb, metric)
        for key in sorted(set(ma) & set(mb), key=lambda k: ma[k].level_pct):
            v = compare_samples(va.get(key, []), vb.get(key, []), threshold_pct, alpha)
            out.append({"model": key, "level": ma[key].level_pct, "metric": metric, **v.as_dict(),
                        "same_artifact": ma[key].artifact_hash == mb[key].artifact_hash})
    notes = []
    if ra.device_fingerprint != rb.device_fingerprint:
        notes.append(f"different devices: {ra.device} ({ra.device_fingerprint}) vs {rb.device} ({rb.device_fingerprint})")
    only = sorted(set(ma) ^ set(mb))
    if only:
        notes.append(f"models in only one run: {', '.join(only)}")
    return {"run_a": ra.run_id, "run_b": rb.run_id, "threshold_pct": threshold_pct, "alpha": alpha,
            "comparisons": out, "regressed": any(c["verdict"] == "regressed" for c in out), "notes": notes}


def run(args) -> int:
    from harness.store import Store

    if not args.threshold >= 0:
        raise UsageError("--threshold must be a non-negative percent")
    if not 0 < args.alpha < 1:
        raise UsageError("--alpha must be between 0 and 1")
    with Store(args.db, readonly=True) as st:
        res = compare_runs(st, args.run_a, args.run_b, args.threshold, args.alpha)
    if args.json:
        print_json(res)
    else:
        print(f"{res['run_b']} against {res['run_a']} (threshold {args.threshold}%)")
        for c in res["comparisons"]:
            eff = "" if c["effect_pct"] != c["effect_pct"] else f"{c['effect_pct']:+.2f}%"
            print(f"  {c['model']:>5} {c['metric']:9} {c['verdict']:9} {eff:>9}  {c['reason']}")
        for n in res["notes"]:
            print(f"note: {n}", file=sys.stderr)
    return 1 if res["regressed"] else 0

"""``harness compare RUN_A RUN_B``: per model and metric, improved / regressed / same / unknown.

For every model in both runs and each metric (time, and energy when both runs measured it), a verdict for
RUN_B against RUN_A: improved, regressed, same, or unknown with how many more repetitions would decide
(at most 100; beyond that it says the difference is below what the plan can resolve).  Each line also gives
the model's change against the median change of all models ("vs all"): when every model moved together, the
device was faster or slower, not one model.  Two virtual-lab runs (3 or more models in common) are judged on
that relative change, minimum effect 10%; fewer models on the virtual lab: the absolute change, 15%; other
devices: the absolute change, 2% (``harness.compare``; ``--threshold`` overrides the minimum).

Exit codes: 0 nothing regressed, 1 something regressed, 3 the comparison could not be made (a locked or
missing database, an unknown run), 2 bad flags.
"""

from __future__ import annotations

import sys

from harness.cliutil import add_command, add_json_flag, finite_float, one_line, print_json
from harness.commands.run import add_db_flag
from harness.errors import PROJECT_ERRORS, UsageError, exit_code_for


def register(subparsers) -> None:
    p = add_command(subparsers, "compare", run,
                    "compare two runs (Mann-Whitney U + minimum effect); exit 0 same, 1 regressed, 3 error",
                    __doc__)
    p.add_argument("run_a", help="baseline run")
    p.add_argument("run_b", help="run to judge")
    p.add_argument("--threshold", type=finite_float(0.0, 1000.0), default=None, metavar="PCT",
                   help="minimum effect size, percent of the baseline median (default: 10 against the common "
                        "shift for two virtual-lab runs, else 2; docs/run.md)")
    p.add_argument("--alpha", type=finite_float(0.0, 1.0, lo_open=True), default=0.05, help="significance level of the U test (default 0.05)")
    add_db_flag(p)
    add_json_flag(p)


def run(args) -> int:
    """Exit 0 (nothing regressed), 1 (regressed) or, for any error, the code of ``COMMAND_EXIT_CODES['compare']``."""
    try:
        return _run(args)
    except PROJECT_ERRORS as exc:
        print(f"harness: error: {one_line(str(exc))}", file=sys.stderr)
        return exit_code_for(exc, command="compare")


def _run(args) -> int:
    from harness.compare import compare_runs
    from harness.store import Store

    if args.threshold is not None and not args.threshold >= 0:
        raise UsageError("--threshold must be a non-negative percent")
    if not 0 < args.alpha < 1:
        raise UsageError("--alpha must be between 0 and 1")
    with Store(args.db, readonly=True) as st:
        res = compare_runs(st, args.run_a, args.run_b, args.threshold, args.alpha)
    if args.json:
        print_json(res)
    else:
        why = ", the default" if res["threshold_default"] else ""
        print(f"{res['run_b']} against {res['run_a']} ({res['mode']}, threshold {res['threshold_pct']:g}%{why})")
        print(f"  {'model':>5} {'metric':9} {'verdict':9} {'effect':>9} {'vs all':>9}  reason")
        for c in res["comparisons"]:
            eff = "" if c["effect_pct"] != c["effect_pct"] else f"{c['effect_pct']:+.2f}%"
            rel = "" if c["effect_vs_common_pct"] is None else f"{c['effect_vs_common_pct']:+.2f}%"
            print(f"  {c['model']:>5} {c['metric']:9} {c['verdict']:9} {eff:>9} {rel:>9}  {c['reason']}")
        print(", ".join(f"{n} {k}" for k, n in res["counts"].items()))
        for n in res["notes"]:
            print(f"note: {n}", file=sys.stderr)
    return 1 if res["regressed"] else 0

"""``harness profile RUN_ID``: the per-layer profile of a run's models (ETDump times beside FLOPs).

Per model, each layer's FLOPs and time (the median of its operators over the profiled executions) beside the
full model's, with the speedup (full time / this time) and the FLOPs saved: which layers the pruning sped up.
``harness run`` profiles each model once after its measured rounds (docs/run.md, "Per-layer profile").
"""

from __future__ import annotations

from harness.cliutil import add_command, add_json_flag, print_json
from harness.commands.run import add_db_flag


def register(subparsers) -> None:
    p = add_command(subparsers, "profile", run, "per-layer profile of a run (ETDump time beside FLOPs)", __doc__)
    p.add_argument("run_id", help="run id (a unique prefix is enough)")
    p.add_argument("--model", default=None, metavar="KEY", help="one model of the run, e.g. L30 (default: all)")
    add_db_flag(p)
    add_json_flag(p)


def run(args) -> int:
    from harness.profile import format_profile, profile_table_data
    from harness.store import Store, check_db_path

    check_db_path(args.db, must_exist=True)
    with Store(args.db, readonly=True) as st:
        run_id = st.get_run(args.run_id).run_id
    data = profile_table_data(args.db, run_id, args.model)
    if args.json:
        print_json(data)
    else:
        print(format_profile(data))
    return 0

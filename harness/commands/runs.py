"""``harness runs``: list the runs in the results store.

List the runs in the results store.
"""

from __future__ import annotations

from harness.cliutil import add_command, add_json_flag, print_json
from harness.commands.run import add_db_flag


def register(subparsers) -> None:
    p = add_command(subparsers, "runs", run, "list stored runs", __doc__)
    p.add_argument("--device", default=None, help="only runs on this device name or fingerprint")
    add_db_flag(p)
    add_json_flag(p)


def run(args) -> int:
    from harness.store import Store

    with Store(args.db, readonly=True) as st:
        runs = st.list_runs(args.device)
        where = st.where  # a server URL without its password
    items = [{"run_id": s.run.run_id, "created_utc": s.run.created_utc, "device": s.run.device,
              "device_fingerprint": s.run.device_fingerprint, "virtual": s.run.virtual, "status": s.status,
              "models": s.n_models, "valid_windows": s.valid_windows, "invalid_windows": s.invalid_windows}
             for s in runs]
    if args.json:
        print_json({"db": where, "runs": items})
        return 0
    if not items:
        print(f"no runs in {where}")
        return 0
    print(f"{'run':24} {'created (UTC)':20} {'device':16} {'status':12} {'models':>6} {'valid':>6} {'invalid':>7}")
    for it in items:
        dev = it["device"] + ("*" if it["virtual"] else "")
        print(f"{it['run_id']:24} {it['created_utc'][:19]:20} {dev:16} {it['status']:12} {it['models']:>6} "
              f"{it['valid_windows']:>6} {it['invalid_windows']:>7}")
    if any(it["virtual"] for it in items):
        print("* virtual lab")
    return 0

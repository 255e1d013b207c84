"""``harness show RUN_ID``: one run's settings, events, models and table rows.

Show a run: device, plan, events, models, Tables 3/4 rows and window counts.
"""

from __future__ import annotations

import json

from harness.cliutil import add_command, add_json_flag, print_json
from harness.commands.run import add_db_flag


def register(subparsers) -> None:
    p = add_command(subparsers, "show", run, "inspect one run", __doc__)
    p.add_argument("run_id", help="run id (a unique prefix is enough)")
    add_db_flag(p)
    add_json_flag(p)


def run(args) -> int:
    from harness.plan import status_text, target_from_events
    from harness.store import Store
    from harness.tables import device_label, latency_markdown, run_rows, table3_markdown, table4_markdown

    with Store(args.db, readonly=True) as st:
        r = st.get_run(args.run_id)
        events = st.events(r.run_id)
        models = st.models(r.run_id)
        windows = st.windows(r.run_id)
        rows = run_rows(st, r.run_id)
    status = events[-1][0] if events else ""
    target = target_from_events(events)
    if args.json:
        print_json({
            "run_id": r.run_id, "device": r.device, "virtual": r.virtual, "status": status,
            "status_text": status_text(status, target), "target_reached": target["reached"] if target else None,
            "target_misses": target["misses"] if target else [],
            "device_fingerprint": r.device_fingerprint, "fingerprint": json.loads(r.fingerprint_json),
            "instrument": r.instrument, "code_version": r.code_version, "created_utc": r.created_utc,
            "plan": json.loads(r.plan_json), "events": [{"event": e, "detail": d, "t_utc": t} for e, d, t in events],
            "models": [{"model": m.model_key, "level": m.level_pct, "flops": m.flops,
                        "flops_pruned_pct": m.flops_pruned_pct, "model_hash": m.model_hash,
                        "artifact_hash": m.artifact_hash, "accuracy_pct": m.accuracy_pct} for m in models],
            "windows": {"total": len(windows), "invalid": sum(1 for w in windows if not w.valid),
                        "invalid_reasons": sorted({w.reason for w in windows if not w.valid})},
            "rows": rows,
        })
        return 0
    print(f"run {r.run_id}  device {r.device}{' (virtual lab)' if r.virtual else ''}  "
          f"fingerprint {r.device_fingerprint}")
    print(f"instrument {r.instrument}; code {r.code_version}; created {r.created_utc}")
    for e, d, t in events:
        print(f"  {t[:19]}  {e}  {d}")
    print(f"status: {status_text(status, target)}")
    for miss in (target or {}).get("misses", []):
        print(f"  target not reached: {miss}")
    print(f"{len(windows)} windows, {sum(1 for w in windows if not w.valid)} invalid")
    if r.measures_energy:
        print(table3_markdown(rows, device_label(r), r.virtual))
    print(table4_markdown(rows, device_label(r), r.virtual, r.measures_energy))
    print(latency_markdown(rows, device_label(r)))
    return 0

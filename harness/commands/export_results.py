"""``harness export-results``: runs, models, windows and table rows as CSV and Parquet (pandas)."""

from __future__ import annotations

import io
from pathlib import Path

from harness.cliutil import add_json_flag, add_output_flag, print_json
from harness.commands.run import add_db_flag
from harness.errors import UsageError

FORMATS = ("csv", "parquet")


def register(subparsers) -> None:
    p = subparsers.add_parser("export-results", help="export the results store as CSV and Parquet",
                              description="Write runs, models, windows (one row per window, with status and "
                                          "reason) and per-model table rows as CSV and/or Parquet files.")
    p.add_argument("run_ids", nargs="*", help="runs to export (default: all)")
    add_output_flag(p, "output folder (default results/export)", dest="out", old=("--out",),
                    default="results/export", metavar="DIR")
    p.add_argument("--format", default="csv,parquet", help="csv, parquet or both (default csv,parquet)")
    p.add_argument("--traces", action="store_true",
                   help="also write the windows' raw traces (traces/<sha256>.npz), for 'harness import-results'")
    add_db_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def frames(st, run_ids: list[str]) -> dict:
    """pandas DataFrames ``runs``, ``models``, ``events``, ``windows``, ``rows`` for the given runs
    (``harness import-results`` reads runs, models, events and windows back)."""
    from dataclasses import asdict

    import pandas as pd

    from harness.tables import run_rows

    runs, models, events, windows, rows = [], [], [], [], []
    for rid in run_ids:
        r = st.get_run(rid)
        runs.append({**asdict(r), "status": st.run_status(r.run_id)})
        ms = st.models(r.run_id)
        ws = st.windows(r.run_id)
        models += [asdict(m) for m in ms]
        events += [{"run_id": r.run_id, "seq": i, "event": e, "detail": d, "t_utc": t}
                   for i, (e, d, t) in enumerate(st.events(r.run_id))]
        windows += [asdict(w) for w in ws]
        rows += [{"run_id": r.run_id, "device": r.device, "virtual": r.virtual, **row}
                 for row in run_rows(st, r.run_id)]
    return {"runs": pd.DataFrame(runs), "models": pd.DataFrame(models),
            "events": pd.DataFrame(events, columns=["run_id", "seq", "event", "detail", "t_utc"]),
            "windows": pd.DataFrame(windows), "rows": pd.DataFrame(rows)}


def _trace_files(st, windows) -> dict[str, bytes]:
    """The compressed ``.npz`` bytes of every trace the windows refer to, by hash."""
    import numpy as np

    hashes = set()
    for col in ("trace_hash", "latencies_hash"):
        if col in windows:
            hashes |= {h for h in windows[col] if isinstance(h, str) and h}
    out = {}
    for digest in sorted(hashes):
        buf = io.BytesIO()
        np.savez_compressed(buf, **st.traces.get(digest))
        out[digest] = buf.getvalue()
    return out


def run(args) -> int:
    from harness.cliutil import write_output
    from harness.store import Store

    fmts = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"--format: {', '.join(bad) or '(empty)'} not one of {', '.join(FORMATS)}")
    with Store(args.db, readonly=True) as st:
        ids = [st.get_run(r).run_id for r in args.run_ids] if args.run_ids else [
            s.run.run_id for s in st.list_runs()]
        dfs = frames(st, ids)
        traces = _trace_files(st, dfs["windows"]) if getattr(args, "traces", False) else {}
    out = Path(args.out)
    written = []
    for name, df in dfs.items():
        for fmt in fmts:
            path = out / f"{name}.{fmt}"
            if fmt == "csv":
                data = df.to_csv(index=False).encode()
            else:
                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                data = buf.getvalue()
            write_output(path, data, "-o")
            written.append(str(path))
    for digest, data in traces.items():
        write_output(out / "traces" / f"{digest}.npz", data, "--out")
    if args.json:
        print_json({"runs": ids, "files": written, "windows": int(len(dfs["windows"])), "traces": len(traces)})
    else:
        print("\n".join(written))
    return 0

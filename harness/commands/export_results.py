"""``harness export-results``: runs, models, windows and table rows as CSV and Parquet (pandas)."""

from __future__ import annotations

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
    add_db_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def frames(st, run_ids: list[str]) -> dict:
    """pandas DataFrames ``runs``, ``models``, ``windows``, ``rows`` for the given runs."""
    from dataclasses import asdict

    import pandas as pd

    from harness.tables import model_rows

    runs, models, windows, rows = [], [], [], []
    for rid in run_ids:
        r = st.get_run(rid)
        runs.append({**asdict(r), "status": st.run_status(r.run_id)})
        ms = st.models(r.run_id)
        ws = st.windows(r.run_id)
        models += [asdict(m) for m in ms]
        windows += [asdict(w) for w in ws]
        rows += [{"run_id": r.run_id, "device": r.device, "virtual": r.virtual, **row}
                 for row in model_rows(ms, ws, r.measures_energy)]
    return {"runs": pd.DataFrame(runs), "models": pd.DataFrame(models), "windows": pd.DataFrame(windows),
            "rows": pd.DataFrame(rows)}


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
    out = Path(args.out)
    written = []
    import io

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
    if args.json:
        print_json({"runs": ids, "files": written, "windows": int(len(dfs["windows"]))})
    else:
        print("\n".join(written))
    return 0

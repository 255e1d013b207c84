"""``harness import-results DIR``: store runs exported by ``harness export-results`` (the round trip).

Read the runs, models, events and windows that ``harness export-results`` wrote to DIR (Parquet when present,
else CSV) and store them, with their traces when DIR has them (``export-results --traces``), in the results
database given by --db (e.g. a SQLite file into PostgreSQL, or back).  All runs go in one transaction: a run
that is already in the target store is refused and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_type_hints

from harness.cliutil import add_command, add_json_flag, print_json
from harness.commands.run import add_db_flag
from harness.errors import DataError, InputError

TABLES = ("runs", "models", "events", "windows")
EVENT_COLUMNS = ("run_id", "seq", "event", "detail", "t_utc")


def register(subparsers) -> None:
    p = add_command(subparsers, "import-results", run, "store runs exported by export-results", __doc__)
    p.add_argument("folder", metavar="DIR", help="a folder written by 'harness export-results'")
    p.add_argument("run_ids", nargs="*", help="runs to import (default: all in DIR)")
    add_db_flag(p)
    add_json_flag(p)


def _read_table(folder: Path, name: str):
    import pandas as pd

    pq, csv = folder / f"{name}.parquet", folder / f"{name}.csv"
    try:
        if pq.is_file():
            return pd.read_parquet(pq)
        if csv.is_file():  # "" stays "" (text columns); empty numeric cells become NaN, then None
            return pd.read_csv(csv, keep_default_na=False, na_values={}, dtype=str)
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: cannot read {name} ({exc})") from None
    raise InputError(f"{folder}: no {name}.parquet or {name}.csv; give a folder written by 'harness export-results'")


def _value(v: Any, typ: str, where: str) -> Any:
    """One exported cell as the record field of type ``typ`` wants it (NaN and "" are None where allowed)."""
    missing = v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "" and
                                                                          typ != "str")
    if missing:
        if "None" in typ:
            return None
        if typ == "str":
            return ""
        raise DataError(f"{where}: empty, a {typ} is needed")
    try:
        if typ == "bool":
            return v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1")
        if typ.startswith("int"):
            return int(float(v)) if isinstance(v, str) else int(v)
        if typ.startswith("float"):
            return float(v)
        return str(v)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {v!r} is not a {typ}") from None


def _records(df, cls, name: str) -> list:
    hints = {k: str(t).replace("typing.", "") for k, t in get_type_hints(cls).items()}
    cols = [f.name for f in fields(cls) if f.name in df.columns]  # a field an older export lacks gets its default
    missing = [f.name for f in fields(cls) if f.name not in df.columns
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise DataError(f"{name}: columns {', '.join(missing)} missing; not an export of this harness")
    out = []
    for i, row in enumerate(df[cols].to_dict("records")):
        out.append(cls(**{c: _value(row[c], _type_name(hints[c]), f"{name} row {i + 1} {c}") for c in cols}))
    return out


def _type_name(hint: str) -> str:
    """``str``, ``int``, ``float``, ``bool``, or ``float | None`` ... from a type hint's text."""
    return hint.replace("<class '", "").replace("'>", "")


def load_export(folder: str | Path, run_ids: list[str] | None = None) -> list[tuple]:
    """``(run, models, events, windows)`` of each exported run (checked; nothing is written)."""
    from harness.store import ModelRecord, RunRecord, WindowRecord

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the --out folder of 'harness export-results'")
    dfs = {name: _read_table(folder, name) for name in TABLES}
    runs = _records(dfs["runs"], RunRecord, "runs")
    models = _records(dfs["models"], ModelRecord, "models")
    windows = _records(dfs["windows"], WindowRecord, "windows")
    ev = dfs["events"]
    if any(c not in ev.columns for c in EVENT_COLUMNS):
        raise DataError("events: columns missing; not an export of this harness")
    events = sorted(((str(r["run_id"]), int(float(r["seq"])), str(r["event"]), str(r["detail"]), str(r["t_utc"]))
                     for r in ev[list(EVENT_COLUMNS)].to_dict("records")), key=lambda e: (e[0], e[1]))
    wanted = set(run_ids or [r.run_id for r in runs])
    unknown = sorted(wanted - {r.run_id for r in runs})
    if unknown:
        raise InputError(f"{folder}: no run {', '.join(unknown)} in this export")
    return [(r, [m for m in models if m.run_id == r.run_id],
             [(e, d, t) for rid, _, e, d, t in events if rid == r.run_id],
             [w for w in windows if w.run_id == r.run_id]) for r in runs if r.run_id in wanted]


def import_traces(st, folder: Path) -> int:
    """Store the exported trace files (``traces/<hash>.npz``) the target lacks; each is checked by its hash."""
    import numpy as np

    from harness.errors import ArtifactError

    n = 0
    for p in sorted((folder / "traces").glob("*.npz")) if (folder / "traces").is_dir() else []:
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/ValueError/OSError: a damaged file
            raise ArtifactError(f"trace file {p} is damaged ({exc})") from None
        if st.traces.put(arrays) != p.stem:
            raise ArtifactError(f"trace file {p} does not match its hash (altered or damaged)")
        n += 1
    return n


def run(args) -> int:
    from harness.store import Store

    bundles = load_export(args.folder, args.run_ids)  # every row is checked before the store is opened
    with Store(args.db) as st:
        n_traces = import_traces(st, Path(args.folder))
        st.import_runs(bundles)
        where = st.where
    n_windows = sum(len(b[3]) for b in bundles)
    if args.json:
        print_json({"db": where, "runs": [b[0].run_id for b in bundles], "windows": n_windows, "traces": n_traces})
    else:
        print(f"imported {len(bundles)} runs ({n_windows} windows, {n_traces} traces) into {where}")
    return 0

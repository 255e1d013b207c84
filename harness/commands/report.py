"""``harness report RUN_ID``: rebuild a run's tables, plots and HTML page from the store."""

from __future__ import annotations

from harness.cliutil import add_json_flag, add_output_flag, print_json, short
from harness.commands.run import add_db_flag
from harness.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="rebuild a run's tables, plots and HTML report",
                              description="Rebuild Tables 3/4 (Markdown, CSV), the plots and report.html of a run "
                                          "from the results store (default: results/<run>/).")
    p.add_argument("run_id", help="run id (a unique prefix is enough)")
    add_output_flag(p, "output folder (default: <db dir>/<run id>)", dest="out", old=("--out",), default=None,
                    metavar="DIR")
    add_db_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.report import build_report
    from harness.store import Store

    with Store(args.db, readonly=True) as st:
        run_id = st.get_run(args.run_id).run_id
        try:
            rep = build_report(st, run_id, args.out)
        except OSError as exc:
            raise UsageError(f"-o {short(str(args.out or exc.filename or ''))}: cannot write the report "
                             f"({exc.strerror or exc})") from None
    if args.json:
        print_json({"run_id": run_id, "out_dir": str(rep.out_dir),
                    "files": {k: str(v) for k, v in sorted(rep.files.items())}, "rows": rep.rows})
    else:
        for name in sorted(rep.files):
            print(rep.files[name])
    return 0

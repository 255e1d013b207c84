"""The ``--lab`` parts of ``harness run`` and ``harness sweep`` (flags, checks, output), kept here so the
commands themselves only gain a hook."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from harness.cliutil import print_json
from harness.errors import UsageError

log = logging.getLogger(__name__)

#: flags of ``harness run`` that name one device; a lab run takes --devices instead
SINGLE_DEVICE_FLAGS = ("device", "connect", "serial", "monitor", "monitor_serial")


def add_lab_run_flags(p) -> None:
    p.add_argument("--lab", default=None, metavar="HEAD",
                   help="run on the lab at HEAD (HOST:PORT of `harness lab head`): each device on its own host; "
                        "with --resume, the id is a lab run's")
    p.add_argument("--devices", default=None, metavar="SERIAL,...|GROUP",
                   help="with --lab: the devices to measure (serials, or a group of --lab-file)")
    p.add_argument("--lab-file", default=None, metavar="TOML", help="with --lab: the lab file naming device groups")


def _work_dir(db: str) -> Path:
    return Path("results").resolve() if "://" in db else Path(db).resolve().parent


def _db_for_nodes(db: str) -> str:
    """The store every node writes to: a URL as given, a SQLite file as an absolute path (one filesystem)."""
    return db if "://" in db else str(Path(db).resolve())


def run_on_lab(args, overrides: dict[str, Any], plan_flags: tuple[str, ...]) -> int:
    """``harness run --lab``: checks first (exit 2), then :func:`harness.lab.labrun.run_lab`."""
    from harness.lab.inventory import expand_devices
    from harness.lab.labrun import LabRunRequest, run_lab
    from harness.lab.ray_adapter import split_address
    from harness.plan import load_toml, make_plan
    from harness.store import Store, check_db_path
    from harness.tables import device_label, model_rows, table3_markdown, table4_markdown

    split_address(args.lab)
    given = [f"--{k.replace('_', '-')}" for k in SINGLE_DEVICE_FLAGS if getattr(args, k, None)]
    if given:
        raise UsageError(f"--lab measures the devices of --devices on their hosts; drop {', '.join(given)}")
    if args.resume:
        plan_given = [f"--{k.replace('_', '-')}" for k in plan_flags if getattr(args, k, None) is not None]
        if plan_given or args.devices:
            raise UsageError(f"--resume uses the lab run's stored devices and plan; drop "
                             f"{', '.join(plan_given + (['--devices'] if args.devices else []))}")
        serials: tuple[str, ...] = ()
        over: dict[str, Any] = {}
    else:
        if not args.devices:
            raise UsageError("--lab needs --devices SERIAL,SERIAL,... (or a device group of --lab-file)")
        if args.lab_file and not Path(args.lab_file).is_file():
            raise UsageError(f"--lab-file {args.lab_file}: no such file")
        serials = expand_devices(args.devices, args.lab_file)
        toml = load_toml(args.config) if args.config else {}
        over = {k: v for k, v in {**toml, **overrides}.items() if k not in ("device", "kind")}
        over = {k: list(v) if isinstance(v, tuple) else v for k, v in over.items()}
        make_plan("virtual", "virtual", over)  # every setting checked before any work
    check_db_path(args.db, must_exist=bool(args.resume))
    req = LabRunRequest(address=args.lab, serials=serials, db=_db_for_nodes(str(args.db)),
                        work_dir=_work_dir(str(args.db)), overrides=over, resume=args.resume or "",
                        accuracy=bool(args.accuracy))
    out = run_lab(req)
    with Store(req.db, readonly=True) as st:
        for res in out["devices"].values():
            if res.get("run_id"):
                rec = st.get_run(res["run_id"])
                res["rows"] = model_rows(st.models(rec.run_id), st.windows(rec.run_id), rec.measures_energy)
                res["label"] = device_label(rec)
                res["measures_energy"] = rec.measures_energy
                res["virtual"] = bool(rec.virtual)
    if args.json:
        print_json(out)
    else:
        for serial, res in out["devices"].items():
            print(f"## {serial}: run {res.get('run_id') or '-'} {res.get('status')}"
                  + (f" ({res['error']})" if res.get("error") else ""))
            if res.get("rows"):
                if res["measures_energy"]:
                    print(table3_markdown(res["rows"], res["label"], res["virtual"]))
                print(table4_markdown(res["rows"], res["label"], res["virtual"], res["measures_energy"]))
        print(f"lab run {out['lab_run']}: {out['status']}; wall {out['wall_s']:.1f} s")
    if out["status"] != "complete":
        print(f"harness: lab run {out['lab_run']} is incomplete; when the hosts are back: "
              f"harness run --lab {args.lab} --resume {out['lab_run']} --db {args.db}", file=sys.stderr)
        return 1
    return 0

"""``harness run``: build, export and measure the base model and its specialists; Tables 3 and 4.

Build the specialists, export them, push them, run inference windows beside idle windows in a randomized
counterbalanced order while the power monitor records, store every window and write Tables 3 and 4 and an HTML
report (results/<run>/report.html).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from harness.cliutil import (
    add_command,
    add_json_flag,
    bounded_int,
    finite_float,
    parse_int_list,
    print_json,
    writable_dir,
)
from harness.errors import HarnessError, UsageError, exit_code_for
from harness.store import DEFAULT_DB

log = logging.getLogger(__name__)

#: flags that define a plan (refused together with --resume: the stored plan is used)
PLAN_FLAGS = ("levels", "classes", "method", "config", "window_s", "idle_s", "min_reps", "max_reps",
              "target_ci_pct", "target_saved_ci_pts", "max_measure_s", "seed", "threads", "monitor", "serial",
              "monitor_serial", "model", "stats", "weights")


def add_db_flag(p) -> None:
    p.add_argument("--db", default=None, metavar="PATH|URL",
                   help=f"results database: a SQLite file or postgresql://[user@]host[:port]/dbname "
                        f"(default $HARNESS_DB, else {DEFAULT_DB})")


def register(subparsers) -> None:
    p = add_command(subparsers, "run", run,
                    "measure the base model and its specialists (energy and time, Tables 3 and 4)", __doc__)
    p.add_argument("--device", default=None,
                   help="virtual (default: virtual phone + virtual Monsoon), host (timing only), or a device "
                        "profile name such as nexus4 (real phone + monitor)")
    p.add_argument("--levels", default=None, help="channels removed, percent, e.g. 10,20,30,40,50 (default)")
    p.add_argument("--classes", default=None, help="target classes (default 0,1,2,3,4)")
    p.add_argument("--method", default=None, help="compensation/pruning preset (default: the project default)")
    p.add_argument("--config", default=None, metavar="TOML", help="run file with plan settings (flags win)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="continue an interrupted run")
    p.add_argument("--monitor", choices=("monsoon", "gauge"), default=None, help="power monitor (real phones)")
    p.add_argument("--serial", default=None, help="phone serial (real phones)")
    p.add_argument("--connect", default=None, metavar="HOST:PORT",
                   help="a phone over ADB/TCP (real phones: same as --serial HOST:PORT); with a virtual device: "
                        "measure a running `harness virtual-phone` at 127.0.0.1:PORT instead of starting one")
    p.add_argument("--key", default=None, help="ADB private key (default ~/.android/adbkey; the virtual lab: its "
                                               "own); the keys of $ADB_VENDOR_KEYS are offered too")
    p.add_argument("--monitor-serial", default=None, help="Monsoon serial number (real phones)")
    p.add_argument("--window-s", type=finite_float(0.0, 600.0, lo_open=True), default=None, help="inference window length (s)")
    p.add_argument("--idle-s", type=finite_float(0.0, 600.0), default=None, help="idle window length (s; default = window)")
    p.add_argument("--min-reps", type=bounded_int(2, 1000), default=None, help="rounds before the CI target may stop the run")
    p.add_argument("--max-reps", type=bounded_int(2, 1000), default=None, help="cap on rounds")
    p.add_argument("--target-ci-pct", type=finite_float(0.0, 100.0, lo_open=True), default=None, help="stop when every CI half-width < this %% of the mean")
    p.add_argument("--target-saved-ci-pts", type=finite_float(0.0, 100.0, lo_open=True), default=None,
                   help="stop when every level's savings CI half-width is below this many points (default 2)")
    p.add_argument("--max-measure-s", type=finite_float(0.0, 7 * 86400.0, lo_open=True), default=None,
                   help="measuring budget: start no round that would end past it (virtual default 210 s)")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=None, help="seed of the randomized window order")
    p.add_argument("--threads", type=bounded_int(1, None), default=None, help="inference threads")
    p.add_argument("--model", default=None, help="base model: nin (default), a NIN .npz, a zoo name (resnet20, ...), "
                   "pkg.mod:factory or a .pt2 program (docs/anycnn.md)")
    p.add_argument("--weights", default=None, metavar="FILE", help="graph models: a state_dict file for --model")
    p.add_argument("--stats", default=None, help="calibration stats artifact (default: NIN's shipped one; graph "
                   "models: built once from the calibration images and cached)")
    p.add_argument("--accuracy", action="store_true", help="also measure accuracy on the target classes")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report and plots")
    p.add_argument("--no-profile", action="store_true", help="skip the per-layer ETDump profile (harness profile)")
    add_db_flag(p)
    add_json_flag(p)
    from harness.lab.cli import add_lab_run_flags  # harness run --lab (docs/lab.md)

    add_lab_run_flags(p)


def _overrides(args) -> dict[str, Any]:
    """Plan settings given on the command line (parsed and checked; None when absent)."""
    over: dict[str, Any] = {}
    if args.levels is not None:
        over["levels"] = parse_int_list(args.levels, "--levels", lo=1, hi=99)
    if args.classes is not None:
        over["classes"] = parse_int_list(args.classes, "--classes", lo=0, hi=9)
    for k in ("method", "monitor", "serial", "monitor_serial", "window_s", "idle_s", "min_reps", "max_reps",
              "target_ci_pct", "target_saved_ci_pts", "max_measure_s", "seed", "threads", "model", "stats", "weights"):
        v = getattr(args, k)
        if v is not None:
            over[k] = v
    return over


def _device_name(text: str | None, flag: str = "--device") -> str | None:
    """``--device`` as given (None when absent); an empty or blank name is refused, not taken for virtual."""
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{flag}: give a device name (virtual, host or a profile such as nexus4)")
    return text.strip()


def _check_work_dir(work_dir: Path) -> None:
    """The results directory and the sub-directories a run writes must be writable (checked before any work)."""
    writable_dir(work_dir, f"results directory {work_dir}")
    for sub in ("cache", "traces", "virtual-lab", "phone-traces"):
        d = work_dir / sub
        if d.exists():
            writable_dir(d, f"results directory {work_dir}")


def _profile_file(db, run_id: str) -> str | None:
    """The run's per-layer profile (``harness profile``), when one was written."""
    from harness.profile import PROFILE_FILE, run_profile_dir

    p = run_profile_dir(db, run_id) / PROFILE_FILE
    return str(p) if p.is_file() else None


class RunFileError(HarnessError):
    """A results, cache or lab file that cannot be used during a run (exit code 1)."""


def run(args) -> int:
    """``harness run``: every input checked first, then the work; an OS failure on the way is one line."""
    try:
        return _run(args)
    except OSError as exc:  # e.g. a results, cache or lab file that cannot be written
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        raise RunFileError(f"run stopped: {exc.strerror or exc}{where}") from None


def _run(args) -> int:
    from harness.backends import (
        ModelPreparation,
        check_device_args,
        make_backend,
        resolve_device,
        stored_models,
    )
    from harness.plan import RunPlan, check_inputs, load_toml, make_plan, status_text, target_from_events
    from harness.report import build_report
    from harness.runloop import check_resumable, create_run, run_experiment
    from harness.store import Store, check_db_path
    from harness.tables import device_label, latency_markdown, run_rows, table3_markdown, table4_markdown

    if getattr(args, "lab", None):  # the device lab: harness/lab/cli.py
        from harness.lab.cli import run_on_lab

        return run_on_lab(args, _overrides(args) if not args.resume else {}, PLAN_FLAGS)
    t_start = time.monotonic()
    # ---- everything about the input is checked before anything is written
    device_arg = _device_name(args.device)
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in PLAN_FLAGS if getattr(args, k, None) is not None]
        if given:
            raise UsageError(f"--resume uses the run's stored plan; drop {', '.join(given)}")
    over = _overrides(args) if not args.resume else {}
    toml = load_toml(args.config) if args.config else {}
    db = check_db_path(args.db, must_exist=bool(args.resume))
    stored_plan = None
    if args.resume:
        with Store(db, readonly=True) as st:  # read only: a refused resume writes nothing
            stored = st.get_run(args.resume)
            if st.run_status(stored.run_id) == "complete":
                raise UsageError(f"run {stored.run_id} is already complete; see 'harness show {stored.run_id}'")
            device_name = device_arg or stored.device
            if device_arg and device_arg != stored.device:
                raise UsageError(f"--device {device_arg} conflicts with run {stored.run_id}, measured on {stored.device}")
            stored_plan = RunPlan.from_json(stored.plan_json)
    else:
        device_name = device_arg or _device_name(toml.get("device"), "device (in --config)") or "virtual"
    choice = resolve_device(device_name)
    if choice.kind != "real" and any(getattr(args, k) for k in ("monitor", "serial", "monitor_serial")):
        raise UsageError(f"--monitor/--serial/--monitor-serial are for real phones, not --device {choice.name}")
    if (args.connect is not None or args.key is not None) and choice.kind == "host":
        raise UsageError(f"--connect/--key are for virtual phones and real phones, not --device {choice.name}")
    plan = make_plan(choice.kind, choice.name, {**toml, **over, "device": choice.name})
    if stored_plan is not None:
        plan = stored_plan
    # profile, phone (--serial/--connect/ANDROID_SERIAL/the only one), monitor: before any build, export or write
    plan = check_device_args(choice, plan, connect=args.connect if choice.kind == "real" else None)
    check_inputs(plan)
    work_dir = db.work_dir
    _check_work_dir(work_dir)

    models = None
    if args.resume:
        with Store(db, readonly=True) as st:  # the stored plan and artifacts decide what to measure
            rec = st.get_run(args.resume)
            models = stored_models(st.models(rec.run_id), plan)
    backend = make_backend(choice, plan, work_dir, connect=args.connect, key=args.key)
    with Store(db) as st:  # a locked or corrupt database fails here, before any work
        # builds happen here; uncached exports go on in worker processes while the lab starts
        prep = ModelPreparation(plan, work_dir / "cache", accuracy=args.accuracy) if models is None else None
        try:
            with backend:
                if prep is not None:
                    models = prep.finish()
                prep_s = time.monotonic() - t_start
                if args.resume:
                    check_resumable(st, args.resume, backend)
                    run_id = st.get_run(args.resume).run_id
                else:
                    run_id = create_run(st, backend, plan)
                run_rec = st.get_run(run_id)
                print(f"run {run_id} on {choice.name}" + (" (virtual lab)" if backend.virtual else ""),
                      file=sys.stderr)
                try:
                    outcome = run_experiment(st, backend, plan, models, run_id)
                except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: 130 or 143 (harness/errors.py)
                    print(f"harness: interrupted; measured windows are stored. Resume with "
                          f"'harness run --resume {run_id}'", file=sys.stderr)
                    return exit_code_for(exc)
                if outcome.status.startswith("complete") and not args.no_profile:  # after every window: one profiled pass
                    from harness.prepare import model_key
                    from harness.profile import collect_run_profiles, layers_from_entries, run_profile_dir

                    collect_run_profiles(backend, models, run_profile_dir(db, run_id), run_id,
                                         layers_from_entries(prep.entries, model_key) if prep else None)
        finally:
            if prep is not None:
                prep.close()
        rows = run_rows(st, run_id)
        target = target_from_events(st.events(run_id))
        status = status_text(outcome.status, target)
        report_path = None
        if not args.no_report:
            rep = build_report(st, run_id)
            report_path = rep.files.get("report.html")
        wall_s = time.monotonic() - t_start
        overhead_pct = (wall_s - outcome.measured_s) / wall_s * 100.0 if wall_s > 0 else None
        if args.json:
            print_json({"run_id": run_id, "device": choice.name, "virtual": backend.virtual,
                        "status": outcome.status, "status_text": status,
                        "target_reached": target["reached"] if target else None,
                        "target": {"saved_ci_pts": plan.target_saved_ci_pts, "ci_pct": plan.target_ci_pct,
                                   "misses": list(outcome.misses)},
                        "rows": rows, "wall_s": round(wall_s, 2),
                        "measured_s": round(outcome.measured_s, 2), "prepare_s": round(prep_s, 2),
                        "overhead_pct": overhead_pct, "db": db.display,
                        "report": str(report_path) if report_path else None,
                        "profile": _profile_file(db, run_id)})
        else:
            if run_rec.measures_energy:
                print(table3_markdown(rows, device_label(run_rec), backend.virtual))
            print(table4_markdown(rows, device_label(run_rec), backend.virtual, run_rec.measures_energy))
            print(latency_markdown(rows, device_label(run_rec)))
            for miss in outcome.misses:
                print(f"target not reached: {miss['text']}")
            print(f"run {run_id}: {status}; wall {wall_s:.1f} s, in windows {outcome.measured_s:.1f} s, "
                  f"overhead {overhead_pct:.1f}%" + (f"; report {report_path}" if report_path else ""))
    return 0

"""What runs on the node that owns a device: one run (or its resumption) of the plan, every window written to
the shared store as it finishes (``harness.runloop.run_experiment``, the same loop as ``harness run``).

The job finds its device among the node's own (:func:`harness.lab.inventory.owned_devices`, with the lab file
and host name ``harness lab join`` left in the environment), writes the shipped programs to the node's cache
(content-addressed, hash checked), opens the device's backend, creates the run (linked to its lab run by a
``lab`` event) or checks that the run to resume was measured on this very device, and measures.
Nothing here imports Ray: the adapter (``harness.lab.ray_adapter``) calls :func:`run_device_job`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from device.files import atomic_write_bytes, file_hash
from harness.errors import PROJECT_ERRORS, InputError
from harness.lab.inventory import LAB_FILE_ENV, LabDevice, owned_devices, this_host
from harness.runloop import PreparedModel

log = logging.getLogger(__name__)

LAB_EVENT = "lab"  # run event linking a device run to its lab run: {"lab_run", "serial", "host"}
Report = Callable[[dict[str, Any]], None]


def node_dir(serial: str) -> Path:
    """This node's working directory for ``serial`` (virtual-lab files, raw traces, shipped programs)."""
    from device.virtual_phone.registry import cache_dir

    return cache_dir() / "lab" / serial


def find_device(serial: str) -> LabDevice:
    """The device ``serial`` among this node's own; InputError when this node does not own it (any more)."""
    for d in owned_devices(os.environ.get(LAB_FILE_ENV) or None):
        if d.serial == serial:
            return d
    raise InputError(f"device {serial} is not on host {this_host()} (any more): is it plugged in / running?")


def store_artifacts(models: list[dict], artifacts: dict[str, bytes], where: Path) -> list[PreparedModel]:
    """The shipped programs written to ``where`` (kept when already there with the right hash), as models
    whose artifact paths are on this node."""
    out = []
    names = {f.name for f in fields(PreparedModel)}
    for m in models:
        pm = PreparedModel(**{k: (tuple(v) if k == "classes" else v) for k, v in m.items() if k in names})
        path = where / f"{pm.artifact_hash[:24]}.pte"
        if not (path.is_file() and file_hash(path) == pm.artifact_hash):
            blob = artifacts.get(pm.artifact_hash)
            if blob is None:
                raise InputError(f"model {pm.key}: program {pm.artifact_hash[:12]} was not shipped")
            atomic_write_bytes(path, blob)
            if file_hash(path) != pm.artifact_hash:
                raise InputError(f"model {pm.key}: program {pm.artifact_hash[:12]} arrived damaged")
        out.append(replace(pm, artifact_path=str(path)))
    return out


def _plan_for(dev: LabDevice, overrides: dict[str, Any]):
    from harness.backends import VIRTUAL_DEFAULT_PROFILE, check_device_args, resolve_device
    from harness.plan import make_plan

    if dev.kind == "virtual":
        choice = resolve_device(dev.profile or VIRTUAL_DEFAULT_PROFILE)
    else:
        if not dev.profile:
            raise InputError(f"device {dev.serial}: give its profile in the lab file (e.g. profile = \"nexus4\")")
        choice = resolve_device(dev.profile)
    extra = {} if dev.kind == "virtual" else {
        "serial": dev.serial, "monitor": dev.monitor if dev.monitor != "none" else "monsoon",
        "monitor_serial": dev.monitor_serial}
    plan = make_plan(choice.kind, choice.name, {**overrides, **extra})
    check_device_args(choice, plan)
    return choice, plan


def run_device_job(spec: dict[str, Any], artifacts: dict[str, bytes], report: Report) -> dict[str, Any]:
    """Measure ``spec['serial']``'s plan (new, or ``spec['resume_run']``) into ``spec['db']``.

    Returns ``{"serial", "host", "run_id", "status", "windows", "error"}``; a project error (bad device, a
    run stopped after failed windows) is returned as ``status: failed`` with its line, not raised.
    """
    from harness.backends import make_backend
    from harness.plan import RunPlan, schedule
    from harness.runloop import check_resumable, create_run, run_experiment
    from harness.store import Store

    serial = str(spec["serial"])
    out: dict[str, Any] = {"serial": serial, "host": this_host(), "run_id": spec.get("resume_run") or "",
                           "status": "failed", "windows": 0, "error": ""}
    t0 = time.monotonic()
    try:
        dev = find_device(serial)
        paired = [dev.monitor_id] if dev.monitor_id else []
        if spec.get("monitors") is not None and sorted(spec["monitors"]) != paired:
            raise InputError(f"device {serial} is paired with monitor {dev.monitor_id or 'none'} on host "
                             f"{this_host()}, not {', '.join(spec['monitors']) or 'none'}: rejoin the host")
        work = node_dir(serial)
        models = store_artifacts(spec["models"], artifacts, work / "artifacts")
        choice, plan = _plan_for(dev, spec.get("overrides") or {})
        with Store(spec["db"]) as st:
            if spec.get("resume_run"):
                plan = RunPlan.from_json(st.get_run(spec["resume_run"]).plan_json)
            backend = make_backend(choice, plan, work, connect=(dev.address or None) if dev.kind == "virtual" else None)
            with backend:
                if spec.get("resume_run"):
                    check_resumable(st, spec["resume_run"], backend)
                    run_id = st.get_run(spec["resume_run"]).run_id
                else:
                    run_id = create_run(st, backend, plan)
                    st.add_event(run_id, LAB_EVENT, json.dumps(
                        {"lab_run": spec["lab_run"], "serial": serial, "host": out["host"]}, sort_keys=True))
                out["run_id"] = run_id
                planned = len(schedule([m.key for m in models], plan.max_reps, plan.seed))
                state = {"lab_run": spec["lab_run"], "run_id": run_id, "host": out["host"], "planned": planned,
                         "state": "measuring", "done": len(st.window_seqs(run_id))}
                report({**state, "window": None})

                def on_window(rec) -> None:
                    state["done"] += 1
                    report({**state, "window": rec.seq, "kind": rec.kind, "model": rec.model_key,
                            "valid": rec.valid})

                outcome = run_experiment(st, backend, plan, models, run_id, progress=False, on_window=on_window)
                out.update(status=outcome.status, windows=outcome.windows_measured)
    except PROJECT_ERRORS as exc:
        out["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("device %s: %s", serial, out["error"])
    out["wall_s"] = round(time.monotonic() - t0, 3)
    report({"lab_run": spec.get("lab_run"), "run_id": out["run_id"], "host": out["host"],
            "state": out["status"], "error": out["error"]})
    return out

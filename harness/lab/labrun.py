"""``harness run --lab HEAD --devices ...``: one lab run = one run per device, measured where the device is.

The driver checks that a live node owns every device, prepares the models once (the same cache as
``harness run``), ships each program once to the lab's object store, and starts one job per device on the
node that owns it (``harness.lab.devicejob``; the task needs that device's resource, so a device never
measures two things at once).  Each job writes its windows straight into the shared store.  When a node is
lost, the window it was measuring (the next one its plan had) is recorded *invalid* with the reason and the
run gets an ``interrupted`` event; the other devices go on.  ``--resume LAB_RUN`` finds each device's run
through its ``lab`` event and continues the incomplete ones (``harness.runloop`` skips stored windows), so
no window is lost or measured twice.  The lab run's devices and settings are kept in
``<results>/lab-runs/<lab run>.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device.files import atomic_write_bytes
from harness.errors import InputError, UsageError
from harness.lab import ray_adapter as lab
from harness.lab.devicejob import LAB_EVENT
from harness.lab.inventory import MONITOR_PREFIX, device_requirements, device_resource
from harness.store import DuplicateError, Store, WindowRecord, code_version, new_run_id

log = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass(frozen=True)
class LabRunRequest:
    """What ``harness run --lab`` was asked for (already checked)."""

    address: str
    serials: tuple[str, ...]
    db: str
    work_dir: Path
    overrides: dict[str, Any]
    resume: str = ""
    accuracy: bool = False


def manifest_path(work_dir: Path, lab_run: str) -> Path:
    return Path(work_dir) / "lab-runs" / f"{lab_run}.json"


def load_manifest(work_dir: Path, lab_run: str) -> dict[str, Any]:
    p = manifest_path(work_dir, lab_run)
    if not p.is_file():
        known = sorted(x.stem for x in (Path(work_dir) / "lab-runs").glob("*.json"))[-5:]
        raise UsageError(f"lab run {lab_run!r} not found in {p.parent}" +
                         (f"; recent: {', '.join(known)}" if known else ""))
    return json.loads(p.read_text())


def lab_runs_of(st: Store, lab_run: str) -> dict[str, str]:
    """``serial -> run id`` of the device runs of ``lab_run`` (through their ``lab`` events)."""
    out: dict[str, str] = {}
    for summary in st.list_runs():
        for event, detail, _ in st.events(summary.run.run_id):
            if event != LAB_EVENT:
                continue
            try:
                info = json.loads(detail)
            except ValueError:
                continue
            if info.get("lab_run") == lab_run:
                out[str(info.get("serial"))] = summary.run.run_id
    return out


def pending_slot(st: Store, run_id: str):
    """The window the run loop would measure next (``None`` when the plan is complete): the one a lost node
    was measuring.  Walks the plan as :func:`harness.runloop.run_experiment` does."""
    from harness.plan import RunPlan, ci_reached, closing_idle, round_slots, schedule
    from harness.prepare import model_key
    from harness.tables import window_values

    run = st.get_run(run_id)
    plan = RunPlan.from_json(run.plan_json)
    keys = [model_key(lv) for lv in sorted((0, *plan.levels))]
    slots = schedule(keys, plan.max_reps, plan.seed)
    done = st.window_seqs(run_id)
    for r in range(plan.max_reps):
        for slot in round_slots(slots, r):
            if slot.seq not in done:
                return slot
        if r + 1 >= plan.min_reps:
            wins = st.windows(run_id)
            enough = ci_reached(window_values(wins, "time_ms"), plan.target_ci_pct, plan.min_reps)
            if enough and run.measures_energy:
                enough = ci_reached(window_values(wins, "energy_mj"), plan.target_ci_pct, plan.min_reps)
            if enough or r == plan.max_reps - 1:
                last = closing_idle(len(keys), r)
                return None if last.seq in done else last
    return None


def record_lost(st: Store, run_id: str, reason: str) -> int | None:
    """The lost node's window recorded invalid with ``reason``, and an ``interrupted`` event; its seq."""
    run = st.get_run(run_id)
    for _ in range(3):
        slot = pending_slot(st, run_id)
        if slot is None:
            break
        rec = WindowRecord(run_id=run_id, seq=slot.seq, round_idx=slot.round_idx, kind=slot.kind,
                           model_key=slot.model_key, status="invalid", reason=reason[:500],
                           t_start_mono_s=time.monotonic(), device_fingerprint=run.device_fingerprint,
                           instrument=run.instrument, code_version=code_version(),
                           settings_json=json.dumps({"lost": True}))
        try:
            st.add_window(rec)
        except DuplicateError:  # the node stored that window just before it went: take the next one
            continue
        st.add_event(run_id, "interrupted", reason[:500])
        return slot.seq
    st.add_event(run_id, "interrupted", reason[:500])
    return None


def requirements(serials: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """``serial -> resources`` its job needs: the device, and the monitor(s) its owning node pairs with it."""
    owner: dict[str, dict[str, float]] = {}
    for n in lab.nodes():
        if n.alive:
            for s in serials:
                if device_resource(s) in n.resources:
                    owner.setdefault(s, n.resources)
    return {s: device_requirements(s, owner.get(s, {})) for s in serials}


def _prepare(plan, work_dir: Path, accuracy: bool, stored=None):
    from harness.backends import ModelPreparation, stored_models

    models = stored_models(stored, plan) if stored else None
    if models is None:
        with ModelPreparation(plan, work_dir / "cache", accuracy=accuracy) as prep:
            models = prep.finish()
    return models


def run_lab(req: LabRunRequest) -> dict[str, Any]:
    """Run (or resume) a lab run; returns ``{"lab_run", "devices": {serial: result}, "status", ...}``."""
    from harness.plan import make_plan

    t0 = time.monotonic()
    serials = req.serials
    overrides = dict(req.overrides)
    lab_run = req.resume or "lab-" + new_run_id()
    existing: dict[str, str] = {}
    if req.resume:
        man = load_manifest(req.work_dir, req.resume)
        serials, overrides = tuple(man["devices"]), dict(man["overrides"])
        with Store(req.db, readonly=True) as st:
            existing = lab_runs_of(st, lab_run)
            complete = {s for s, r in existing.items() if st.run_status(r) == "complete"}
        serials = tuple(s for s in serials if s not in complete)
        if not serials:
            raise UsageError(f"lab run {lab_run} is already complete")
    lab.connect(req.address)
    missing = lab.pending_device_resources({device_resource(s): 1.0 for s in serials})
    if missing:
        raise InputError(f"no live lab node owns {', '.join(m.split(':', 1)[1] for m in missing)} "
                         f"(see 'harness lab status --address {req.address}')")
    needs = requirements(serials)
    plan = make_plan("virtual", "virtual", overrides)  # the models: levels, classes, method, model, stats
    stored = None
    if existing:
        with Store(req.db, readonly=True) as st:
            stored = st.models(next(iter(existing.values())))
    t_prep = time.monotonic()
    models = _prepare(plan, req.work_dir, req.accuracy, stored)
    prepare_s = time.monotonic() - t_prep
    if not req.resume:
        atomic_write_bytes(manifest_path(req.work_dir, lab_run), json.dumps(
            {"lab_run": lab_run, "devices": list(serials), "overrides": overrides, "db": str(req.db),
             "address": req.address}, indent=2, sort_keys=True, default=list).encode())
    shipped = {m.artifact_hash: lab.put(Path(m.artifact_path).read_bytes()) for m in models}
    model_dicts = [asdict(m) for m in models]
    handles = {}
    for s in serials:
        spec = {"serial": s, "lab_run": lab_run, "db": str(req.db), "models": model_dicts,
                "overrides": overrides, "resume_run": existing.get(s, ""),
                "monitors": sorted(k.split(":", 1)[1] for k in needs[s] if k.startswith(MONITOR_PREFIX))}
        handles[lab.submit_device(spec, shipped, needs[s])] = s
    log.info("lab run %s: %d device(s) dispatched", lab_run, len(handles))
    results: dict[str, dict] = {}
    while handles:
        for done in lab.wait_done(list(handles), timeout_s=POLL_S):
            serial = handles.pop(done.handle)
            if done.lost:
                results[serial] = _lost(req, lab_run, serial, done.error)
            elif done.error:
                results[serial] = {"serial": serial, "status": "failed", "error": done.error, "run_id": ""}
            else:
                results[serial] = dict(done.value)
    status = "complete" if all(r.get("status") == "complete" for r in results.values()) else "incomplete"
    return {"lab_run": lab_run, "status": status, "devices": results, "prepare_s": round(prepare_s, 3),
            "wall_s": round(time.monotonic() - t0, 3), "db": str(req.db)}


def _lost(req: LabRunRequest, lab_run: str, serial: str, error: str) -> dict[str, Any]:
    reason = f"node lost: {error}"
    with Store(req.db) as st:
        run_id = lab_runs_of(st, lab_run).get(serial, "")
        seq = record_lost(st, run_id, reason) if run_id else None
    log.warning("device %s: %s (window %s recorded invalid); resume with --resume %s", serial, reason, seq, lab_run)
    return {"serial": serial, "status": "lost", "error": reason, "run_id": run_id, "lost_window": seq}

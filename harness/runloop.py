"""The measurement loop: windows in the planned order, stored one by one, resumable at any point.

A :class:`Backend` is the small interface every device offers (host, virtual lab, real phone):
prepare a model (push, preflight, estimate its time per inference), run a window of N inferences,
run an idle window, read a temperature.  :func:`run_experiment` walks the plan's schedule
(:func:`harness.plan.schedule`), skipping windows already in the store (resume), cools down before
inference windows, and writes each window in one transaction as soon as it is measured.  This is
the one place with a broad ``except``: a failed window becomes an *invalid* window record with its
reason, and after ``max_consecutive_failures`` failures in a row the run stops, resumable.
Ctrl-C or SIGTERM stops the current window: what was measured is stored, the run is marked
``interrupted`` (a second Ctrl-C cannot lose that event nor cut a store write in half: harness/signals.py)
and ``harness run --resume RUN_ID`` continues it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness import latency
from harness.errors import PROJECT_ERRORS, InputError, MeasurementError
from harness.plan import RunPlan, closing_idle, inferences_per_window, round_slots, schedule, target_misses
from harness.signals import deferred_signals, interrupt_name
from harness.store import (
    ModelRecord,
    RunRecord,
    Store,
    WindowRecord,
    code_version,
    fingerprint_id,
    new_run_id,
)
from harness.tables import model_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to measure: its identity, cost and the artifact a backend runs."""

    key: str  # "L0" for the base model, "L<level>" for a specialist
    level_pct: int
    classes: tuple[int, ...]
    method: str
    flops: int
    flops_pruned_pct: float
    model_hash: str
    artifact_hash: str
    artifact_path: str
    accuracy_pct: float | None = None

    def record(self, run_id: str) -> ModelRecord:
        return ModelRecord(run_id, self.key, self.level_pct, ",".join(map(str, self.classes)), self.method,
                           int(self.flops), float(self.flops_pruned_pct), self.model_hash, self.artifact_hash,
                           str(self.artifact_path), self.accuracy_pct)


@dataclass
class WindowResult:
    """What a backend measured in one window.

    ``busy_s`` is the span the energy refers to: the inference phase of an inference window
    (between the sync marks), the whole of an idle window.  ``trace`` holds arrays to keep
    (``t_s``, ``power_w``, optional ``phase_start_s``/``phase_end_s``/``phase_name``).
    """

    n_inferences: int = 0
    duration_s: float = 0.0
    busy_s: float | None = None
    latencies_ms: np.ndarray | None = None
    energy_j: float | None = None
    mean_power_w: float | None = None
    valid: bool = True
    reason: str = ""
    trace: dict[str, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_ms(self) -> float | None:
        """The window's time per inference: the 10%-trimmed mean of its latencies (a preempted inference
        on a shared machine does not move it), else busy time / inferences."""
        if self.latencies_ms is not None and len(self.latencies_ms):
            lat = np.asarray(self.latencies_ms, dtype=np.float64)
            lat = lat[np.isfinite(lat)]
            return float(latency.trimmed_mean(lat)) if lat.size else None
        if self.n_inferences and self.busy_s:
            return self.busy_s * 1000.0 / self.n_inferences
        return None


class Backend(ABC):
    """One device kind.  Implementations: ``harness.backend_host``, ``harness.backend_phone`` (real phone) and
    ``harness.backend_virtual`` (virtual lab); ``harness.backends.make_backend`` picks one."""

    name: str = "backend"
    virtual: bool = False
    measures_energy: bool = False
    instrument: str = "none"

    def open(self) -> None:  # noqa: B027 (optional hook)
        """Connect (phone, monitor); called once before anything else."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Disconnect; must be safe after a failure."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the device (model, build, serial...) for history across runs."""

    @abstractmethod
    def prepare(self, model: PreparedModel, warmup: int) -> float:
        """Push and preflight a model; return an estimate of its ms per inference."""

    @abstractmethod
    def run_window(self, model: PreparedModel, n_inferences: int, warmup: int) -> WindowResult:
        """Run ``n_inferences`` timed inferences (after ``warmup`` untimed ones) and measure them."""

    @abstractmethod
    def idle_window(self, duration_s: float) -> WindowResult:
        """Measure the device idle for ``duration_s``."""

    def temperature_c(self) -> float | None:
        """Current device temperature, or None when it cannot be read."""
        return None

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RunOutcome:
    """How a call of :func:`run_experiment` ended."""

    run_id: str
    status: str  # complete | interrupted | failed
    windows_measured: int
    wall_s: float
    measured_s: float
    reason: str = ""
    target_reached: bool | None = None  # complete runs: were the plan's precision targets met?
    misses: tuple[dict[str, Any], ...] = ()  # harness.plan.Miss.to_dict() of each target not met

    @property
    def status_text(self) -> str:
        """``complete, target reached`` / ``complete, target not reached`` / the status."""
        from harness.plan import status_text

        return status_text(self.status, None if self.target_reached is None else {"reached": self.target_reached})

    @property
    def overhead_pct(self) -> float:
        return (self.wall_s - self.measured_s) / self.wall_s * 100.0 if self.wall_s > 0 else math.nan


class _Progress:
    """A tqdm bar on stderr (phase, model, ETA) when it is a terminal or HARNESS_PROGRESS=1."""

    def __init__(self, total: int, enabled: bool | None):
        show = enabled if enabled is not None else (
            os.environ.get("HARNESS_PROGRESS", "") == "1"
            or (sys.stderr.isatty() and os.environ.get("HARNESS_PROGRESS", "") != "0"))
        self.bar = None
        if show:
            from tqdm import tqdm

            # no tqdm monitor thread: it aborted the process (pthread mutex assertion) next to
            # ExecuTorch's thread pool on the host
            tqdm.monitor_interval = 0
            self.bar = tqdm(total=total, file=sys.stderr, unit="win", leave=False,
                            bar_format="{desc} {n_fmt}/{total_fmt} windows [{elapsed}<{remaining}]")

    def phase(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=True)
        log.info("%s", text)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def create_run(store: Store, backend: Backend, plan: RunPlan) -> str:
    """Record a new run (fingerprint, instrument, plan) and return its id."""
    fp, fp_json = fingerprint_id(backend.fingerprint())
    run_id = new_run_id()
    store.create_run(RunRecord(run_id=run_id, device=plan.device, device_fingerprint=fp, fingerprint_json=fp_json,
                               virtual=backend.virtual, measures_energy=backend.measures_energy,
                               instrument=backend.instrument, plan_json=plan.to_json()))
    return run_id


def check_resumable(store: Store, run_id: str, backend: Backend) -> RunPlan:
    """The stored plan of a run that can be resumed on this backend; InputError otherwise."""
    run = store.get_run(run_id)
    status = store.run_status(run.run_id)
    if status == "complete":
        raise InputError(f"run {run.run_id} is already complete; see 'harness show {run.run_id}'")
    fp, _ = fingerprint_id(backend.fingerprint())
    if fp != run.device_fingerprint:
        raise InputError(f"run {run.run_id} was measured on device {run.device} (fingerprint "
                         f"{run.device_fingerprint}); this device has fingerprint {fp}: resume it on the same device")
    return RunPlan.from_json(run.plan_json)


def _cooldown(backend: Backend, plan: RunPlan) -> float | None:
    """Wait until the device is below the threshold (bounded), else a fixed pause; return the temperature."""
    temp = backend.temperature_c() if plan.cooldown_temp_c is not None else None
    if temp is None:
        if plan.cooldown_pause_s > 0:
            time.sleep(plan.cooldown_pause_s)
        return None
    deadline = time.monotonic() + plan.cooldown_timeout_s
    while temp is not None and temp > plan.cooldown_temp_c and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        temp = backend.temperature_c()
    if temp is not None and temp > plan.cooldown_temp_c:
        log.warning("device still at %.1f C after %.0f s cool-down; measuring anyway", temp, plan.cooldown_timeout_s)
    return temp


def _window_record(run_id: str, slot, store: Store, res: WindowResult, model: PreparedModel | None,
                   fp: str, instrument: str, t0: float, temp: float | None, settings: dict) -> WindowRecord:
    trace_hash = store.traces.put(res.trace) if res.trace else ""
    lat_hash = store.traces.put({"latencies_ms": np.asarray(res.latencies_ms, dtype=np.float32)}) \
        if res.latencies_ms is not None and len(res.latencies_ms) else ""

    def num(v: Any) -> float | None:
        return None if v is None or not math.isfinite(float(v)) else float(v)

    pct = latency.latency_percentiles(res.latencies_ms if res.latencies_ms is not None else np.zeros(0)) \
        if slot.kind == "inference" else {}
    phases = {k: num(res.extra.get(k)) for k in ("load_ms", "first_inference_ms", "warmup_ms")}

    return WindowRecord(
        run_id=run_id, seq=slot.seq, round_idx=slot.round_idx, kind=slot.kind, model_key=slot.model_key,
        status="valid" if res.valid else "invalid", reason=res.reason, t_start_mono_s=t0,
        duration_s=num(res.duration_s), n_inferences=int(res.n_inferences), busy_s=num(res.busy_s),
        time_ms=num(res.time_ms) if slot.kind == "inference" else None, energy_j=num(res.energy_j),
        mean_power_w=num(res.mean_power_w), temperature_c=num(temp), trace_hash=trace_hash,
        latencies_hash=lat_hash, model_hash=model.model_hash if model else "",
        artifact_hash=model.artifact_hash if model else "", device_fingerprint=fp, instrument=instrument,
        code_version=code_version(), settings_json=json.dumps({**settings, **res.extra}, sort_keys=True, default=str),
        latency_p50_ms=num(pct.get("latency_p50_ms")), latency_p90_ms=num(pct.get("latency_p90_ms")),
        latency_p99_ms=num(pct.get("latency_p99_ms")), **phases,
    )


def _record_interrupt(store: Store, run_id: str, how: str) -> None:
    """Write the ``interrupted`` event even if Ctrl-C (or SIGTERM) comes again meanwhile.

    Stop signals are held while the event is written; one that still lands before the hold begins makes
    this try again, and one delivered after the event is stored is dropped: the run is stopping anyway.
    """
    recorded = False
    while not recorded:
        try:
            with deferred_signals():
                store.add_event(run_id, "interrupted", how)
                recorded = True
        except KeyboardInterrupt:
            continue


def run_experiment(store: Store, backend: Backend, plan: RunPlan, models: Sequence[PreparedModel], run_id: str,
                   *, progress: bool | None = None,
                   on_window: Callable[[WindowRecord], None] | None = None) -> RunOutcome:
    """Measure (or continue measuring) ``run_id`` on an opened backend; every window goes to the store.

    Returns the outcome; raises :class:`MeasurementError` (exit 1, run resumable) when
    ``max_consecutive_failures`` windows in a row failed, and re-raises KeyboardInterrupt after
    recording the ``interrupted`` event.
    """
    t_start = time.monotonic()
    run = store.get_run(run_id)
    resumed = bool(store.window_seqs(run.run_id))
    store.add_event(run.run_id, "resumed" if resumed else "started", code_version())
    by_key = {m.key: m for m in models}
    keys = sorted(by_key, key=lambda k: by_key[k].level_pct)
    for m in models:
        store.add_model(m.record(run.run_id))
    slots = schedule(keys, plan.max_reps, plan.seed)
    done = store.window_seqs(run.run_id)
    bar = _Progress(total=len(slots), enabled=progress)
    bar.step(len(done))
    measured_s = 0.0
    n_measured = 0
    failures = 0
    last_reason = ""
    status = "interrupted"

    # per-model window size: keep what earlier windows of this run used (resume), else estimate
    n_per: dict[str, int] = {}
    for w in store.windows(run.run_id, kind="inference"):
        if w.n_inferences and w.model_key not in n_per:
            n_per[w.model_key] = w.n_inferences
    try:
        for key in keys:
            bar.phase(f"prepare {key}")
            est_ms = backend.prepare(by_key[key], plan.warmup_inferences)
            n_per.setdefault(key, inferences_per_window(plan, est_ms))
            log.info("model %s: ~%.3f ms per inference, %d per window", key, est_ms, n_per[key])

        def measure(slot, closing: bool = False) -> None:
            nonlocal measured_s, n_measured, failures, last_reason
            model = by_key.get(slot.model_key)
            settings: dict[str, Any] = {"window_s": plan.window_s, "idle_s": plan.idle_window_s,
                                        "warmup": plan.warmup_inferences, "threads": plan.threads}
            temp = None
            if slot.kind == "inference":
                temp = _cooldown(backend, plan)
                bar.phase(f"round {slot.round_idx + 1}/{plan.max_reps} inference {slot.model_key}")
            else:
                bar.phase("closing idle" if closing else f"round {slot.round_idx + 1}/{plan.max_reps} idle")
            t0 = time.monotonic()
            try:
                if slot.kind == "inference":
                    res = backend.run_window(model, n_per[slot.model_key], plan.warmup_inferences)
                else:
                    res = backend.idle_window(plan.idle_window_s)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the one broad except: a failed window is an invalid record
                log.warning("window %d (%s %s) failed: %s", slot.seq, slot.kind, slot.model_key, exc)
                res = WindowResult(valid=False, reason=f"{type(exc).__name__}: {exc}"[:500],
                                   duration_s=time.monotonic() - t0)
            measured_s += time.monotonic() - t0
            rec = _window_record(run.run_id, slot, store, res, model, run.device_fingerprint, run.instrument,
                                 t0, temp, settings)
            store.add_window(rec)
            n_measured += 1
            bar.step()
            if on_window is not None:
                on_window(rec)
            if rec.valid:
                failures = 0
            else:
                failures += 1
                last_reason = rec.reason
                if failures >= plan.max_consecutive_failures:
                    raise MeasurementError(
                        f"run {run.run_id} stopped after {failures} failed windows in a row (last: {rec.reason}); "
                        f"fix the device and resume with 'harness run --resume {run.run_id}'")

        misses: list = []
        t_rounds = time.monotonic()
        rounds_here = 0
        for r in range(plan.max_reps):
            for slot in round_slots(slots, r):
                if slot.seq not in done:
                    measure(slot)
            rounds_here += 1
            # the measuring budget: stop before a round that would end past it (once two rounds give a CI)
            spent = time.monotonic() - t_rounds
            over = (plan.max_measure_s is not None and r >= 1
                    and spent * (rounds_here + 1) / rounds_here > plan.max_measure_s)
            if r + 1 >= plan.min_reps or over or r == plan.max_reps - 1:
                rows = model_rows(store.models(run.run_id), store.windows(run.run_id), run.measures_energy)
                misses = target_misses(rows, plan, run.measures_energy)
                if not misses or over or r == plan.max_reps - 1:
                    if over and misses:
                        log.info("measuring budget %.0f s reached after %d rounds", plan.max_measure_s, r + 1)
                    last = closing_idle(len(keys), r)
                    if last.seq not in done:
                        measure(last, closing=True)
                    break
        status = "complete"
        miss_dicts = [x.to_dict() for x in misses]
        if misses:
            store.add_event(run.run_id, "target_not_reached", "; ".join(x.text for x in misses)[:2000])
        store.add_event(run.run_id, "complete", json.dumps({
            "wall_s": round(time.monotonic() - t_start, 3), "measured_s": round(measured_s, 3),
            "windows": n_measured, "target_reached": not misses, "misses": [x.text for x in misses]}))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (harness.errors.Terminated)
        _record_interrupt(store, run.run_id, interrupt_name(exc))
        bar.close()
        raise
    except PROJECT_ERRORS as exc:
        status = "failed"
        store.add_event(run.run_id, "interrupted", str(exc)[:500])
        bar.close()
        raise
    bar.close()
    wall = time.monotonic() - t_start
    return RunOutcome(run.run_id, status, n_measured, wall, measured_s, last_reason, target_reached=not misses,
                      misses=tuple(miss_dicts))

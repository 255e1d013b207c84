"""Phones (real or virtual) for ``harness run``: ADB for the workload, a power monitor for the energy.

Each window's trace goes through the one analysis path, :func:`harness.window.analyse_window` (sync,
integrity gate, energy of the inference span); this module only says what the harness knows of the window:
host times of the command, the runner's timed total, and whether the phone is known to have been idle or
busy as planned (an earlier runner whose end was never seen, because the link dropped, may still run).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device import base as device_base
from device import sync
from device.push import checked_push
from harness.errors import InputError
from harness.plan import RunPlan
from harness.runloop import Backend, PreparedModel, WindowResult
from harness.window import ArraySource, WindowAnalysis, WindowLimits, WindowMarks, analyse_window

log = logging.getLogger(__name__)

#: A command whose end was never seen (the link dropped) counts as running until it has had this many
#: times its planned duration plus :data:`LOST_RUN_MARGIN_S`; the next window waits that long (at most
#: :data:`MAX_SETTLE_WAIT_S`) and is invalid if it still starts before.
LOST_RUN_FACTOR = 2.0
LOST_RUN_MARGIN_S = 2.0
MAX_SETTLE_WAIT_S = 120.0
#: Program load on the phone before the first inference (part of a command's planned duration).
RUNNER_LOAD_S = 1.0


@dataclass(frozen=True)
class LostRun:
    """A runner command sent to the phone whose end the harness never saw."""

    key: str
    started_mono_s: float
    busy_until_mono_s: float


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


class PhoneBackend(Backend):
    """A phone over ADB (``device.base.Device``) measured by a ``device.power.PowerMonitor``.

    An inference window is one shell line: start marker, ``executor_runner`` with N + warm-up
    executions, end marker (``device/sync.py``); the monitor records from before to after it, and
    :func:`harness.window.analyse_window` finds the markers (host timestamps are the fallback, trusted
    only within their stated error bound) and integrates the inference span: the last
    ``sum(latencies)`` seconds before the end marker's guard (program load and warm-up come first and
    are left out).  An idle window is ``sleep`` on the phone.  Both keep their trace (time, power,
    shaded phases).
    """

    def __init__(self, device, monitor, profile, plan: RunPlan, *, virtual: bool, name: str,
                 on_close=None):
        self.device = device
        self.monitor = monitor
        self.profile = profile
        self.plan = plan
        self.virtual = virtual
        self.name = name
        self.measures_energy = True
        self.instrument = getattr(monitor, "name", type(monitor).__name__)
        self._on_close = on_close
        self._remote: dict[str, str] = {}
        self._est_ms: dict[str, float] = {}
        self._n = 0
        self._lost: LostRun | None = None
        self._after_lost: dict[str, Any] | None = None
        self.dd_bytes_per_s = sync.VIRTUAL_DD_BYTES_PER_S
        self.busy_scales = (1.0,) if virtual else sync.REAL_PHONE_SCALES
        self.limits = WindowLimits(busy_scales=self.busy_scales)

    # -- lifecycle
    def open(self) -> None:
        """Lock the device, run preflight (fatal failures stop here), start the monitor."""
        from device.lock import DeviceLock
        from device.preflight import preflight

        self._lock = DeviceLock(self.device.name).acquire()
        runner = Path(self.profile.runner.binary).expanduser() if self.profile.runner.binary else None
        report = preflight(self.device, self.profile, runner)
        report.raise_for_failures(self.device.name)
        self.preflight = report.to_dict()
        self.monitor.start()

    def close(self) -> None:
        try:
            try:
                self.monitor.stop()
            finally:
                self.device.close()
                if getattr(self, "_lock", None) is not None:
                    self._lock.release()
        finally:
            if self._on_close is not None:
                self._on_close()

    def fingerprint(self) -> dict[str, Any]:
        props = self.device.properties()
        keep = ("ro.product.model", "ro.product.device", "ro.build.fingerprint", "ro.serialno", "ro.hardware")
        return {"kind": "virtual" if self.virtual else "phone", "profile": self.profile.name,
                **{k: props.get(k, "") for k in keep}, "monitor": self.instrument}

    def temperature_c(self) -> float | None:
        temps = []
        for zone in self.profile.thermal_zones:
            res = self.device.run(["cat", f"/sys/class/thermal/{zone}/temp"], check=False, timeout_s=10)
            txt = res.output.strip()
            if res.ok and txt.lstrip("-").isdigit():
                v = int(txt)
                temps.append(v / 1000.0 if abs(v) > 200 else float(v))
        return max(temps) if temps else None

    # -- models
    def _runner(self) -> str:
        spec = self.profile.runner
        if spec.builtin:
            return spec.remote_path
        if not spec.binary:
            raise InputError(f"profile {self.profile.name} needs an executor_runner binary (runner.binary)")
        if not getattr(self, "_runner_pushed", False):
            checked_push(self.device, Path(spec.binary).expanduser(), spec.remote_path, mode=0o755)
            self._runner_pushed = True
        return spec.remote_path

    def prepare(self, model: PreparedModel, warmup: int) -> float:
        remote = f"{self.profile.work_dir}/models/{model.artifact_hash[:16]}.pte"
        self.device.run(["mkdir", "-p", f"{self.profile.work_dir}/models"], timeout_s=30)
        checked_push(self.device, model.artifact_path, remote)
        self._remote[model.key] = remote
        work = device_base.InferenceWorkload(self._runner(), remote, iterations=3, warmup=max(1, warmup),
                                             threads=self.plan.threads)
        res = device_base.run_inferences(self.device, work, timeout_s=120)
        # the phone's output for the runner's fixed input must match the host's: a broken phone build or a
        # corrupted model cannot pass as fast
        from device.runner import check_output, host_reference

        check_output(res, host_reference(model.artifact_path), what=f"{self.name}: {model.key}")
        self._est_ms[model.key] = float(np.median(res.latencies_ms))
        return self._est_ms[model.key]

    def etdump_profile(self, model: PreparedModel, etdump_path, runs: int) -> Path | None:
        """Profiling mode (after the measurements, no monitor window): the runner with ``--etdump_path``,
        then ``adb pull`` of the ETDump to ``etdump_path``.  None when the runner wrote none (a build without
        ``EXECUTORCH_ENABLE_EVENT_TRACER=ON``: docs/run.md, "Per-layer profile")."""
        from device.errors import MeasurementError

        remote = f"{self.profile.work_dir}/profile-{model.key}.etdp"
        self.device.run(["rm", "-f", remote], timeout_s=30, check=False)
        work = device_base.InferenceWorkload(self._runner(), self._remote[model.key], iterations=max(1, int(runs)),
                                             threads=self.plan.threads)
        cmd = device_base.quote_argv([*work.argv(), f"--etdump_path={remote}"])
        res = self.device.shell(cmd, timeout_s=300, check=False, retry=False)
        if not res.ok:
            raise MeasurementError(f"{self.name}: profiled run of {model.key} failed: {res.output.strip()[-300:]}")
        if not self.device.run(["ls", remote], timeout_s=30, check=False).ok:
            log.warning("%s: the runner wrote no ETDump for %s; build it with -DEXECUTORCH_BUILD_DEVTOOLS=ON "
                        "-DEXECUTORCH_ENABLE_EVENT_TRACER=ON for per-layer profiles", self.name, model.key)
            return None
        local = Path(etdump_path)
        self.device.pull(remote, local)
        self.device.run(["rm", "-f", remote], timeout_s=30, check=False)
        return local

    # -- what the harness knows of the phone
    def _settle(self) -> None:
        """Before a window: wait out a lost runner's bound (at most :data:`MAX_SETTLE_WAIT_S`)."""
        lost = self._lost
        if lost is None:
            return
        wait = lost.busy_until_mono_s - time.monotonic()
        if 0 < wait <= MAX_SETTLE_WAIT_S:
            log.warning("the runner of window %s never reported its end; waiting %.1f s for it before measuring",
                        lost.key, wait)
            time.sleep(wait)
        if time.monotonic() >= lost.busy_until_mono_s:
            self._lost = None
            self._after_lost = {"lost_window": lost.key, "waited_s": round(max(wait, 0.0), 3)}

    def _phone_state(self, t_begin: float) -> str:
        """Why the phone may not have been idle/busy as planned from ``t_begin`` ("" when it is known)."""
        lost = self._lost
        if lost is not None and t_begin < lost.busy_until_mono_s:
            return (f"the runner of window {lost.key} never reported its end (link lost) and may still have "
                    f"been running: up to {lost.busy_until_mono_s - t_begin:.1f} s into this window")
        return ""

    def _planned_s(self, key: str, n_inferences: int, warmup: int) -> float:
        est_s = self._est_ms.get(key, 1000.0) / 1000.0
        return (sync.marker_duration_s("start") + sync.marker_duration_s("end") + RUNNER_LOAD_S
                + (n_inferences + warmup) * est_s)

    def _marker_spread_s(self) -> float:
        """How far the markers' real duration may be from nominal (the phone's dd speed is not known)."""
        lo, hi = min(self.busy_scales), max(self.busy_scales)
        return max(abs(sync.marker_duration_s(k, s) - sync.marker_duration_s(k)) for k in ("start", "end")
                   for s in (lo, hi))

    # -- windows
    def _result(self, an: WindowAnalysis, src: ArraySource, tr, duration_s: float, n: int,
                lat: np.ndarray | None, extra: dict[str, Any]) -> WindowResult:
        t = ((src.sample_index - src.first_index) / src.rate_hz).astype(np.float32)
        arrays = {"t_s": t, "power_w": (np.asarray(src.current_a, np.float64) * src.voltage_v).astype(np.float32),
                  "phase_name": np.array([p[0] for p in an.phases], dtype="<U16"),
                  "phase_start_s": np.array([p[1] for p in an.phases], dtype=np.float64),
                  "phase_end_s": np.array([p[2] for p in an.phases], dtype=np.float64)}
        st = an.stats
        info = {"sync": an.sync, "dropped_samples": int(st.dropped), "bad_samples": int(st.bad_samples),
                "voltage_drift_frac": _num(st.voltage_drift_frac), "usb_current_a_max": _num(st.usb_current_a_max),
                "sync_error_bound_s": _num(an.sync_error_bound_s), "span_s": [an.span_s[0], an.span_s[1]],
                "sample0_index": int(src.first_index), "trace_path": str(tr.trace_path or ""), **extra}
        if self._after_lost is not None:
            info["after_lost_run"], self._after_lost = self._after_lost, None
        return WindowResult(n_inferences=n, duration_s=duration_s, busy_s=an.busy_s, latencies_ms=lat,
                            energy_j=an.energy_j, mean_power_w=an.mean_power_w, valid=an.valid, reason=an.reason,
                            trace=arrays, extra=info)

    def run_window(self, model: PreparedModel, n_inferences: int, warmup: int) -> WindowResult:
        self._settle()
        self._n += 1
        key = f"inf{self._n}-{model.key}"
        work = device_base.InferenceWorkload(self._runner(), self._remote[model.key], iterations=n_inferences,
                                             warmup=warmup, threads=self.plan.threads)
        cmd = "; ".join([sync.marker_command("start", self.dd_bytes_per_s), device_base.quote_argv(work.argv()),
                         sync.marker_command("end", self.dd_bytes_per_s)])
        t_begin = self.monitor.begin(key)
        state = self._phone_state(t_begin)
        t_cmd = time.monotonic()
        try:
            res = self.device.shell(cmd, timeout_s=600, check=False, retry=False)
        except BaseException:
            # the command's end was never seen: the runner may go on on the phone
            planned = self._planned_s(model.key, n_inferences, warmup)
            self._lost = LostRun(key, t_cmd, t_cmd + LOST_RUN_FACTOR * planned + LOST_RUN_MARGIN_S)
            try:
                self.monitor.end(key)
            except Exception as exc:  # noqa: BLE001 - the window is lost anyway; the first error is raised
                log.debug("ending window %s after a lost command: %s", key, exc)
            raise
        t_done = time.monotonic()
        tr = self.monitor.end(key, at_mono_s=t_done + 0.02)
        from device.runner import parse_runner_output

        run = parse_runner_output(res.output, warmup)
        lat = np.asarray(run.latencies_ms, dtype=np.float64)
        inference_s = float(lat.sum()) / 1000.0
        t0 = tr.start_mono_s
        host_a = t_cmd - t0 + sync.marker_duration_s("start") - sync.GUARD_S
        host_b = t_done - t0 - sync.marker_duration_s("end") + sync.GUARD_S
        # the command took t_done - t_cmd on the host; the phone needed at least the markers and the timed
        # inferences: the rest (link latency, program load, warm-up) bounds where each host estimate can be off
        s_min = min(self.busy_scales)
        slack = (t_done - t_cmd) - (sync.marker_duration_s("start", s_min) + sync.marker_duration_s("end", s_min)
                                    + inference_s)
        marks = WindowMarks(host_a, host_b, kind="inference", sync=True,
                            host_error_s=max(slack, 0.0) + self._marker_spread_s(), inference_s=inference_s,
                            n_inferences=len(lat), phone_state=state)
        src = ArraySource.from_trace(tr)
        an = analyse_window(src, marks, self.limits)
        if an.sync != "markers":
            log.warning("sync markers not found in window %s; host timestamps (error up to %.1f ms)%s", key,
                        1e3 * (marks.host_error_s or 0.0), "" if an.valid else f": invalid ({an.reason})")
        from harness.latency import phases_of

        phases = phases_of(run.load_ms, run.warmup_latencies_ms, run.latencies_ms).to_dict()
        return self._result(an, src, tr, t_done - t_begin, len(lat), lat, phases)

    def idle_window(self, duration_s: float) -> WindowResult:
        self._settle()
        self._n += 1
        key = f"idle{self._n}"
        t_begin = self.monitor.begin(key)
        state = self._phone_state(t_begin)
        device_base.idle_baseline(self.device, duration_s)
        tr = self.monitor.end(key)
        src = ArraySource.from_trace(tr)
        an = analyse_window(src, WindowMarks(0.0, float(tr.duration_s), kind="idle", phone_state=state),
                            self.limits)
        return self._result(an, src, tr, time.monotonic() - t_begin, 0, None, {})


class RealPhoneBackend(PhoneBackend):
    """A real phone over ADB (the plan's serial: TCP ``host:port`` or USB serial, chosen by
    ``harness.device_names.check_device_args``) and a Monsoon or the fuel gauge.  A phone a running adb
    server holds is driven through that server (``device.adb_select.open_phone``); ``key``: ``--key``."""

    def __init__(self, profile_name: str, plan: RunPlan, lab_dir: Path, name: str, key: str | None = None):
        from device.profiles import load_profile

        super().__init__(None, None, load_profile(profile_name), plan, virtual=False, name=name)
        self.lab_dir = Path(lab_dir)
        self.instrument = plan.monitor
        self.key = key

    def open(self) -> None:
        from device.adb import AdbOptions
        from device.adb_select import open_phone

        if not self.plan.serial:
            raise InputError(f"--device {self.name}: give the phone with --serial (USB serial or host:port) "
                             "or ANDROID_SERIAL")
        self.device = open_phone(self.plan.serial, AdbOptions(key_path=self.key or ""))
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            trace = self.lab_dir / f"trace-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.ptrc"
            self.lab_dir.mkdir(parents=True, exist_ok=True)
            if self.plan.monitor == "monsoon":
                from device.monsoon import MonsoonMonitor, MonsoonOptions

                serial = int(self.plan.monitor_serial) if self.plan.monitor_serial.isdigit() else None
                self.monitor = MonsoonMonitor(MonsoonOptions(serial=serial, voltage_v=self.profile.monsoon_voltage_v),
                                              trace)
            else:
                from device.gauge import FuelGaugeMonitor

                self.monitor = FuelGaugeMonitor(self.device, trace)
            super().open()
        except BaseException:
            self.device.close()
            raise

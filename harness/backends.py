"""Devices for ``harness run``: name resolution, the backends, and model preparation.

``--device host``: real host timing through ExecuTorch's runtime (no energy), as ``harness.hostrun``.
``--device virtual`` (default) or ``virtual-<profile>``: the virtual phone over loopback ADB and the
virtual Monsoon on a virtual USB bus, the same code paths as a real phone.
``--device <profile>`` (``nexus4``...): a real phone over ADB and a Monsoon (or the fuel gauge).

Parts built by other issues are imported lazily; when one is missing the backend fails with one
clear line naming it, before anything is written.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.files import file_hash
from harness.cliutil import progress
from harness.errors import DATA_ERRORS, INPUT_ERRORS, HarnessError, InputError, UsageError
from harness.plan import RunPlan
from harness.runloop import Backend, PreparedModel, WindowResult

log = logging.getLogger(__name__)

VIRTUAL_DEFAULT_PROFILE = "virtual-nexus4"


class MissingPartError(HarnessError):
    """A part of the project this backend needs is not installed/built yet (exit code 1)."""


def _need(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPartError(f"{what} needs {module} ({exc}); that part of the project is not available") from None


def _profiles_module():
    try:
        return importlib.import_module("device.profiles")
    except ImportError:
        return None


@dataclass(frozen=True)
class DeviceChoice:
    """A resolved ``--device``: kind (host|virtual|real) and profile name ('' for the host)."""

    name: str
    kind: str
    profile: str


def known_devices() -> list[str]:
    """Names ``--device`` accepts."""
    names = ["host", "virtual"]
    prof = _profiles_module()
    if prof is not None:
        names += prof.known_profiles()
    return names


def resolve_device(name: str) -> DeviceChoice:
    """Map a ``--device`` value to a kind and profile; InputError listing the known ones."""
    name = (name or "virtual").strip()
    if name == "host":
        return DeviceChoice("host", "host", "")
    prof = _profiles_module()
    if name == "virtual":
        return DeviceChoice("virtual", "virtual", VIRTUAL_DEFAULT_PROFILE)
    if prof is None:
        raise InputError(f"unknown device {name!r}; known: host, virtual (device profiles are not installed)")
    if name not in prof.known_profiles():
        raise InputError(f"unknown device or profile {name!r}; known: {', '.join(known_devices())}")
    p = prof.load_profile(name)
    return DeviceChoice(name, "virtual" if p.virtual else "real", name)


# --------------------------------------------------------------------------- host


class HostBackend(Backend):
    """This machine, timed with ExecuTorch's runtime (``device.runner.HostProgram``, as ``harness.hostrun``).

    Each model is loaded once in :meth:`prepare`; a window is ``warmup`` untimed then N timed
    ``run_once`` calls on the runner's default input.  No energy: idle windows only keep the
    schedule's shape.
    """

    name = "host"
    virtual = False
    measures_energy = False
    instrument = "none (host timing)"

    def __init__(self, threads: int = 1):
        self.threads = threads
        self._runner = _need("device.runner", "--device host")
        self._progs: dict[str, Any] = {}

    def fingerprint(self) -> dict[str, Any]:
        hostrun = _need("harness.hostrun", "--device host")
        fp = dict(hostrun.host_fingerprint(self.threads))
        fp.pop("load_avg_1min", None)  # not part of what the device is
        return {"kind": "host", **fp}

    def prepare(self, model: PreparedModel, warmup: int) -> float:
        r = self._runner
        # size the pool BEFORE loading: the XNNPACK delegate binds the pool at load time, and a resize
        # afterwards makes the program refuse to run (issue 12).  A no-op when the size is already right;
        # if something else resized it since, the programs loaded before are loaded again.
        if r.set_host_threads(self.threads) != self.threads:
            for key, old in list(self._progs.items()):
                self._progs[key] = self._load(old.path)
        prog = self._load(model.artifact_path)
        self._progs[model.key] = prog
        for _ in range(max(1, warmup)):
            prog.run_once()
        return float(np.median([prog.run_once() for _ in range(5)]))

    def _load(self, path):
        r = self._runner
        prog = r.HostProgram(path)
        prog.set_input(r.default_input(prog.input_shape, prog.input_dtype))
        return prog

    def run_window(self, model: PreparedModel, n_inferences: int, warmup: int) -> WindowResult:
        prog = self._progs[model.key]
        t0 = time.monotonic()
        for _ in range(warmup):
            prog.run_once()
        lat = np.fromiter((prog.run_once() for _ in range(n_inferences)), dtype=np.float64, count=n_inferences)
        if not np.all(np.isfinite(prog.output())):
            return WindowResult(n_inferences=n_inferences, duration_s=time.monotonic() - t0, valid=False,
                                reason="model produced NaN/inf", latencies_ms=lat)
        return WindowResult(n_inferences=n_inferences, duration_s=time.monotonic() - t0,
                            busy_s=float(lat.sum()) / 1000.0, latencies_ms=lat)

    def idle_window(self, duration_s: float) -> WindowResult:
        t0 = time.monotonic()
        if duration_s > 0:
            time.sleep(duration_s)
        return WindowResult(duration_s=time.monotonic() - t0, busy_s=duration_s)


# --------------------------------------------------------------------------- phones (real or virtual)


def energy_over(t_s: np.ndarray, power_w: np.ndarray, a_s: float, b_s: float) -> tuple[float, float]:
    """(energy J, mean power W) of the samples starting in ``[a_s, b_s)``: mean power x span."""
    sel = (t_s >= a_s) & (t_s < b_s)
    if not sel.any() or b_s <= a_s:
        return math.nan, math.nan
    p = float(np.mean(power_w[sel]))
    return p * (b_s - a_s), p


class PhoneBackend(Backend):
    """A phone over ADB (``device.base.Device``) measured by a ``device.power.PowerMonitor``.

    An inference window is one shell line: start marker, ``executor_runner`` with N + warm-up
    executions, end marker (``device/sync.py``); the monitor records from before to after it.  The
    runner runs between the start marker's sync point and the end marker's guard (sync points found
    in the current trace; the host clock is the fallback); its N timed inferences are the last
    ``sum(latencies)`` seconds of that span (program load and warm-up come first and are left out),
    and their energy is mean power x that span.  An idle
    window is ``sleep`` on the phone.  Both keep their trace (time, power, shaded phases).
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
        self._n = 0
        self._sync = _need("device.sync", f"--device {name}")
        self._base = _need("device.base", f"--device {name}")
        self.dd_bytes_per_s = self._sync.VIRTUAL_DD_BYTES_PER_S
        self.busy_scales = (1.0,) if virtual else self._sync.REAL_PHONE_SCALES

    # -- lifecycle
    def open(self) -> None:
        """Lock the device, run preflight (fatal failures stop here), start the monitor."""
        lock_mod = _need("device.lock", f"--device {self.name}")
        pre = _need("device.preflight", f"--device {self.name}")
        self._lock = lock_mod.DeviceLock(self.device.name).acquire()
        runner = Path(self.profile.runner.binary).expanduser() if self.profile.runner.binary else None
        report = pre.preflight(self.device, self.profile, runner)
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
            _need("device.push", f"--device {self.name}").checked_push(
                self.device, Path(spec.binary).expanduser(), spec.remote_path, mode=0o755)
            self._runner_pushed = True
        return spec.remote_path

    def prepare(self, model: PreparedModel, warmup: int) -> float:
        remote = f"{self.profile.work_dir}/models/{model.artifact_hash[:16]}.pte"
        self.device.run(["mkdir", "-p", f"{self.profile.work_dir}/models"], timeout_s=30)
        _need("device.push", f"--device {self.name}").checked_push(self.device, model.artifact_path, remote)
        self._remote[model.key] = remote
        work = self._base.InferenceWorkload(self._runner(), remote, iterations=3, warmup=max(1, warmup),
                                            threads=self.plan.threads)
        res = self._base.run_inferences(self.device, work, timeout_s=120)
        # the phone's output for the runner's fixed input must match the host's: a broken phone build or a
        # corrupted model cannot pass as fast
        from device.runner import check_output, host_reference

        check_output(res, host_reference(model.artifact_path), what=f"{self.name}: {model.key}")
        return float(np.median(res.latencies_ms))

    def _trace_arrays(self, tr, phases: list[tuple[str, float, float]]) -> dict[str, np.ndarray]:
        return {"t_s": tr.time_s.astype(np.float32), "power_w": tr.power_w.astype(np.float32),
                "phase_name": np.array([p[0] for p in phases], dtype="<U16"),
                "phase_start_s": np.array([p[1] for p in phases], dtype=np.float64),
                "phase_end_s": np.array([p[2] for p in phases], dtype=np.float64)}

    def run_window(self, model: PreparedModel, n_inferences: int, warmup: int) -> WindowResult:
        sync = self._sync
        self._n += 1
        key = f"inf{self._n}-{model.key}"
        work = self._base.InferenceWorkload(self._runner(), self._remote[model.key], iterations=n_inferences,
                                            warmup=warmup, threads=self.plan.threads)
        cmd = "; ".join([sync.marker_command("start", self.dd_bytes_per_s), self._base.quote_argv(work.argv()),
                         sync.marker_command("end", self.dd_bytes_per_s)])
        t_begin = self.monitor.begin(key)
        t_cmd = time.monotonic()
        res = self.device.shell(cmd, timeout_s=600, check=False, retry=False)
        t_done = time.monotonic()
        tr = self.monitor.end(key, at_mono_s=t_done + 0.02)
        from device.runner import parse_runner_output

        run = parse_runner_output(res.output, warmup)
        lat = np.asarray(run.latencies_ms, dtype=np.float64)
        t0 = tr.start_mono_s
        idx = tr.sample_index - tr.sample_index[0] if tr.samples else tr.sample_index
        host_a = t_cmd - t0 + sync.marker_duration_s("start") - sync.GUARD_S
        host_b = t_done - t0 - sync.marker_duration_s("end") + sync.GUARD_S
        how = "markers"
        try:
            ma = sync.find_marker(tr.current_a, tr.rate_hz, "start", expected_sync_s=host_a, search_s=1.0,
                                  busy_scales=self.busy_scales, sample_index=idx)
            mb = sync.find_marker(tr.current_a, tr.rate_hz, "end", expected_sync_s=host_b, search_s=1.0,
                                  busy_scales=self.busy_scales, sample_index=idx)
            a, b = ma.sync_point_s, mb.sync_point_s
            marks = [("sync", ma.marker_start_s, a), ("sync", b, b + (mb.last_burst_end_s - mb.first_burst_s))]
        except Exception as exc:  # noqa: BLE001 - the host clock is the documented fallback
            log.warning("sync markers not found in window %s (%s); using host timestamps", key, exc)
            a, b, how = host_a, host_b, "host"
            marks = []
        # the timed inferences are the last part of the runner's run, just before the end marker's guard:
        # the span [end - sum(latencies), end] excludes program load and warm-up
        b_inf = b - sync.GUARD_S
        a_inf = min(max(a, b_inf - float(lat.sum()) / 1000.0), b_inf)
        t = tr.time_s
        energy, power = energy_over(t, tr.power_w, a_inf, b_inf)
        valid, reason = True, ""
        if tr.dropped_samples > 0.01 * max(tr.expected_samples, 1):
            valid, reason = False, f"{tr.dropped_samples} dropped samples"
        if not tr.calibrated:
            valid, reason = False, "monitor not calibrated"
        phases = marks + [("warmup", a, a_inf), ("inference", a_inf, b_inf)]
        return WindowResult(n_inferences=len(lat), duration_s=t_done - t_begin, busy_s=b_inf - a_inf, latencies_ms=lat,
                            energy_j=energy, mean_power_w=power, valid=valid, reason=reason,
                            trace=self._trace_arrays(tr, phases),
                            extra={"sync": how, "dropped_samples": int(tr.dropped_samples)})

    def idle_window(self, duration_s: float) -> WindowResult:
        self._n += 1
        key = f"idle{self._n}"
        t_begin = self.monitor.begin(key)
        self._base.idle_baseline(self.device, duration_s)
        tr = self.monitor.end(key)
        t = tr.time_s
        span = float(tr.duration_s)
        energy, power = energy_over(t, tr.power_w, 0.0, span)
        valid = tr.dropped_samples <= 0.01 * max(tr.expected_samples, 1) and tr.calibrated
        return WindowResult(duration_s=time.monotonic() - t_begin, busy_s=span, energy_j=energy,
                            mean_power_w=power, valid=valid,
                            reason="" if valid else f"{tr.dropped_samples} dropped samples or uncalibrated",
                            trace=self._trace_arrays(tr, [("idle", 0.0, span)]),
                            extra={"dropped_samples": int(tr.dropped_samples)})


def power_model_for(profile) -> Any:
    """The virtual Monsoon's power model for a device profile (its ``[power]`` table; defaults otherwise)."""
    pm = _need("device.power_model", "the virtual lab")
    power = dict(getattr(profile, "power", {}) or {})
    names = {f for f in pm.PowerModelProfile.__dataclass_fields__}
    if power and set(power) <= names:
        from harness.options import options_from_mapping

        return options_from_mapping(pm.PowerModelProfile, power, f"device profile {profile.name} [power]")
    v = float(getattr(profile, "monsoon_voltage_v", 0) or pm.PowerModelProfile().supply_voltage_v)
    kw: dict[str, Any] = {"name": profile.name, "supply_voltage_v": v,
                          "cores": int(getattr(profile, "cpu_count", 4) or 4)}
    if "idle_a" in power:
        kw["idle_power_w"] = float(power["idle_a"]) * v
    if "busy_thread_a" in power:
        kw["active_power_per_core_w"] = float(power["busy_thread_a"]) * v
    kw.update({k: power[k] for k in power if k in names})
    return pm.PowerModelProfile(**kw)


def _prewarm_runtime() -> None:
    try:
        importlib.import_module("executorch.runtime")
    except Exception as exc:  # noqa: BLE001 - only a head start; the runner reports real failures
        log.debug("prewarm of executorch.runtime failed: %s", exc)


class VirtualLabBackend(PhoneBackend):
    """The virtual phone (loopback ADB, ADB auth with our key) and the virtual Monsoon, started on open."""

    def __init__(self, profile_name: str, plan: RunPlan, lab_dir: Path, name: str = "virtual",
                 monsoon_faults: dict[str, Any] | None = None):
        profiles = _need("device.profiles", "the virtual lab")
        for mod in ("device.virtual_phone", "device.adb", "device.monsoon", "device.virtual_monsoon"):
            _need(mod, "the virtual lab")
        super().__init__(None, None, profiles.load_profile(profile_name), plan, virtual=True, name=name)
        self.lab_dir = Path(lab_dir)
        self.instrument = "monsoon (virtual HVPM)"
        self.monsoon_faults = dict(monsoon_faults or {})  # VirtualMonsoonConfig fields, e.g. fail_after_s (tests)
        self._phone = None

    @property
    def phone(self):
        """The running ``VirtualPhone`` (None before open / after close), e.g. to inject faults."""
        return self._phone

    def open(self) -> None:
        from device.adb import AdbDevice, AdbOptions, ensure_adb_key
        from device.monsoon import MonsoonMonitor, MonsoonOptions
        from device.virtual_monsoon import VirtualMonsoonConfig
        from device.virtual_phone import VirtualPhone

        self.lab_dir.mkdir(parents=True, exist_ok=True)
        # the phone's executor_runner runs in this process: import the ExecuTorch runtime while the phone,
        # the monitor and preflight start (it is the slowest part of a warm start)
        threading.Thread(target=_prewarm_runtime, name="prewarm-executorch", daemon=True).start()
        key = ensure_adb_key(self.lab_dir / "adbkey")
        try:
            self._phone = VirtualPhone(self.lab_dir / "phone", self.profile,
                                       authorized_keys=(Path(f"{key}.pub"),),
                                       serial=f"virtual-{self.profile.name}").start()
            self.device = AdbDevice(self._phone.address, AdbOptions(key_path=str(key))).connect()
            cfg = VirtualMonsoonConfig(root=str(self.lab_dir), timeline_path=str(self._phone.timeline_path),
                                       profile=power_model_for(self.profile), **self.monsoon_faults)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.monitor = MonsoonMonitor(MonsoonOptions(voltage_v=self.profile.monsoon_voltage_v),
                                          self.lab_dir / f"trace-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.ptrc",
                                          virtual=cfg)
            super().open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.monitor is not None and self.device is not None:
                super().close()
            elif self.device is not None:
                self.device.close()
        finally:
            if self._phone is not None:
                self._phone.stop()
                self._phone = None


class RealPhoneBackend(PhoneBackend):
    """A real phone over ADB (``--serial``, TCP ``host:port`` or USB serial) and a Monsoon or the fuel gauge."""

    def __init__(self, profile_name: str, plan: RunPlan, lab_dir: Path, name: str):
        profiles = _need("device.profiles", f"--device {name}")
        for mod in ("device.adb", "device.monsoon" if plan.monitor == "monsoon" else "device.gauge"):
            _need(mod, f"--device {name}")
        super().__init__(None, None, profiles.load_profile(profile_name), plan, virtual=False, name=name)
        self.lab_dir = Path(lab_dir)
        self.instrument = plan.monitor

    def open(self) -> None:
        from device.adb import connect

        if not self.plan.serial:
            raise InputError(f"--device {self.name}: give the phone with --serial (USB serial or host:port)")
        self.device = connect(self.plan.serial)
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
                gauge = _need("device.gauge", f"--device {self.name} --monitor gauge")
                self.monitor = gauge.FuelGaugeMonitor(self.device, trace)
            super().open()
        except BaseException:
            self.device.close()
            raise


# ---- device-argument checks (issue 12): run by ``harness run`` before any build, export or file write


def check_device_args(choice: DeviceChoice, plan: RunPlan) -> None:
    """Refuse device arguments that cannot work (UsageError, one line) before any slow work: a real phone
    needs ``--serial`` (USB serial or ``host:port``), a Monsoon serial is a number and only for
    ``--monitor monsoon``, and the profile names an ``executor_runner`` that exists; the parts the backend
    needs are installed.  (The profile itself was loaded and validated by :func:`resolve_device`.)"""
    if choice.kind != "real":
        if plan.serial or plan.monitor_serial:
            raise UsageError(f"--serial/--monitor-serial are for real phones, not --device {choice.name}")
        return
    where = f"--device {choice.name}"
    if not plan.serial.strip():
        raise UsageError(f"{where}: give the phone with --serial (USB serial or host:port)")
    adb = _need("device.adb", where)
    try:
        adb.parse_address(plan.serial)
    except INPUT_ERRORS as exc:
        raise UsageError(f"{where}: --serial: {exc}") from None
    profile = _need("device.profiles", where).load_profile(choice.profile)
    if plan.monitor == "monsoon":
        if plan.monitor_serial and not plan.monitor_serial.strip().isdigit():
            raise UsageError(f"{where}: --monitor-serial must be the Monsoon's serial number, "
                             f"got {plan.monitor_serial!r}")
        _need("device.monsoon", where)
    else:
        if plan.monitor_serial:
            raise UsageError(f"{where}: --monitor-serial is for --monitor monsoon, not {plan.monitor}")
        _need("device.gauge", where)
    spec = profile.runner
    if not spec.builtin:
        if not spec.binary:
            raise UsageError(f"{where}: profile {profile.name} names no executor_runner binary "
                             "(set [runner].binary in a user profile, see docs/devices.md)")
        if not Path(spec.binary).expanduser().is_file():
            raise UsageError(f"{where}: profile {profile.name}: executor_runner {spec.binary} not found")


def make_backend(choice: DeviceChoice, plan: RunPlan, work_dir: Path = Path("results")) -> Backend:
    """The backend for a resolved device (not yet opened); ``work_dir`` holds lab files and raw traces."""
    if choice.kind == "host":
        return HostBackend(threads=plan.threads)
    if choice.kind == "virtual":
        return VirtualLabBackend(choice.profile, plan, Path(work_dir) / "virtual-lab", name=choice.name)
    return RealPhoneBackend(choice.profile, plan, Path(work_dir) / "phone-traces", name=choice.name)


# --------------------------------------------------------------------------- models


def model_key(level_pct: int) -> str:
    return f"L{level_pct}"


def export_pte(weights, out_path: Path) -> Path:
    """Export ``weights`` to an ExecuTorch ``.pte`` at ``out_path`` through the export issue's API."""
    from harness.exportcheck import export_pte as _export

    _export(weights, out_path)
    return out_path


def export_workers(n_exports: int) -> int:
    """Worker processes for ``n_exports`` uncached exports: one per core but one, at least 1 and at most 4,
    so the harness's own process keeps a core to build and to start the lab while they export.
    ``HARNESS_EXPORT_WORKERS=N`` overrides; 0 exports in the harness's own process."""
    env = os.environ.get("HARNESS_EXPORT_WORKERS", "").strip()
    if env:
        if not env.isdigit():
            raise InputError(f"HARNESS_EXPORT_WORKERS must be a whole number >= 0, got {env!r}")
        if int(env) == 0:
            return 0
        cap = int(env)
    else:
        cap = min(max(1, (os.cpu_count() or 1) - 1), 4)
    return max(1, min(cap, n_exports))


def _init_export_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _export_job(weights, pte: str) -> tuple[str, float]:
    """Export one model to the cache path ``pte`` (in a worker process or this one); the exporter verifies
    the program and writes it atomically."""
    t0 = time.perf_counter()
    pte_path = Path(pte)
    pte_path.parent.mkdir(parents=True, exist_ok=True)  # fail before the export, not after it
    export_pte(weights, pte_path)
    return pte, time.perf_counter() - t0


class _Exporter:
    """Exports models to the cache while the caller goes on: a pool of ``n_workers`` worker processes
    (spawned, one torch thread each) started on the first export; with 0 workers, in this process at once."""

    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self._pool = None
        self._futures: list = []
        self.export_s: list[float] = []

    def submit(self, weights, pte: Path) -> None:
        if self.n_workers == 0:
            self.export_s.append(_export_job(weights, str(pte))[1])
            return
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.n_workers, initializer=_init_export_worker,
                                             mp_context=multiprocessing.get_context("spawn"))
        self._futures.append(self._pool.submit(_export_job, weights, str(pte)))

    def wait(self) -> None:
        """Wait for every export; the first failure is raised (the others are cancelled)."""
        try:
            for fut in progress(self._futures, total=len(self._futures), desc="exporting", unit="model"):
                try:
                    self.export_s.append(fut.result()[1])
                except BrokenProcessPool as exc:
                    raise HarnessError(f"an export worker process died ({exc}); run again, or set "
                                       "HARNESS_EXPORT_WORKERS=0 to export in this process") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ModelPreparation:
    """Builds the base model's specialists now and exports the uncached ones in the background.

    ``ModelPreparation(plan, cache_dir)`` builds every specialist in this process, handing each uncached
    model to the exporter (:func:`export_workers` processes) as soon as it exists; the caller can then do
    other work (``harness run`` starts the lab) before :meth:`finish` waits for the exports and returns
    the prepared models.  :meth:`close` (or leaving a ``with`` block) stops unfinished exports.
    """

    def __init__(self, plan: RunPlan, cache_dir: Path, accuracy: bool = False):
        from specialist.model import load_weights

        build = _need("specialist.build", "building specialists")
        flops_mod = _need("specialist.flops", "building specialists")
        methods = _need("specialist.methods", "building specialists")
        self.plan = plan
        self.method = str(plan.method or methods.DEFAULT_METHOD)
        self.cache_dir = Path(cache_dir)
        self._t0 = time.perf_counter()
        self._submitted: set[str] = set()
        base = load_weights(plan.model or None)
        self.entries: list[tuple[int, Any, int, float]] = [(0, base, int(flops_mod.BASE_FLOPS), 0.0)]
        self.exporter = _Exporter(export_workers(1 + len(plan.levels)))  # workers start on the first export
        try:
            self._hand_over(base)
            for level in progress(plan.levels, total=len(plan.levels), desc="building", unit="model"):
                spec = build.build_specialist(list(plan.classes), float(level), self.method, base=base,
                                              stats_path=plan.stats or None)
                self.entries.append((int(level), spec.weights, int(spec.flops), float(spec.flops_pruned_pct)))
                self._hand_over(spec.weights)
            self.accuracies: dict[int, float] = _accuracies(self.entries, plan) if accuracy else {}
        except BaseException:
            self.close()
            raise

    def _pte(self, weights) -> Path:
        return self.cache_dir / f"{weights.content_hash()[:24]}.pte"

    def _hand_over(self, weights) -> None:
        pte = self._pte(weights)
        if not pte.is_file() and str(pte) not in self._submitted:
            self._submitted.add(str(pte))
            self.exporter.submit(weights, pte)

    def finish(self) -> list[PreparedModel]:
        """Wait for the exports; the prepared models (base first, then the levels in plan order)."""
        self.exporter.wait()  # closes the pool, also when an export failed
        if self._submitted:
            log.info("exported %d model(s) in %.1f s wall (%d worker(s), %.1f s each on average)",
                     len(self._submitted), time.perf_counter() - self._t0, self.exporter.n_workers,
                     sum(self.exporter.export_s) / max(len(self.exporter.export_s), 1))
        out = []
        for level, weights, flops, pruned in self.entries:
            pte = self._pte(weights)
            out.append(PreparedModel(model_key(level), level, tuple(self.plan.classes), self.method, flops, pruned,
                                     weights.content_hash(), file_hash(pte), str(pte),
                                     self.accuracies.get(level)))
        return out

    def close(self) -> None:
        self.exporter.close()

    def __enter__(self) -> ModelPreparation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare_models(plan: RunPlan, cache_dir: Path, accuracy: bool = False) -> list[PreparedModel]:
    """The base model and one specialist per level, each exported to ``.pte`` (cached by model hash).

    Exports not in the cache run in worker processes (:func:`export_workers`) while the remaining
    specialists are built, so a cold start costs about one export per core instead of one per model.
    """
    with ModelPreparation(plan, cache_dir, accuracy) as prep:
        return prep.finish()


def stored_models(records, plan: RunPlan, check_hash: bool = True) -> list[PreparedModel] | None:
    """The models of a stored run when all of the plan's are stored and every artifact is still on disk with
    its hash (for --resume); else None (build them again)."""
    if {m.model_key for m in records} != {model_key(lv) for lv in (0, *plan.levels)}:
        return None
    out = []
    for m in records:
        p = Path(m.artifact_path)
        if not p.is_file() or (check_hash and file_hash(p) != m.artifact_hash):
            return None
        out.append(PreparedModel(m.model_key, m.level_pct, tuple(int(c) for c in m.classes.split(",") if c),
                                 m.method, m.flops, m.flops_pruned_pct, m.model_hash, m.artifact_hash,
                                 m.artifact_path, m.accuracy_pct))
    return out or None


ACCURACY_IMAGES_PER_CLASS = 200


def _accuracies(entries, plan: RunPlan) -> dict[int, float]:
    """Top-1 accuracy (%) on the first 200 test images of each target class (``specialist.accuracy``)."""
    from specialist.accuracy import subset_accuracy
    from specialist.data import load_split

    cls = sorted(plan.classes)
    try:
        test = load_split("test", plan.data or None).select(cls, per_class=ACCURACY_IMAGES_PER_CLASS)
    except DATA_ERRORS as exc:
        log.warning("accuracy skipped: %s", exc)
        return {}
    return {level: 100.0 * float(subset_accuracy(weights, cls, test, None if level == 0 else cls).accuracy)
            for level, weights, _, _ in entries}

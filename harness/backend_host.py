"""``--device host``: this machine timed through ExecuTorch's runtime (no energy), as ``harness.hostrun``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from harness.runloop import Backend, PreparedModel, WindowResult


class HostBackend(Backend):
    """This machine, timed with ExecuTorch's runtime (``device.runner.HostProgram``, as ``harness.hostrun``).

    Each model is loaded once in :meth:`prepare` (its load and first-inference times are the ones every
    window reports: the program stays loaded); a window is ``warmup`` untimed then N timed
    ``run_once`` calls on the runner's default input.  No energy: idle windows only keep the
    schedule's shape.
    """

    name = "host"
    virtual = False
    measures_energy = False
    instrument = "none (host timing)"

    def __init__(self, threads: int = 1):
        self.threads = threads
        from device import runner  # the ExecuTorch runtime: imported when a host backend is made

        self._runner = runner
        self._progs: dict[str, Any] = {}
        self._cold: dict[str, tuple[float, float]] = {}  # model key -> (load ms, first inference ms)

    def fingerprint(self) -> dict[str, Any]:
        from harness import hostrun

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
        t0 = time.perf_counter()
        prog = self._load(model.artifact_path)
        load_ms = (time.perf_counter() - t0) * 1000.0
        self._progs[model.key] = prog
        self._cold[model.key] = (load_ms, prog.run_once())
        for _ in range(max(1, warmup) - 1):
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
        warm = np.array([prog.run_once() for _ in range(warmup)], dtype=np.float64)
        load_ms, first_ms = self._cold.get(model.key, (None, None))
        phases = {"load_ms": load_ms, "first_inference_ms": first_ms, "warmup_ms": float(warm.sum())}
        lat = np.fromiter((prog.run_once() for _ in range(n_inferences)), dtype=np.float64, count=n_inferences)
        if not np.all(np.isfinite(prog.output())):
            return WindowResult(n_inferences=n_inferences, duration_s=time.monotonic() - t0, valid=False,
                                reason="model produced NaN/inf", latencies_ms=lat, extra=phases)
        return WindowResult(n_inferences=n_inferences, duration_s=time.monotonic() - t0,
                            busy_s=float(lat.sum()) / 1000.0, latencies_ms=lat, extra=phases)

    def etdump_profile(self, model: PreparedModel, etdump_path, runs: int):
        """Profiling mode (after the measurements): ``runs`` executions with the event tracer on; the ETDump
        is written to ``etdump_path`` (``device.etdump.profile_host``)."""
        from device.etdump import profile_host

        return profile_host(model.artifact_path, etdump_path, runs=runs, threads=self.threads)

    def idle_window(self, duration_s: float) -> WindowResult:
        t0 = time.monotonic()
        if duration_s > 0:
            time.sleep(duration_s)
        return WindowResult(duration_s=time.monotonic() - t0, busy_s=duration_s)

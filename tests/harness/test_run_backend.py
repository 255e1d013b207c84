"""A scripted Backend for the run-loop tests (a plugin of the public Backend interface, no device).

It stands in for a device the way a replayed recording would: each window returns preset numbers
after a short sleep.  Used in-process and by the kill -9 subprocess test.
"""

from __future__ import annotations

import time

import numpy as np

from harness.runloop import Backend, PreparedModel, WindowResult


def models(levels=(10, 50)) -> list[PreparedModel]:
    out = [PreparedModel("L0", 0, (0, 1, 2, 3, 4), "mean", 1000, 0.0, "h0", "a0", "m0.pte")]
    for lv in levels:
        out.append(PreparedModel(f"L{lv}", lv, (0, 1, 2, 3, 4), "mean", 1000 - 10 * lv, lv * 1.1,
                                 f"h{lv}", f"a{lv}", f"m{lv}.pte"))
    return out


class ScriptedBackend(Backend):
    name = "scripted"
    measures_energy = True
    instrument = "scripted"

    def __init__(self, sleep_s=0.0, noise=0.0, fail_windows=(), interrupt_at=None, seed=0):
        self.sleep_s = sleep_s
        self.noise = noise
        self.fail_windows = set(fail_windows)
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.rng = np.random.default_rng(seed)

    def fingerprint(self):
        return {"device": "scripted", "serial": "S1"}

    def prepare(self, model, warmup):
        return 10.0 * (1 - model.level_pct / 100)

    def _tick(self):
        self.calls += 1
        if self.interrupt_at is not None and self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.calls in self.fail_windows:
            raise ConnectionResetError("phone lost")
        if self.sleep_s:
            time.sleep(self.sleep_s)

    def run_window(self, model, n_inferences, warmup):
        self._tick()
        ms = 10.0 * (1 - model.level_pct / 100) * (1 + self.noise * self.rng.standard_normal())
        busy = ms * n_inferences / 1000
        # 1 W idle + 2 W while busy -> 2 mJ per ms of inference on top of idle
        return WindowResult(n_inferences=n_inferences, duration_s=busy, busy_s=busy,
                            latencies_ms=np.full(n_inferences, ms), energy_j=3.0 * busy, mean_power_w=3.0,
                            trace={"t_s": np.linspace(0, busy, 50), "power_w": np.full(50, 3.0)})

    def idle_window(self, duration_s):
        self._tick()
        return WindowResult(duration_s=duration_s, busy_s=duration_s, energy_j=1.0 * duration_s, mean_power_w=1.0)

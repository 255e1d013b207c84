"""``--device virtual`` (or ``virtual-<profile>``): the virtual phone over loopback ADB and the virtual
Monsoon on a virtual USB bus, started on open: the same code paths as a real phone (``harness.backend_phone``)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from device.lab_power import power_model_for
from harness.backend_phone import PhoneBackend
from harness.plan import RunPlan

log = logging.getLogger(__name__)


def _prewarm_runtime() -> None:
    try:
        import executorch.runtime  # noqa: F401 - imported for its side effect (a warm module cache)
    except Exception as exc:  # noqa: BLE001 - only a head start; the runner reports real failures
        log.debug("prewarm of executorch.runtime failed: %s", exc)


class VirtualLabBackend(PhoneBackend):
    """The virtual phone (loopback ADB, ADB auth with our key) and the virtual Monsoon, started on open."""

    def __init__(self, profile_name: str, plan: RunPlan, lab_dir: Path, name: str = "virtual",
                 monsoon_faults: dict[str, Any] | None = None):
        from device.profiles import load_profile

        super().__init__(None, None, load_profile(profile_name), plan, virtual=True, name=name)
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

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
from harness.errors import InputError
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
                 monsoon_faults: dict[str, Any] | None = None, connect: str | None = None,
                 key: str | None = None):
        from device.profiles import load_profile

        super().__init__(None, None, load_profile(profile_name), plan, virtual=True, name=name)
        self.lab_dir = Path(lab_dir)
        self.instrument = "monsoon (virtual HVPM)"
        self.monsoon_faults = dict(monsoon_faults or {})  # VirtualMonsoonConfig fields, e.g. fail_after_s (tests)
        self._phone = None
        # --connect (else ANDROID_SERIAL naming one): an externally started `harness virtual-phone` (its
        # entry: address, timeline, profile); --key: the ADB key to offer it (default: the lab's own)
        self.external = (_announced_phone(connect, self.profile.name) if connect else
                         _env_phone(self.profile.name))
        self.key = key

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
            if self.external is None:
                self._phone = VirtualPhone(self.lab_dir / "phone", self.profile,
                                           authorized_keys=(Path(f"{key}.pub"),),
                                           serial=f"virtual-{self.profile.name}").start()
            address, timeline = ((self.external["address"], self.external["timeline"]) if self.external else
                                 (self._phone.address, self._phone.timeline_path))
            own_key = self.key if (self.key and self.external) else str(key)
            self.device = AdbDevice(address, AdbOptions(key_path=own_key)).connect()
            cfg = VirtualMonsoonConfig(root=str(self.lab_dir), timeline_path=str(timeline),
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


def _env_phone(profile: str) -> dict[str, Any] | None:
    """The running virtual phone ``$ANDROID_SERIAL`` names (its address or serial), else None (the lab
    starts its own; an ANDROID_SERIAL naming a real phone does not concern the virtual lab)."""
    from device.adb_select import ENV_SERIAL, env_serial, matches
    from device.virtual_phone.registry import live_phones

    serial = env_serial()
    if not serial:
        return None
    found = [e for e in live_phones() if matches(e, serial)]
    if not found:
        log.info("%s=%s names no running virtual phone; the virtual lab starts its own", ENV_SERIAL, serial)
        return None
    if found[0].get("profile") != profile:
        raise InputError(f"{ENV_SERIAL}={serial}: that virtual phone emulates {found[0].get('profile')}, not "
                         f"{profile}; use --device {found[0].get('profile')} or unset {ENV_SERIAL}")
    log.info("%s=%s: measuring the running virtual phone at %s", ENV_SERIAL, serial, found[0]["address"])
    return found[0]


def _announced_phone(address: str, profile: str) -> dict[str, Any]:
    """The registry entry of the running virtual phone at ``address`` (``harness virtual-phone``)."""
    from device.virtual_phone.registry import live_phones

    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise InputError(f"--connect {address!r}: expected 127.0.0.1:PORT of a running `harness virtual-phone`")
    found = [e for e in live_phones() if int(e["port"]) == int(port)]
    if not found:
        raise InputError(f"--connect {address}: no virtual phone is running there (start one with "
                         f"`harness virtual-phone --port {port} --accept-new-keys`, same HARNESS_CACHE_DIR)")
    if found[0].get("profile") != profile:
        raise InputError(f"--connect {address}: that phone emulates {found[0].get('profile')}, not {profile}; "
                         f"use --device {found[0].get('profile')}")
    return found[0]

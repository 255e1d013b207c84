"""Devices for ``harness run``: :func:`make_backend` for a resolved ``--device``, and the public names of the
modules that hold each part (importable from here as before):

- ``harness.device_names``: ``--device`` resolution (:func:`resolve_device`, :class:`DeviceChoice`);
- ``harness.backend_host``: :class:`HostBackend` (this machine, ExecuTorch's runtime, no energy);
- ``harness.backend_phone``: :class:`PhoneBackend` (ADB + a power monitor; windows analysed by
  ``harness.window.analyse_window``) and :class:`RealPhoneBackend`;
- ``harness.backend_virtual``: :class:`VirtualLabBackend` (virtual phone + virtual Monsoon);
- ``harness.prepare``: model preparation, the export pool and cache (:class:`ModelPreparation`,
  :func:`prepare_models`, :func:`stored_models`, :func:`export_workers`);
- ``device.lab_power``: :func:`power_model_for` (a device profile's power model).
"""

from __future__ import annotations

from pathlib import Path

from device.lab_power import power_model_for
from harness.backend_host import HostBackend
from harness.backend_phone import PhoneBackend, RealPhoneBackend
from harness.backend_virtual import VirtualLabBackend
from harness.device_names import (
    VIRTUAL_DEFAULT_PROFILE,
    DeviceChoice,
    check_device_args,
    known_devices,
    resolve_device,
)
from harness.plan import RunPlan
from harness.prepare import (
    ModelPreparation,
    export_workers,
    model_key,
    prepare_models,
    stored_models,
)
from harness.runloop import Backend

__all__ = [
    "VIRTUAL_DEFAULT_PROFILE", "Backend", "DeviceChoice", "HostBackend", "check_device_args", "ModelPreparation", "PhoneBackend",
    "RealPhoneBackend", "VirtualLabBackend", "export_workers", "known_devices", "make_backend",
    "model_key", "power_model_for", "prepare_models", "resolve_device", "stored_models",
]


def make_backend(choice: DeviceChoice, plan: RunPlan, work_dir: Path = Path("results"),
                 connect: str | None = None, key: str | None = None) -> Backend:
    """The backend for a resolved device (not yet opened); ``work_dir`` holds lab files and raw traces;
    ``connect`` (virtual only): the address of a running ``harness virtual-phone`` to measure instead;
    ``key``: the ADB private key to offer the phone (``--key``)."""
    if choice.kind == "host":
        return HostBackend(threads=plan.threads)
    if choice.kind == "virtual":
        return VirtualLabBackend(choice.profile, plan, Path(work_dir) / "virtual-lab", name=choice.name,
                                 connect=connect, key=key)
    return RealPhoneBackend(choice.profile, plan, Path(work_dir) / "phone-traces", name=choice.name, key=key)

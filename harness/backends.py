"""Devices for ``harness run``: name resolution, the backends, and model preparation.

``--device host``: real host timing through ExecuTorch's runtime (no energy).
``--device virtual`` (default) or ``virtual-<profile>``: the virtual phone over loopback ADB and the
virtual Monsoon on a virtual USB bus, the same code paths as a real phone.
``--device <profile>`` (``nexus4``...): a real phone over ADB and a Monsoon (or the fuel gauge).

Parts built by other issues are imported lazily; when one is missing the backend fails with one
clear line naming it, before anything is written.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, InputError
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
    """This machine, timed with ExecuTorch's runtime (device/runner.py ``run_host``); no energy."""

    name = "host"
    virtual = False
    measures_energy = False
    instrument = "none (host timing)"

    def __init__(self, threads: int = 1):
        self.threads = threads
        self._runner = _need("device.runner", "--device host")

    def fingerprint(self) -> dict[str, Any]:
        import executorch  # noqa: F401  (version below)
        import torch

        try:
            from importlib.metadata import version

            et = version("executorch")
        except Exception:  # noqa: BLE001
            et = "?"
        return {"kind": "host", "node": platform.node(), "machine": platform.machine(),
                "processor": platform.processor(), "cpus": os.cpu_count(), "system": platform.system(),
                "torch": torch.__version__, "executorch": et, "threads": self.threads}

    def _run(self, model: PreparedModel, n: int, warmup: int):
        spec = self._runner.RunSpec(model_path=model.artifact_path, iterations=n, warmup=warmup, threads=self.threads)
        return self._runner.run_host(spec)

    def prepare(self, model: PreparedModel, warmup: int) -> float:
        res = self._run(model, 5, max(1, warmup))
        return float(np.median(res.latencies_ms))

    def run_window(self, model: PreparedModel, n_inferences: int, warmup: int) -> WindowResult:
        t0 = time.monotonic()
        res = self._run(model, n_inferences, warmup)
        lat = np.asarray(res.latencies_ms, dtype=np.float64)
        return WindowResult(n_inferences=len(lat), duration_s=time.monotonic() - t0, busy_s=float(lat.sum()) / 1000.0,
                            latencies_ms=lat)

    def idle_window(self, duration_s: float) -> WindowResult:
        t0 = time.monotonic()
        if duration_s > 0:
            time.sleep(duration_s)
        return WindowResult(duration_s=time.monotonic() - t0, busy_s=duration_s)


def make_backend(choice: DeviceChoice, plan: RunPlan) -> Backend:
    """The backend for a resolved device (not yet opened)."""
    if choice.kind == "host":
        return HostBackend(threads=plan.threads)
    if choice.kind == "virtual":
        mod = _need("harness.phonelab", f"--device {choice.name}")
        return mod.VirtualLabBackend(choice.profile, plan)
    mod = _need("harness.phonelab", f"--device {choice.name}")
    return mod.PhoneBackend(choice.profile, plan)


# --------------------------------------------------------------------------- models


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_key(level_pct: int) -> str:
    return f"L{level_pct}"


def prepare_models(plan: RunPlan, cache_dir: Path, accuracy: bool = False) -> list[PreparedModel]:
    """Build the base model and one specialist per level, export each to ``.pte`` (cached by hash)."""
    _need("specialist.export", "exporting models for harness run")
    raise MissingPartError("model preparation is not wired yet")

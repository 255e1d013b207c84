"""``--device`` names: ``host``, ``virtual`` (the virtual lab with :data:`VIRTUAL_DEFAULT_PROFILE`) or a
device profile's name (``nexus4``, ``virtual-nexus4``...), resolved to a kind and a profile."""

from __future__ import annotations

from dataclasses import dataclass

from device import profiles
from harness.errors import INPUT_ERRORS, InputError, UsageError

VIRTUAL_DEFAULT_PROFILE = "virtual-nexus4"


@dataclass(frozen=True)
class DeviceChoice:
    """A resolved ``--device``: kind (host|virtual|real) and profile name ('' for the host)."""

    name: str
    kind: str
    profile: str


def known_devices() -> list[str]:
    """Names ``--device`` accepts."""
    return ["host", "virtual", *profiles.known_profiles()]


def resolve_device(name: str) -> DeviceChoice:
    """Map a ``--device`` value to a kind and profile; InputError listing the known ones."""
    name = (name or "virtual").strip()
    if name == "host":
        return DeviceChoice("host", "host", "")
    if name == "virtual":
        return DeviceChoice("virtual", "virtual", VIRTUAL_DEFAULT_PROFILE)
    if name not in profiles.known_profiles():
        raise InputError(f"unknown device or profile {name!r}; known: {', '.join(known_devices())}")
    p = profiles.load_profile(name)
    return DeviceChoice(name, "virtual" if p.virtual else "real", name)


def check_device_args(choice: DeviceChoice, plan) -> None:
    """Refuse device arguments that cannot work (UsageError, one line) before any slow work: a real phone
    needs ``--serial`` (USB serial or ``host:port``), a Monsoon serial is a number and only for
    ``--monitor monsoon``, and the profile names an ``executor_runner`` that exists.  (The profile itself
    was loaded and validated by :func:`resolve_device`.)"""
    from pathlib import Path

    if choice.kind != "real":
        if plan.serial or plan.monitor_serial:
            raise UsageError(f"--serial/--monitor-serial are for real phones, not --device {choice.name}")
        return
    where = f"--device {choice.name}"
    if not plan.serial.strip():
        raise UsageError(f"{where}: give the phone with --serial (USB serial or host:port)")
    from device.adb import parse_address

    try:
        parse_address(plan.serial)
    except INPUT_ERRORS as exc:
        raise UsageError(f"{where}: --serial: {exc}") from None
    profile = profiles.load_profile(choice.profile)
    if plan.monitor == "monsoon":
        if plan.monitor_serial and not plan.monitor_serial.strip().isdigit():
            raise UsageError(f"{where}: --monitor-serial must be the Monsoon's serial number, "
                             f"got {plan.monitor_serial!r}")
    elif plan.monitor_serial:
        raise UsageError(f"{where}: --monitor-serial is for --monitor monsoon, not {plan.monitor}")
    spec = profile.runner
    if not spec.builtin:
        if not spec.binary:
            raise UsageError(f"{where}: profile {profile.name} names no executor_runner binary "
                             "(set [runner].binary in a user profile, see docs/devices.md)")
        if not Path(spec.binary).expanduser().is_file():
            raise UsageError(f"{where}: profile {profile.name}: executor_runner {spec.binary} not found")

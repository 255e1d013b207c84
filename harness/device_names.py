"""``--device`` names: ``host``, ``virtual`` (the virtual lab with :data:`VIRTUAL_DEFAULT_PROFILE`) or a
device profile's name (``nexus4``, ``virtual-nexus4``...), resolved to a kind and a profile."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from device import profiles
from harness.errors import INPUT_ERRORS, InputError, UsageError

log = logging.getLogger(__name__)

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


def _chosen_serial(where: str, serial: str, connect: str | None) -> str:
    """The phone of a real-phone run (see :func:`check_device_args`), its address checked."""
    from device.adb import parse_address
    from device.adb_select import attached_devices, choose_serial, env_serial, ready_addresses

    serial = (serial or "").strip()
    if connect is not None:
        if serial and serial != connect.strip():
            raise UsageError(f"{where}: --serial {serial} and --connect {connect} name different phones")
        try:
            kind = parse_address(connect)[0]
        except INPUT_ERRORS as exc:
            raise UsageError(f"{where}: --connect: {exc}") from None
        if kind != "tcp":
            raise UsageError(f"{where}: --connect {connect!r}: expected HOST:PORT (ADB over TCP)")
        serial = connect.strip()
    try:
        attached = [] if serial or env_serial() else ready_addresses(attached_devices())
        serial, why = choose_serial(serial, attached)
        parse_address(serial)
    except INPUT_ERRORS as exc:
        raise UsageError(f"{where}: {exc}") from None
    log.info("%s: phone %s (%s)", where, serial, why)
    return serial


def check_device_args(choice: DeviceChoice, plan, connect: str | None = None):
    """Refuse device arguments that cannot work (UsageError, one line) before any slow work, and return
    the plan with the phone chosen: a real phone is ``--serial`` or ``--connect HOST:PORT``, else
    ``$ANDROID_SERIAL``, else the only attached phone (several: one line listing them); a Monsoon serial
    is a number and only for ``--monitor monsoon``, and the profile names an ``executor_runner`` that
    exists.  (The profile itself was loaded and validated by :func:`resolve_device`.)"""
    from pathlib import Path

    if choice.kind != "host":
        from device.adb import vendor_key_paths

        try:
            vendor_key_paths()  # a wrong $ADB_VENDOR_KEYS is one line now, not after the builds
        except INPUT_ERRORS as exc:
            raise UsageError(str(exc)) from None
    if choice.kind != "real":
        if plan.serial or plan.monitor_serial:
            raise UsageError(f"--serial/--monitor-serial are for real phones, not --device {choice.name}")
        return plan
    where = f"--device {choice.name}"
    plan = replace(plan, serial=_chosen_serial(where, plan.serial, connect))
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
    return plan

"""``--device`` names: ``host``, ``virtual`` (the virtual lab with :data:`VIRTUAL_DEFAULT_PROFILE`) or a
device profile's name (``nexus4``, ``virtual-nexus4``...), resolved to a kind and a profile."""

from __future__ import annotations

from dataclasses import dataclass

from device import profiles
from harness.errors import InputError

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

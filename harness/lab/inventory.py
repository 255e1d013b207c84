"""What a lab host owns: phones found by the discovery of ``harness devices`` and those listed in a lab TOML file,
with the Ray custom resources that advertise them (``device:<serial>``, ``monsoon:<serial>``, and the pairing
``pair:<device serial>:<monitor serial>``) and device groups.

A lab file (``--lab-file lab.toml``)::

    [[devices]]
    serial = "0123456789ABCDEF"      # what `harness devices` shows
    kind = "real"                     # real | virtual
    profile = "nexus4"                # device profile (real phones: required)
    monitor = "monsoon"               # monsoon | gauge | none
    monitor_serial = "12345"          # the Monsoon wired to this phone (its pairing; one Monsoon may serve two)
    host = "bench-a"                  # the host it is plugged into ("" = whichever host lists the file)

    [groups]
    nightly = ["0123456789ABCDEF", "vp1"]

Virtual phones (``harness virtual-phone --serial vp1``) are discovered through their registry
(``HARNESS_CACHE_DIR``); each carries its own virtual Monsoon, advertised as ``monsoon:vmon-<serial>``.

Pairing: a phone's monitor (from discovery: a virtual phone's own virtual Monsoon; from the lab file:
``monitor_serial``) is advertised beside it as a marker resource ``pair:<serial>:<monitor>`` that nothing
consumes; the driver reads it (:func:`device_requirements`) so that a device's job needs both ``device:<serial>``
and ``monsoon:<monitor>``: two phones wired to one Monsoon never measure at once.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.options import options_from_mapping, read_toml_table

log = logging.getLogger(__name__)

#: the environment a node's worker processes inherit from ``harness lab join`` (see harness.lab.devicejob)
LAB_FILE_ENV = "HARNESS_LAB_FILE"
LAB_HOST_ENV = "HARNESS_LAB_HOST"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KINDS = ("virtual", "real")
MONITORS = ("monsoon", "gauge", "none")


def check_name(text: str, what: str) -> str:
    """A serial or group name usable in a Ray resource name: letters, digits, ``.``, ``_``, ``-``."""
    if not isinstance(text, str) or not _NAME.match(text):
        raise InputError(f"{what} {text!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    return text


@dataclass(frozen=True)
class LabDevice:
    """One phone a host owns, with its power monitor."""

    serial: str
    kind: str = "virtual"
    profile: str = ""
    address: str = ""  # virtual phones: 127.0.0.1:PORT of the running `harness virtual-phone`
    monitor: str = "monsoon"
    monitor_serial: str = ""
    host: str = ""

    def __post_init__(self) -> None:
        check_name(self.serial, "serial")
        if self.kind not in KINDS:
            raise InputError(f"device {self.serial}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.monitor not in MONITORS:
            raise InputError(f"device {self.serial}: monitor {self.monitor!r} is not one of {', '.join(MONITORS)}")
        if self.monitor_serial:
            check_name(self.monitor_serial, f"device {self.serial}: monitor_serial")

    @property
    def monitor_id(self) -> str:
        """The monitor's serial: as configured, ``vmon-<serial>`` for a virtual phone's virtual Monsoon."""
        if self.monitor == "none":
            return ""
        return self.monitor_serial or (f"vmon-{self.serial}" if self.kind == "virtual" else "")

    def resources(self) -> dict[str, float]:
        """The custom resources this device adds to its node: one unit each, so one measurement at a time;
        with a monitor, the pairing marker too."""
        out = {device_resource(self.serial): 1.0}
        if self.monitor_id:
            out[monitor_resource(self.monitor_id)] = 1.0
            out[pair_resource(self.serial, self.monitor_id)] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "monitor_id": self.monitor_id}


def device_resource(serial: str) -> str:
    return f"device:{serial}"


MONITOR_PREFIX = "monsoon:"


def monitor_resource(serial: str) -> str:
    return f"{MONITOR_PREFIX}{serial}"


PAIR_PREFIX = "pair:"


def pair_resource(serial: str, monitor_id: str) -> str:
    """The marker that says ``serial`` is measured through the monitor ``monitor_id`` (never consumed)."""
    return f"{PAIR_PREFIX}{serial}:{monitor_id}"


def paired_monitors(serial: str, resources: dict[str, float]) -> list[str]:
    """The monitors a node's ``resources`` pair with ``serial`` (serials never contain ``:``)."""
    prefix = f"{PAIR_PREFIX}{serial}:"
    return sorted(k[len(prefix):] for k in resources if k.startswith(prefix))


def device_requirements(serial: str, resources: dict[str, float]) -> dict[str, float]:
    """What a job on ``serial`` needs, given the resources of the node that owns it: the device and each monitor
    paired with it there (one unit each)."""
    out = {device_resource(serial): 1.0}
    for mon in paired_monitors(serial, resources):
        out[monitor_resource(mon)] = 1.0
    return out


@dataclass(frozen=True)
class LabFile:
    """A lab TOML file: devices (with their hosts) and named groups of serials."""

    devices: tuple[LabDevice, ...] = ()
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def group(self, name: str) -> tuple[str, ...] | None:
        return dict(self.groups).get(name)


def load_lab_file(path: str | Path) -> LabFile:
    """The lab file at ``path``; one InputError line for anything wrong in it."""
    data = read_toml_table(path, None, "lab file", InputError)
    unknown = sorted(set(data) - {"devices", "groups"})
    if unknown:
        raise InputError(f"lab file {path}: unknown key {unknown[0]!r}; known: devices, groups")
    raw = data.get("devices", [])
    if not isinstance(raw, list):
        raise InputError(f"lab file {path}: devices must be an array of tables ([[devices]])")
    devices = tuple(options_from_mapping(LabDevice, d, f"lab file {path}: devices[{i}]", InputError)
                    for i, d in enumerate(raw))
    serials = [d.serial for d in devices]
    dup = sorted({s for s in serials if serials.count(s) > 1})
    if dup:
        raise InputError(f"lab file {path}: device {dup[0]} is listed twice")
    groups_raw = data.get("groups", {})
    if not isinstance(groups_raw, dict):
        raise InputError(f"lab file {path}: [groups] must be a table of name = [serials]")
    groups = []
    for name, members in sorted(groups_raw.items()):
        check_name(name, f"lab file {path}: group")
        if not isinstance(members, list) or not members:
            raise InputError(f"lab file {path}: group {name} must be a non-empty list of serials")
        groups.append((name, tuple(check_name(m, f"lab file {path}: group {name}: serial") for m in members)))
    return LabFile(devices, tuple(groups))


def this_host() -> str:
    return os.environ.get(LAB_HOST_ENV) or socket.gethostname()


def discovered_devices() -> list[LabDevice]:
    """Phones on this host, found as ``harness devices`` finds them: running virtual phones, USB phones."""
    from device.adb import usb_adb_serials
    from device.virtual_phone.registry import live_phones

    out: list[LabDevice] = []
    for v in live_phones():
        serial = str(v.get("serial") or "")
        if not _NAME.match(serial):
            log.warning("virtual phone at %s has serial %r, not usable as a lab resource; skipped",
                        v.get("address"), serial)
            continue
        out.append(LabDevice(serial, "virtual", str(v.get("profile") or ""), str(v.get("address") or "")))
    for d in usb_adb_serials():
        serial = str(d.get("serial") or "")
        if d.get("state", "device") == "device" and _NAME.match(serial):
            out.append(LabDevice(serial, "real"))
    return out


def owned_devices(lab_file: str | Path | None = None, host: str | None = None,
                  discover: bool = True) -> list[LabDevice]:
    """This host's devices: discovered ones, then the lab file's entries for this host (which win, e.g. to
    give a USB phone its profile and Monsoon)."""
    host = host or this_host()
    found: dict[str, LabDevice] = {}
    if discover:
        for d in discovered_devices():
            found[d.serial] = d
    if lab_file:
        for d in load_lab_file(lab_file).devices:
            if d.host in ("", host):
                seen = found.get(d.serial)
                if seen is not None and d.kind == "virtual" and not d.address:
                    d = LabDevice(**{**asdict(d), "address": seen.address, "profile": d.profile or seen.profile})
                found[d.serial] = d
    return sorted(found.values(), key=lambda d: d.serial)


def node_resources(devices: list[LabDevice]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in devices:
        out.update(d.resources())
    return out


def expand_devices(text: str, lab_file: str | Path | None) -> tuple[str, ...]:
    """``--devices SERIAL,SERIAL,...`` or a group name of the lab file, as serials (order kept, no repeats)."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise InputError("--devices: give serials (SERIAL,SERIAL,...) or a device group of --lab-file")
    groups = load_lab_file(lab_file) if lab_file else LabFile()
    out: list[str] = []
    for item in items:
        members = groups.group(item)
        for s in members or (check_name(item, "--devices: serial"),):
            if s not in out:
                out.append(s)
    return tuple(out)

"""The virtual phone: a faithful ADB device on 127.0.0.1 with a sandboxed shell and a built-in runner.

``VirtualPhone(root, profile="virtual-nexus4", accept_new_keys=False, authorized_keys=())`` serves the
ADB wire protocol; any ADB client (``adb-shell``, the ``adb`` command) talks to it unchanged.  Its
files live under ``<root>/fs``, accepted keys in ``<root>/adb_keys``, and the busy timeline the virtual
Monsoon reads in ``<root>/busy_timeline.tsv``.
"""

from device.virtual_phone.phone import FaultConfig, PhoneState
from device.virtual_phone.server import VirtualPhone
from device.virtual_phone.timeline import BusyTimeline, read_timeline

__all__ = ["VirtualPhone", "FaultConfig", "PhoneState", "BusyTimeline", "read_timeline"]

"""The virtual phone: a faithful ADB device on 127.0.0.1 with a sandboxed shell and a built-in runner.

``VirtualPhone(root, profile="virtual-nexus4", accept_new_keys=False, authorized_keys=())`` serves the
ADB wire protocol; any ADB client (``adb-shell``, the ``adb`` command) talks to it unchanged.  Its
files live under ``<root>/fs``, accepted keys in ``<root>/adb_keys``, and the busy timeline the virtual
Monsoon reads in ``<root>/busy_timeline.tsv``.
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device.virtual_phone.phone import FaultConfig, PhoneState
    from device.virtual_phone.server import VirtualPhone
    from device.virtual_phone.timeline import BusyTimeline, read_timeline

#: Loaded on first use, so that ``device.virtual_phone.registry`` (``harness devices``, choosing a phone)
#: does not import the phone's shell and its numeric libraries (seconds on a busy machine).
_LAZY = {"FaultConfig": "phone", "PhoneState": "phone", "VirtualPhone": "server", "BusyTimeline": "timeline",
         "read_timeline": "timeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VirtualPhone", "FaultConfig", "PhoneState", "BusyTimeline", "read_timeline"]

"""The virtual Monsoon: a pyusb backend presenting an HVPM whose current follows the virtual phone.

``install(cfg)`` puts the virtual bus where pyusb looks first (``usb.backend.libusb1.get_backend``), so the
unmodified ``monsoon`` library finds it; ``uninstall()`` restores the real libusb1 lookup.  The current comes
from :mod:`device.power_model` applied to the phone's ``busy_timeline.tsv``.  See device/virtual_monsoon/hvpm.py
for the wire format and timing.
"""

from __future__ import annotations

from device.virtual_monsoon.hvpm import VirtualMonsoonConfig

__all__ = ["VirtualMonsoonConfig", "install", "uninstall", "installed"]

_original = None
_installed: list[VirtualMonsoonConfig] = []


def install(*configs: VirtualMonsoonConfig) -> None:
    """Make ``usb.core.find()`` (no backend given) see these virtual HVPMs (and only them)."""
    global _original
    import usb.backend.libusb1 as libusb1

    from device.virtual_monsoon.backend import VirtualUSBBackend

    if _original is None:
        _original = libusb1.get_backend
    _installed[:] = list(configs)
    backend = VirtualUSBBackend(_installed)

    def get_backend(find_library=None):  # same signature as libusb1.get_backend
        return backend

    libusb1.get_backend = get_backend


def uninstall() -> None:
    """Restore pyusb's real libusb1 backend lookup."""
    global _original
    import usb.backend.libusb1 as libusb1

    if _original is not None:
        libusb1.get_backend = _original
        _original = None
    _installed.clear()


def installed() -> list[VirtualMonsoonConfig]:
    return list(_installed)

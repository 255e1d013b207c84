"""A pyusb backend presenting virtual HVPMs on a virtual USB bus.

pyusb has no backend registry: ``usb.core.find()`` without ``backend=`` tries ``usb.backend.libusb1`` first,
so :func:`install` replaces ``usb.backend.libusb1.get_backend`` with one returning this backend; the
unmodified ``monsoon`` library then finds, opens and streams from the virtual device.  The sampling process
calls :func:`install` again (it is a fresh interpreter).
"""

from __future__ import annotations

import array
import logging
from types import SimpleNamespace

import usb.backend
import usb.core

from device.virtual_monsoon.hvpm import PRODUCT_ID, VENDOR_ID, USBErrorLike, VirtualHVPM, VirtualMonsoonConfig

log = logging.getLogger(__name__)

_STRINGS = {1: "Monsoon Solutions Inc. (virtual)", 2: "Mobile Device Power Monitor (virtual HVPM)"}


def _desc(**kw) -> SimpleNamespace:
    return SimpleNamespace(**kw)


class _Dev:
    def __init__(self, cfg: VirtualMonsoonConfig, address: int):
        self.cfg = cfg
        self.address = address


class _Handle:
    def __init__(self, dev: _Dev):
        self.dev = dev
        self.hvpm = VirtualHVPM(dev.cfg)
        self.config_value = 0


def _raise(exc: USBErrorLike):
    raise usb.core.USBError(str(exc), errno=exc.errno) from None


class VirtualUSBBackend(usb.backend.IBackend):
    """The pyusb IBackend calls the ``monsoon`` library makes, answered by virtual HVPMs."""

    def __init__(self, configs: list[VirtualMonsoonConfig]):
        self.configs = list(configs)

    def enumerate_devices(self):
        for i, cfg in enumerate(self.configs):
            if cfg.present:
                yield _Dev(cfg, i + 2)

    def get_device_descriptor(self, dev: _Dev):
        return _desc(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0,
            bMaxPacketSize0=64, idVendor=VENDOR_ID, idProduct=PRODUCT_ID, bcdDevice=0x0100, iManufacturer=1,
            iProduct=2, iSerialNumber=3, bNumConfigurations=1, address=dev.address, bus=1, port_number=dev.address,
            port_numbers=(dev.address,), speed=2,
        )

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError("no such configuration")
        return _desc(bLength=9, bDescriptorType=2, wTotalLength=32, bNumInterfaces=1, bConfigurationValue=1,
                     iConfiguration=0, bmAttributes=0x80, bMaxPower=50, extra_descriptors=[])

    def get_interface_descriptor(self, dev, intf, alt, config):
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError("no such interface")
        return _desc(bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0, bNumEndpoints=2,
                     bInterfaceClass=0xFF, bInterfaceSubClass=0, bInterfaceProtocol=0, iInterface=0,
                     extra_descriptors=[])

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if ep not in (0, 1):
            raise IndexError("no such endpoint")
        addr = 0x81 if ep == 0 else 0x01
        return _desc(bLength=7, bDescriptorType=5, bEndpointAddress=addr, bmAttributes=0x02, wMaxPacketSize=64,
                     bInterval=0, bRefresh=0, bSynchAddress=0, extra_descriptors=[])

    def open_device(self, dev):
        h = _Handle(dev)
        try:
            h.hvpm.open()
        except USBErrorLike as exc:
            _raise(exc)
        return h

    def close_device(self, dev_handle):
        dev_handle.hvpm.close()

    def set_configuration(self, dev_handle, config_value):
        dev_handle.config_value = config_value

    def get_configuration(self, dev_handle):
        return dev_handle.config_value or 1

    def set_interface_altsetting(self, dev_handle, intf, altsetting):
        return None

    def claim_interface(self, dev_handle, intf):
        return None

    def release_interface(self, dev_handle, intf):
        return None

    def reset_device(self, dev_handle):
        dev_handle.hvpm.stop()

    def clear_halt(self, dev_handle, ep):
        return None

    def is_kernel_driver_active(self, dev_handle, intf):
        return False

    def detach_kernel_driver(self, dev_handle, intf):
        raise usb.core.USBError("Entity not found (no kernel driver)", errno=2)

    def attach_kernel_driver(self, dev_handle, intf):
        return None

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        raise usb.core.USBError("Pipe error (the HVPM takes no bulk OUT data)", errno=32)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        if ep != 0x81:
            raise usb.core.USBError("Pipe error (no such endpoint)", errno=32)
        try:
            pkt = dev_handle.hvpm.read_packet(timeout)
        except USBErrorLike as exc:
            _raise(exc)
        n = min(len(pkt), len(buff))
        buff[:n] = array.array("B", pkt[:n])
        return n

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        hv = dev_handle.hvpm
        try:
            if bmRequestType == 0x80 and bRequest == 6 and (wValue >> 8) == 3:  # GET_DESCRIPTOR string
                idx = wValue & 0xFF
                if idx == 0:
                    payload = bytes([4, 3, 0x09, 0x04])
                else:
                    text = str(hv.cfg.serial) if idx == 3 else _STRINGS.get(idx, "")
                    raw = text.encode("utf-16-le")
                    payload = bytes([2 + len(raw), 3]) + raw
                n = min(len(payload), len(data))
                data[:n] = array.array("B", payload[:n])
                return n
            if bmRequestType == 0xC0 and bRequest == 0x01:  # get value
                out = hv.get_value(wIndex & 0xFF)
                n = min(len(out), len(data))
                data[:n] = array.array("B", out[:n])
                return n
            if bmRequestType == 0x40 and bRequest == 0x01:  # set value
                raw = bytes(data) + bytes(4)
                hv.set_value(wIndex & 0xFF, int.from_bytes(raw[:4], "little"))
                return len(data)
            if bmRequestType == 0x40 and bRequest == 0x02:  # start sampling (calTime in wValue)
                hv.start(wValue)
                return len(data)
            if bmRequestType == 0x40 and bRequest == 0x03:  # stop sampling
                hv.stop()
                return len(data)
        except USBErrorLike as exc:
            _raise(exc)
        raise usb.core.USBError(f"Pipe error (unsupported request {bmRequestType:#x}/{bRequest:#x})", errno=32)

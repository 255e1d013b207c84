"""Which phone, and how to reach it: the ``adb`` conventions.

* ``--serial`` (or ``--connect HOST:PORT``) wins; else ``$ANDROID_SERIAL``; else the only attached real
  phone; several attached and none chosen is one line listing their serials (:func:`choose_serial`).
* Attached phones (:func:`attached_devices`): ADB phones on USB, phones a running adb server lists, and
  running virtual phones (``harness virtual-phone``).
* A phone a running adb server lists is reached through that server (it holds the USB interface;
  :mod:`device.adb_server`); any other directly (:mod:`device.adb`), with ``~/.android/adbkey`` (or
  ``--key``) and the keys of ``$ADB_VENDOR_KEYS``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from device.adb import AdbOptions, connect, usb_adb_serials
from device.adb_server import AdbServer, AdbServerDevice, AdbServerError
from device.base import Device
from device.errors import InputError

log = logging.getLogger(__name__)

ENV_SERIAL = "ANDROID_SERIAL"


def env_serial(env: Mapping[str, str] | None = None) -> str:
    """``$ANDROID_SERIAL`` stripped ('' when unset)."""
    env = os.environ if env is None else env
    return env.get(ENV_SERIAL, "").strip()


def choose_serial(given: str | None, attached: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(serial, why)``: the phone to use and where the choice came from (``--serial``, ``ANDROID_SERIAL``,
    ``the only attached phone``).  :class:`InputError` (one line) when none or several are attached and
    none is chosen."""
    if given and given.strip():
        return given.strip(), "--serial"
    chosen = env_serial(env)
    if chosen:
        return chosen, ENV_SERIAL
    unique = list(dict.fromkeys(attached))
    if len(unique) == 1:
        return unique[0], "the only attached phone"
    if not unique:
        raise InputError("no phone attached (USB debugging on? see `harness devices`); give --serial "
                         "(USB serial or HOST:PORT) or set ANDROID_SERIAL")
    raise InputError(f"{len(unique)} phones attached ({', '.join(unique)}); choose one with --serial or "
                     "ANDROID_SERIAL")


def _server_devices(server: AdbServer | None) -> list[dict[str, Any]]:
    if server is None:
        return []
    try:
        return server.devices()
    except (AdbServerError, OSError) as exc:
        log.info("cannot list the devices of the %s: %s", server.label, exc)
        return []


def attached_devices(scan_usb: bool = True, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every phone this host can see: USB, the adb server's list (``via``), running virtual phones
    (``virtual``).  One entry per address; ``state`` is ``device`` for a usable one."""
    from device.virtual_phone.registry import live_phones

    server = AdbServer.from_env(dict(os.environ if env is None else env))
    server = server if server.running() else None
    found: dict[str, dict[str, Any]] = {}
    for d in _server_devices(server):
        found[d["serial"]] = {"address": d["serial"], "transport": "tcp" if ":" in d["serial"] else "usb",
                              "state": d["state"], "via": server.label,  # type: ignore[union-attr]
                              **({"model": d["model"]} if d.get("model") else {})}
    if scan_usb:
        for d in usb_adb_serials():
            found.setdefault(d["address"], dict(d))
    for v in live_phones():
        entry = {"address": v["address"], "transport": "tcp", "state": "device", "virtual": True,
                 "serial": v.get("serial", ""), "profile": v.get("profile"), "root": v.get("root"),
                 "pid": v.get("pid")}
        if v["address"] in found:
            entry["via"] = found[v["address"]].get("via")
        found[v["address"]] = {k: val for k, val in entry.items() if val is not None}
    return list(found.values())


def ready_addresses(devices: Sequence[Mapping[str, Any]]) -> list[str]:
    """Addresses of the listed real phones that are ready (state ``device``): the candidates for "the only
    attached phone" (a virtual phone is used only when named: ``--connect``, ``--serial``, ANDROID_SERIAL)."""
    return [d["address"] for d in devices if d.get("state") == "device" and not d.get("virtual")]


def matches(entry: Mapping[str, Any], serial: str) -> bool:
    """Whether a listed phone is the one ``serial`` names (its address or the serial it reports)."""
    return serial in (entry.get("address"), entry.get("serial"))


def open_phone(serial: str, options: AdbOptions | None = None, env: Mapping[str, str] | None = None) -> Device:
    """A connected :class:`~device.base.Device` for ``serial``: through the running adb server when it
    lists the phone (it holds the USB interface), else directly over ADB (TCP or USB)."""
    server = AdbServer.from_env(dict(os.environ if env is None else env))
    if server.running():
        try:
            state = server.state_of(serial)
        except AdbServerError as exc:
            log.info("cannot ask the %s about %s: %s", server.label, serial, exc)
            state = None
        if state is not None:
            log.info("%s: reached through the %s (it holds the phone)", serial, server.label)
            return AdbServerDevice(serial, server).connect()
    return connect(serial, options)

"""``harness devices``: connected phones (USB, running virtual phones, --connect addresses) and profiles.

List ADB phones on USB, running virtual phones, and phones at --connect addresses (probed over ADB), with the
device profile each matches; then the known profiles.
"""

from __future__ import annotations

import logging

from harness.cliutil import add_command, add_json_flag, print_json
from harness.errors import PROJECT_ERRORS, UsageError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "devices", run, "list connected devices and known device profiles", __doc__)
    p.add_argument("--connect", action="append", default=[], metavar="HOST:PORT",
                   help="also probe a phone over ADB/TCP (repeatable), e.g. 192.168.1.7:5555")
    p.add_argument("--key", default=None, help="ADB private key (default ~/.android/adbkey, created if missing)")
    p.add_argument("--no-usb", action="store_true", help="do not scan USB")
    add_json_flag(p)


def _probe(address: str, key: str | None) -> dict:
    from device.adb import AdbOptions, parse_address
    from device.adb import connect as adb_connect
    from device.profiles import match_profile

    if parse_address(address)[0] != "tcp":
        raise UsageError(f"--connect {address!r}: expected HOST:PORT (ADB over TCP), e.g. 192.168.1.7:5555")
    try:
        dev = adb_connect(address, AdbOptions(key_path=key or "", retries=1, auth_timeout_s=5.0))
    except PROJECT_ERRORS as exc:
        state = "unauthorized" if "unauthorized" in str(exc) else "offline"
        return {"address": address, "transport": "tcp", "state": state, "error": str(exc), "profile": None}
    try:
        info = dev.describe()
        props = {"ro.product.device": info["device"], "ro.product.model": info["model"]}
        prof = match_profile(props)
        info["profile"] = prof.name if prof else None
        return info
    finally:
        dev.close()


def run(args) -> int:
    from device.adb import usb_adb_serials
    from device.profiles import all_profiles
    from device.virtual_phone.registry import live_phones

    devices: list[dict] = []
    if not args.no_usb:
        for d in usb_adb_serials():
            devices.append({**d, "profile": None})
    for v in live_phones():
        devices.append({"address": v["address"], "transport": "tcp", "state": "device", "virtual": True,
                        "serial": v.get("serial", ""), "profile": v.get("profile"), "root": v.get("root"),
                        "pid": v.get("pid")})
    for addr in args.connect:
        devices.append(_probe(addr, args.key))
    profiles = [p.to_dict() for p in all_profiles()]
    if args.json:
        print_json({"devices": devices, "profiles": profiles})
        return 0
    print("devices:" if devices else "devices: none found (phones: USB debugging on, udev rule; or `harness virtual-phone`)")
    for d in devices:
        extra = " ".join(f"{k}={d[k]}" for k in ("model", "serial", "abi", "api_level", "error") if d.get(k))
        print(f"  {d['address']:24} {d['transport']:4} {d['state']:14} profile={d.get('profile') or '-'} {extra}".rstrip())
    print("profiles:")
    for p in profiles:
        print(f"  {p['name']:16} {p['abi']:12} API {p['api_level']:<3} {'virtual ' if p['virtual'] else ''}{p['description']}")
    return 0

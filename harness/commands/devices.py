"""``harness devices``: connected phones (USB, an adb server's, virtual, --connect addresses) and profiles.

List ADB phones on USB, the phones a running adb server lists, running virtual phones, and phones at --connect
addresses (probed over ADB), with the device profile each matches; the phone `harness run` would use is marked
with * (--serial, else $ANDROID_SERIAL, else the only attached phone); then the known profiles.
"""

from __future__ import annotations

import logging

from harness.cliutil import add_command, add_json_flag, print_json
from harness.errors import INPUT_ERRORS, PROJECT_ERRORS, UsageError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "devices", run, "list connected devices and known device profiles", __doc__)
    p.add_argument("--connect", action="append", default=[], metavar="HOST:PORT",
                   help="also probe a phone over ADB/TCP (repeatable), e.g. 192.168.1.7:5555")
    p.add_argument("--key", default=None, help="ADB private key (default ~/.android/adbkey, created if missing; "
                                               "the keys of $ADB_VENDOR_KEYS are offered too)")
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


def _selection(devices: list[dict]) -> tuple[str | None, str]:
    """The phone ``harness run`` would pick for a real-phone profile (None and why not when none)."""
    from device.adb_select import choose_serial, ready_addresses

    try:
        serial, why = choose_serial(None, ready_addresses(devices))
    except INPUT_ERRORS as exc:
        return None, str(exc)
    return serial, why


def run(args) -> int:
    from device.adb import parse_address
    from device.adb_select import attached_devices, env_serial, matches
    from device.profiles import all_profiles

    devices = attached_devices(scan_usb=not args.no_usb)
    wanted = list(args.connect)
    chosen = env_serial()
    if chosen and ":" in chosen and not any(matches(d, chosen) for d in devices) and chosen not in wanted:
        parse_address(chosen)  # a bad ANDROID_SERIAL is one line
        wanted.append(chosen)  # ANDROID_SERIAL=HOST:PORT names a phone over TCP: probe it
    for addr in wanted:
        devices = [d for d in devices if d["address"] != addr] + [_probe(addr, args.key)]
    selected, why = _selection(devices)
    for d in devices:
        if selected is not None and matches(d, selected):
            d["selected"] = True
    profiles = [p.to_dict() for p in all_profiles()]
    if args.json:
        print_json({"devices": devices, "selected": selected, "selected_by": why if selected else None,
                    "selection_error": None if selected else why, "profiles": profiles})
        return 0
    print("devices:" if devices else "devices: none found (phones: USB debugging on, udev rule; or `harness virtual-phone`)")
    for d in devices:
        extra = " ".join(f"{k}={d[k]}" for k in ("model", "serial", "abi", "api_level", "via", "error") if d.get(k))
        mark = "*" if d.get("selected") else " "
        print(f"{mark} {d['address']:24} {d['transport']:4} {d['state']:14} profile={d.get('profile') or '-'} "
              f"{extra}".rstrip())
    if selected:
        print(f"selected: {selected} ({why})")
    elif devices:
        print(f"selected: none ({why})")
    print("profiles:")
    for p in profiles:
        print(f"  {p['name']:16} {p['abi']:12} API {p['api_level']:<3} {'virtual ' if p['virtual'] else ''}{p['description']}")
    return 0

"""Android services of the virtual phone: getprop/setprop, dumpsys, settings, am, cmd, svc, input, reboot."""

from __future__ import annotations

import threading

from device.virtual_phone.cmdbase import command, exit_status, not_found


@command("getprop")
def _getprop(sh, argv, stdin, out):
    props = sh.phone.props
    if len(argv) > 1:
        out.write(props.get(argv[1], argv[2] if len(argv) > 2 else "") + "\n")
    else:
        out.write("".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items())))
    return 0


@command("setprop")
def _setprop(sh, argv, stdin, out):
    if len(argv) != 3:
        out.error("usage: setprop <key> <value>\n")
        return 1
    if not sh.phone.root_user or argv[1].startswith("ro."):
        out.error(f"setprop: failed to set property '{argv[1]}' to '{argv[2]}'\n")
        return 1
    sh.phone.props[argv[1]] = argv[2]
    return 0


def _battery_report(phone) -> str:
    b = phone.battery
    charging = (b["ac"] or b["usb"] or b["wireless"]) and not b["unplugged"]
    lines = ["Current Battery Service state:"]
    if b["unplugged"]:
        lines.append("  (UPDATES STOPPED -- use 'reset' to restart)")
    ac = b["ac"] and not b["unplugged"]
    usb = b["usb"] and not b["unplugged"]
    lines += [f"  AC powered: {str(ac).lower()}", f"  USB powered: {str(usb).lower()}",
              f"  Wireless powered: {str(b['wireless'] and not b['unplugged']).lower()}",
              f"  status: {2 if charging else 3}", "  health: 2", "  present: true",
              f"  level: {b['level']}", "  scale: 100", f"  voltage: {b['voltage_mv']}",
              f"  temperature: {b['temperature_dc']}", "  technology: Li-ion"]
    return "\n".join(lines) + "\n"


_BATTERY_HELP_OLD = ("Dump current battery state, or:\n  set ac|usb|wireless|status|level|invalid <value>\n"
                     "  unplug\n  reset\n")


@command("dumpsys")
def _dumpsys(sh, argv, stdin, out):
    phone = sh.phone
    if len(argv) < 2:
        out.write("Currently running services:\n  battery\n  power\n  cpuinfo\n  thermalservice\n")
        return 0
    svc, args = argv[1], argv[2:]
    if svc == "battery":
        return _dumpsys_battery(sh, args, out)
    if svc == "power":
        awake = phone.screen_on
        out.write("POWER MANAGER (dumpsys power)\n\nPower Manager State:\n"
                  f"  mWakefulness={'Awake' if awake else 'Asleep'}\n"
                  f"  mIsPowered={str(_charging(phone)).lower()}\n"
                  f"Display Power: state={'ON' if awake else 'OFF'}\n")
        return 0
    if svc == "cpuinfo":
        out.write(f"Load: {phone.timeline.busy_threads:.2f} / 0.00 / 0.00\n")
        return 0
    if svc == "thermalservice" and phone.profile.api_level >= 29:
        out.write("IsStatusOverride: false\nThermalEventListeners:\n")
        return 0
    out.error(f"Can't find service: {svc}\n")
    return 0


def _charging(phone) -> bool:
    b = phone.battery
    return (b["ac"] or b["usb"] or b["wireless"]) and not b["unplugged"]


def _dumpsys_battery(sh, args, out):
    phone = sh.phone
    b = phone.battery
    api = phone.profile.api_level
    if not args:
        out.write(_battery_report(phone))
        return 0
    with phone.lock:
        if args[0] == "unplug" and api >= 23:
            b["unplugged"] = True
        elif args[0] == "reset":
            b.update({"unplugged": False, "ac": False, "usb": True, "wireless": False})
        elif args[0] == "set" and len(args) == 3 and args[1] in ("ac", "usb", "wireless") and args[2] in ("0", "1"):
            b[args[1]] = args[2] == "1"
        elif args[0] == "set" and len(args) == 3 and args[1] == "level" and args[2].isdigit():
            b["level"] = min(100, int(args[2]))
        else:
            # old services print their help and exit 0, as Android 5.1 does for 'unplug'
            out.write(_BATTERY_HELP_OLD if api < 23 else f"Unknown option: {args[0]}\n")
            return 0 if api < 23 else 255
        phone.sync_power_supply_files()
    return 0


@command("settings")
def _settings(sh, argv, stdin, out):
    if len(argv) < 4 or argv[1] not in ("get", "put", "delete") or argv[2] not in ("global", "system", "secure"):
        out.error("usage:  settings [--user NUM] get namespace key\n        settings [--user NUM] put namespace key value\n")
        return 255
    key = (argv[2], argv[3])
    if argv[1] == "get":
        out.write(sh.phone.settings.get(key, "null") + "\n")
    elif argv[1] == "put":
        if len(argv) < 5:
            out.error("settings: missing value\n")
            return 255
        sh.phone.settings[key] = argv[4]
    else:
        sh.phone.settings.pop(key, None)
    return 0


@command("am")
def _am(sh, argv, stdin, out):
    if len(argv) >= 2 and argv[1] == "broadcast":
        action = argv[argv.index("-a") + 1] if "-a" in argv[:-1] else ""
        out.write(f"Broadcasting: Intent {{ act={action} flg=0x400000 }}\nBroadcast completed: result=0\n")
        return 0
    out.error("am: only 'am broadcast' is supported on the virtual phone\n")
    return 1


@command("cmd")
def _cmd(sh, argv, stdin, out):
    if sh.phone.profile.api_level < 24:
        return not_found(out, "cmd")
    if argv[1:3] == ["connectivity", "airplane-mode"] and len(argv) == 4 and argv[3] in ("enable", "disable"):
        if sh.phone.profile.api_level < 30:
            out.error("Unknown command: airplane-mode\n")
            return 255
        sh.phone.settings[("global", "airplane_mode_on")] = "1" if argv[3] == "enable" else "0"
        return 0
    out.error(f"Can't find service: {argv[1] if len(argv) > 1 else ''}\n")
    return 255


command("svc")(exit_status(0))


@command("input")
def _input(sh, argv, stdin, out):
    if len(argv) == 3 and argv[1] == "keyevent":
        code = {"KEYCODE_POWER": "26", "KEYCODE_SLEEP": "223", "KEYCODE_WAKEUP": "224"}.get(argv[2], argv[2])
        with sh.phone.lock:
            if code == "26":
                sh.phone.screen_on = not sh.phone.screen_on
            elif code == "223":
                sh.phone.screen_on = False
            elif code == "224":
                sh.phone.screen_on = True
        return 0
    out.error("usage: input keyevent <key code number or name>\n")
    return 1


@command("kill")
def _kill(sh, argv, stdin, out):
    out.error("kill: not supported on the virtual phone\n")
    return 1


@command("reboot")
def _reboot(sh, argv, stdin, out):
    if not sh.phone.root_user:
        out.error("reboot: Operation not permitted\n")
        return 1
    threading.Timer(0.05, sh.phone.reboot).start()
    return 0



"""The commands the virtual phone's shell knows (toolbox on old profiles, toybox on new ones).

Every command is ``fn(shell, argv, stdin, out) -> status`` and touches only the sandbox and the
phone state.  ``dd if=/dev/zero of=/dev/null bs=B count=N`` is a one-thread busy period of
``B*N/1e9`` seconds (a documented 1 GB/s virtual CPU); ``sleep`` is idle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from datetime import datetime

from device.virtual_phone.sandbox import DEV_NULL, DEV_ZERO, SandboxError
from device.virtual_phone.shell import RUNNER_NAME, Cancelled, Output, Shell, ShellExit

log = logging.getLogger(__name__)

Command = Callable[[Shell, list[str], bytes, Output], int]
VIRTUAL_CPU_BYTES_PER_S = 1e9
_COMMANDS: dict[str, Command] = {}
_TOYBOX_ONLY = {"sha256sum", "sha1sum", "stat", "which", "timeout", "nproc", "seq"}


def command(*names: str):
    def deco(fn: Command) -> Command:
        for n in names:
            _COMMANDS[n] = fn
        return fn

    return deco


def lookup(phone, name: str) -> Command | None:
    """The command called ``name`` on this phone, or None (``not found``)."""
    if name in _TOYBOX_ONLY and not phone.profile.toybox:
        return None
    if name == RUNNER_NAME:
        return executor_runner
    return _COMMANDS.get(name)


def _flags(argv: list[str], known: str) -> tuple[set[str], list[str]]:
    flags, rest = set(), []
    for a in argv[1:]:
        if a.startswith("-") and len(a) > 1 and not rest and all(ch in known for ch in a[1:]):
            flags.update(a[1:])
        else:
            rest.append(a)
    return flags, rest


# ------------------------------------------------------------------ shell-ish builtins


@command("true")
def _true(sh, argv, stdin, out):
    return 0


@command("false")
def _false(sh, argv, stdin, out):
    return 1


@command("exit")
def _exit(sh, argv, stdin, out):
    raise ShellExit(int(argv[1]) & 0xFF if len(argv) > 1 and argv[1].lstrip("-").isdigit() else sh.status)


@command("echo")
def _echo(sh, argv, stdin, out):
    args, newline, escapes = argv[1:], True, False
    while args and args[0] in ("-n", "-e", "-ne", "-en"):
        newline &= "n" not in args[0]
        escapes |= "e" in args[0]
        args = args[1:]
    text = " ".join(args)
    if escapes:
        text = text.encode().decode("unicode_escape")
    out.write(text + ("\n" if newline else ""))
    return 0


@command("printf")
def _printf(sh, argv, stdin, out):
    if len(argv) < 2:
        out.error("printf: need format\n")
        return 1
    fmt = argv[1].replace("\\n", "\n").replace("\\t", "\t")
    args = argv[2:]
    try:
        count = len(re.findall(r"%[-0-9.]*[sdif]", fmt))
        vals = [int(a) if re.fullmatch(r"-?\d+", a) else a for a in args] + [""] * count
        out.write(fmt % tuple(vals[:count]) if count else fmt)
    except (TypeError, ValueError) as exc:
        out.error(f"printf: {exc}\n")
        return 1
    return 0


@command("cd")
def _cd(sh, argv, stdin, out):
    target = sh.phone.sandbox.normalize(argv[1] if len(argv) > 1 else "/", sh.cwd)
    if not sh.host(target).is_dir():
        out.error(f"/system/bin/sh: cd: {target} - No such file or directory\n")
        return 2
    sh.cwd = target
    return 0


@command("pwd")
def _pwd(sh, argv, stdin, out):
    out.write(sh.cwd + "\n")
    return 0


@command("sh")
def _sh(sh, argv, stdin, out):
    if len(argv) >= 3 and argv[1] == "-c":
        sub = Shell(sh.phone, sh.cancel)
        sub.cwd, sub.env = sh.cwd, dict(sh.env)
        return sub.run(argv[2], out, stdin)
    if len(argv) == 1:
        sub = Shell(sh.phone, sh.cancel)
        return sub.run(stdin.decode(errors="replace"), out)
    out.error("sh: only 'sh -c COMMAND' is supported here\n")
    return 2


@command("trap")
def _trap(sh, argv, stdin, out):
    return 0  # signals do not reach the virtual phone's commands; detached jobs survive regardless


@command("nohup")
def _nohup(sh, argv, stdin, out):
    if len(argv) < 2:
        out.error("usage: nohup COMMAND [ARG...]\n")
        return 127
    detached = Shell(sh.phone)  # the command survives the ADB link (SIGHUP ignored)
    detached.cwd, detached.env = sh.cwd, dict(sh.env)
    return detached.exec(argv[1:], out, stdin)


@command("su")
def _su(sh, argv, stdin, out):
    if sh.phone.props.get("ro.debuggable") != "1":
        return _not_found(out, "su")
    args = argv[1:]
    if args and args[0] in ("0", "root"):
        args = args[1:]
    if args and args[0] == "-c":
        return _sh(sh, ["sh", "-c", " ".join(args[1:])], stdin, out)
    if args:
        return sh.exec(args, out, stdin)
    return 0


def _not_found(out: Output, name: str) -> int:
    out.error(f"/system/bin/sh: {name}: not found\n")
    return 127


@command("command")
def _command(sh, argv, stdin, out):
    if len(argv) >= 3 and argv[1] == "-v":
        name = argv[2]
        if lookup(sh.phone, name) is not None:
            out.write(f"/system/bin/{name}\n")
            return 0
        return 1
    return sh.exec(argv[1:], out, stdin) if len(argv) > 1 else 0


@command("which")
def _which(sh, argv, stdin, out):
    status = 0
    for name in argv[1:]:
        if lookup(sh.phone, name) is not None:
            out.write(f"/system/bin/{name}\n")
        else:
            status = 1
    return status


@command("id")
def _id(sh, argv, stdin, out):
    out.write("uid=0(root) gid=0(root) groups=0(root) context=u:r:su:s0\n" if sh.phone.root_user else
              "uid=2000(shell) gid=2000(shell) groups=1004(input),1007(log),1011(adb),1015(sdcard_rw),"
              "3003(inet) context=u:r:shell:s0\n")
    return 0


@command("whoami")
def _whoami(sh, argv, stdin, out):
    out.write("root\n" if sh.phone.root_user else "shell\n")
    return 0


@command("uname")
def _uname(sh, argv, stdin, out):
    machine = "aarch64" if sh.phone.profile.abi == "arm64-v8a" else "armv7l"
    flags, _ = _flags(argv, "asrmn")
    release = "3.4.0-virtual"
    if "a" in flags:
        out.write(f"Linux localhost {release} #1 SMP PREEMPT Sun Nov 22 00:00:00 UTC 2026 {machine}\n")
    elif "r" in flags:
        out.write(release + "\n")
    elif "m" in flags:
        out.write(machine + "\n")
    else:
        out.write("Linux\n")
    return 0


@command("date")
def _date(sh, argv, stdin, out):
    if len(argv) > 1 and argv[1] == "+%s":
        out.write(f"{int(time.time())}\n")
    else:
        out.write(datetime.now().strftime("%a %b %d %H:%M:%S UTC %Y") + "\n")
    return 0


@command("sleep")
def _sleep(sh, argv, stdin, out):
    try:
        seconds = float(argv[1])
        if seconds < 0 or seconds != seconds:
            raise ValueError
    except (IndexError, ValueError):
        out.error(f"sleep: invalid number '{argv[1] if len(argv) > 1 else ''}'\n")
        return 1
    sh.sleep(seconds)
    return 0


@command("taskset")
def _taskset(sh, argv, stdin, out):
    if len(argv) >= 2 and argv[1] == "-p":
        out.error("taskset: -p is not supported on the virtual phone\n")
        return 1
    if len(argv) < 3:
        out.error("usage: taskset MASK COMMAND [ARG...]\n")
        return 1
    try:
        mask = int(argv[1], 16)
    except ValueError:
        out.error(f"taskset: bad mask '{argv[1]}'\n")
        return 1
    if mask == 0 or mask >> sh.phone.profile.cpu_count:
        out.error(f"taskset: failed to set pid's affinity: Invalid argument (mask {argv[1]})\n")
        return 1
    return sh.exec(argv[2:], out, stdin)


@command("dd")
def _dd(sh, argv, stdin, out):
    opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    try:
        bs, count = _size(opts.get("bs", "512")), int(opts.get("count", "-1"))
    except ValueError:
        out.error("dd: bad number\n")
        return 1
    src, dst = opts.get("if", "-"), opts.get("of", "-")
    if src == DEV_ZERO and dst == DEV_NULL and count >= 0:
        total = bs * count
        seconds = total / VIRTUAL_CPU_BYTES_PER_S
        t0 = time.monotonic()
        with sh.phone.timeline.busy(1):
            sh.sleep(seconds)
        dt = max(time.monotonic() - t0, 1e-9)
        out.error(f"{count}+0 records in\n{count}+0 records out\n{total} bytes transferred in {dt:.3f} secs "
                  f"({int(total / dt)} bytes/sec)\n")
        return 0
    data = stdin if src == "-" else (b"\0" * (bs * max(count, 0)) if src == DEV_ZERO else sh.host(src).read_bytes())
    if count >= 0:
        data = data[: bs * count]
    if dst == "-":
        out.write(data)
    elif dst != DEV_NULL:
        sh.writable(dst).write_bytes(data)
    n = (len(data) + bs - 1) // bs
    out.error(f"{n}+0 records in\n{n}+0 records out\n{len(data)} bytes transferred\n")
    return 0


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


# ------------------------------------------------------------------ files


def _mode_string(mode: int) -> str:
    return stat_mod.filemode(mode)


@command("ls")
def _ls(sh, argv, stdin, out):
    flags, paths = _flags(argv, "laRd1h")
    status = 0
    for p in paths or ["."]:
        try:
            host = sh.host(p)
        except SandboxError:
            host = None
        if host is None or not (host.exists() or host.is_symlink()):
            out.error(f"ls: {p}: No such file or directory\n")
            status = 1
            continue
        if host.is_dir() and "d" not in flags:
            entries = sorted(e for e in os.listdir(host) if "a" in flags or not e.startswith("."))
            items = [(e, host / e) for e in entries]
        else:
            items = [(p, host)]
        for name, h in items:
            if "l" in flags:
                st = h.lstat()
                owner = "root" if sh.phone.root_user else "shell"
                when = datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
                if sh.phone.profile.toybox:
                    out.write(f"{_mode_string(st.st_mode)} 1 {owner} {owner} {st.st_size} {when} {name}\n")
                else:
                    size = "" if stat_mod.S_ISDIR(st.st_mode) else str(st.st_size)
                    out.write(f"{_mode_string(st.st_mode)} {owner:<8} {owner:<8} {size:>8} {when} {name}\n")
            else:
                out.write(f"{name}\n")
    return status


@command("stat")
def _stat(sh, argv, stdin, out):
    fmt, paths = "%n %s", []
    args = argv[1:]
    while args:
        a = args.pop(0)
        if a == "-c" and args:
            fmt = args.pop(0)
        elif a.startswith("-c"):
            fmt = a[2:]
        else:
            paths.append(a)
    status = 0
    for p in paths:
        host = sh.host(p)
        if not host.exists():
            out.error(f"stat: '{p}': No such file or directory\n")
            status = 1
            continue
        st = host.stat()
        table = {"%s": str(st.st_size), "%Y": str(int(st.st_mtime)), "%a": f"{st.st_mode & 0o7777:o}",
                 "%n": p, "%F": "directory" if host.is_dir() else "regular file", "%%": "%"}
        out.write(re.sub(r"%[sYanF%]", lambda m, t=table: t[m.group(0)], fmt) + "\n")
    return status


@command("cat")
def _cat(sh, argv, stdin, out):
    if len(argv) == 1:
        out.write(stdin)
        return 0
    status = 0
    for p in argv[1:]:
        if p == DEV_NULL:
            continue
        try:
            host = sh.host(p)
        except SandboxError:
            host = None
        if host is None or not host.exists():
            out.error(f"cat: {p}: No such file or directory\n")
            status = 1
        elif host.is_dir():
            out.error(f"cat: {p}: Is a directory\n")
            status = 1
        else:
            out.write(host.read_bytes())
    return status


@command("rm")
def _rm(sh, argv, stdin, out):
    flags, paths = _flags(argv, "rfRv")
    status = 0
    for p in paths:
        host = sh.writable(p)
        if not host.exists() and not host.is_symlink():
            if "f" not in flags:
                out.error(f"rm: {p}: No such file or directory\n")
                status = 1
            continue
        if host.is_dir() and not host.is_symlink():
            if not flags & {"r", "R"}:
                out.error(f"rm: {p}: is a directory\n")
                status = 1
                continue
            shutil.rmtree(host)
        else:
            host.unlink()
    return status


@command("rmdir")
def _rmdir(sh, argv, stdin, out):
    for p in argv[1:]:
        sh.writable(p).rmdir()
    return 0


@command("mkdir")
def _mkdir(sh, argv, stdin, out):
    flags, paths = _flags(argv, "p")
    status = 0
    for p in paths:
        host = sh.writable(p)
        if host.exists() and "p" not in flags:
            out.error(f"mkdir: '{p}': File exists\n")
            status = 1
            continue
        host.mkdir(parents="p" in flags, exist_ok="p" in flags)
    return status


@command("touch")
def _touch(sh, argv, stdin, out):
    for p in argv[1:]:
        sh.writable(p).touch()
    return 0


@command("mv")
def _mv(sh, argv, stdin, out):
    _flags_, paths = _flags(argv, "f")
    if len(paths) != 2:
        out.error("usage: mv SOURCE DEST\n")
        return 1
    src, dst = sh.writable(paths[0]), sh.writable(paths[1])
    if not src.exists():
        out.error(f"mv: {paths[0]}: No such file or directory\n")
        return 1
    if dst.is_dir():
        dst = sh.writable(paths[1].rstrip("/") + "/" + src.name)
    os.replace(src, dst)
    return 0


@command("cp")
def _cp(sh, argv, stdin, out):
    _flags_, paths = _flags(argv, "fp")
    if len(paths) != 2:
        out.error("usage: cp SOURCE DEST\n")
        return 1
    src, dst = sh.host(paths[0]), sh.writable(paths[1])
    if dst.is_dir():
        dst = sh.writable(paths[1].rstrip("/") + "/" + src.name)
    shutil.copyfile(src, dst)
    return 0


@command("chmod")
def _chmod(sh, argv, stdin, out):
    _flags_, args = _flags(argv, "R")
    if len(args) < 2 or not re.fullmatch(r"[0-7]{1,4}", args[0]):
        out.error("chmod: only octal modes are supported (e.g. chmod 755 FILE)\n")
        return 1
    for p in args[1:]:
        host = sh.writable(p)
        if not host.exists():
            out.error(f"chmod: {p}: No such file or directory\n")
            return 1
        host.chmod(int(args[0], 8))
    return 0


def _hash_cmd(algo: str) -> Command:
    def run(sh, argv, stdin, out):
        status = 0
        if len(argv) == 1:
            out.write(f"{hashlib.new(algo, stdin).hexdigest()}  -\n")
            return 0
        for p in argv[1:]:
            if p == DEV_NULL:
                out.write(f"{hashlib.new(algo, b'').hexdigest()}  {p}\n")
                continue
            host = sh.host(p)
            if not host.is_file():
                out.error(f"{argv[0]}: {p}: No such file or directory\n")
                status = 1
                continue
            h = hashlib.new(algo)
            with open(host, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            out.write(f"{h.hexdigest()}  {p}\n")
        return status

    return run


command("md5sum")(_hash_cmd("md5"))
command("sha1sum")(_hash_cmd("sha1"))
command("sha256sum")(_hash_cmd("sha256"))


@command("wc")
def _wc(sh, argv, stdin, out):
    flags, paths = _flags(argv, "clw")
    data = stdin if not paths else sh.host(paths[0]).read_bytes()
    if "c" in flags:
        out.write(f"{len(data)}" + (f" {paths[0]}" if paths else "") + "\n")
    else:
        lines = data.count(b"\n")
        out.write(f"{lines}" + (f" {paths[0]}" if paths else "") + "\n")
    return 0


@command("grep")
def _grep(sh, argv, stdin, out):
    flags, args = _flags(argv, "iqvE")
    if not args:
        out.error("usage: grep [-iqv] PATTERN [FILE]\n")
        return 2
    pattern = re.compile(args[0], re.IGNORECASE if "i" in flags else 0)
    data = stdin if len(args) == 1 else sh.host(args[1]).read_bytes()
    hits = [ln for ln in data.decode(errors="replace").splitlines()
            if bool(pattern.search(ln)) != ("v" in flags)]
    if "q" not in flags:
        out.write("".join(ln + "\n" for ln in hits))
    return 0 if hits else 1


# ------------------------------------------------------------------ Android services


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
        return _not_found(out, "cmd")
    if argv[1:3] == ["connectivity", "airplane-mode"] and len(argv) == 4 and argv[3] in ("enable", "disable"):
        if sh.phone.profile.api_level < 30:
            out.error("Unknown command: airplane-mode\n")
            return 255
        sh.phone.settings[("global", "airplane_mode_on")] = "1" if argv[3] == "enable" else "0"
        return 0
    out.error(f"Can't find service: {argv[1] if len(argv) > 1 else ''}\n")
    return 255


@command("svc")
def _svc(sh, argv, stdin, out):
    return 0


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


# ------------------------------------------------------------------ executor_runner


def _gflags(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 1
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                k, v = a[2:], argv[i + 1]
                i += 1
            else:
                k, v = a[2:], "true"
            opts[k] = v
        i += 1
    return opts


def _runner_error(out: Output, msg: str, line: int = 100) -> int:
    """An error line as the logging build of executor_runner prints it; status 1."""
    out.error(f"E 00:00:00.000000 executorch:executor_runner.cpp:{line}] {msg}\n")
    return 1


def executor_runner(sh: Shell, argv: list[str], stdin: bytes, out: Output) -> int:
    """ExecuTorch's ``executor_runner``: runs the .pte with the runtime on the host, prints what it prints.

    Flags as the real runner: ``--model_path``, ``--num_executions``, ``--inputs`` (raw float32 file),
    ``--cpu_threads``.  While it runs the phone is busy with ``cpu_threads`` threads.
    """
    opts = _gflags(argv)
    model = opts.get("model_path", "model.pte")
    try:
        n = int(opts.get("num_executions", "1"))
        threads = int(opts.get("cpu_threads", "1"))
        if n < 1 or threads < 1:
            raise ValueError
    except ValueError:
        return _runner_error(out, "--num_executions and --cpu_threads must be positive integers")
    host_model = sh.host(model)
    if not host_model.is_file():
        return _runner_error(out, f"FileDataLoader::from() failed: 0x22 ({model}: No such file or directory)", 129)
    host_input = None
    if opts.get("inputs"):
        host_input = sh.host(opts["inputs"].split(",")[0])
        if not host_input.is_file():
            return _runner_error(out, f"input file {opts['inputs']}: No such file or directory")
    try:
        from device.runner import RunSpec, format_runner_output, run_host
    except ImportError as exc:
        return _runner_error(out, f"the ExecuTorch runtime is not available on this host ({exc})")
    phone = sh.phone
    drop = phone.faults.drop_mid_run_s
    if drop is not None and phone.take_drop() and phone.on_drop_all:
        threading.Timer(drop, phone.on_drop_all).start()
    spec = RunSpec(model_path=host_model, iterations=n, warmup=0, input_path=host_input, threads=threads)
    try:
        with phone.timeline.busy(threads):
            result = run_host(spec)
    except Cancelled:
        raise
    except Exception as exc:  # the runtime's own failures become the runner's error text
        return _runner_error(out, f"{type(exc).__name__}: {exc}")
    if sh.cancel.is_set():
        raise Cancelled()
    out.write(format_runner_output(result, model_path=model))
    return 0

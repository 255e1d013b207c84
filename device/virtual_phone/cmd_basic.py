"""Shell-ish builtins of the virtual phone: true/false/exit, echo, printf, cd, sh, su, sleep, taskset, dd...

``dd if=/dev/zero of=/dev/null bs=B count=N`` is a one-thread busy period of ``B*N`` bytes at the virtual
CPU's speed (``device.sync.VIRTUAL_DD_BYTES_PER_S``, the one constant the sync markers also use); ``sleep``
is idle.  Every other ``dd`` copies in blocks of at most ``IO_BLOCK_BYTES`` (``bs=100m`` allocates no
100 MB), ``printf`` widths are capped, ``sleep inf`` and bad escapes are errors with a status.
"""

from __future__ import annotations

import math
import re
import threading
import time
from datetime import datetime

from device.sync import VIRTUAL_DD_BYTES_PER_S
from device.virtual_phone.cmdbase import (
    FIELD_WIDTH_MAX,
    IO_BLOCK_BYTES,
    Cancelled,
    ShellExit,
    command,
    exit_status,
    lookup,
    not_found,
    parse_flags,
)
from device.virtual_phone.sandbox import DEV_NULL, DEV_ZERO

SLEEP_MAX_S = min(threading.TIMEOUT_MAX, 365 * 86400.0)
_ECHO_ESCAPES = {"a": "\a", "b": "\b", "c": "", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                 "v": "\v", "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|0[0-7]{0,3}|.?)", re.DOTALL)


command("true")(exit_status(0))
command("false")(exit_status(1))


@command("exit")
def _exit(sh, argv, stdin, out):
    raise ShellExit(int(argv[1]) & 0xFF if len(argv) > 1 and argv[1].lstrip("-").isdigit() else sh.status)


def _unescape(text: str) -> str:
    """``echo -e`` escapes; a malformed one (``\\x`` without hex digits) raises ValueError."""
    def one(m: re.Match) -> str:
        code = m.group(1)
        if code.startswith("x") and len(code) > 1:
            return chr(int(code[1:], 16))
        if code.startswith("0"):
            return chr(int(code[1:] or "0", 8) & 0xFF)
        if code in _ECHO_ESCAPES:
            return _ECHO_ESCAPES[code]
        raise ValueError(f"bad escape '\\{code}'")

    return _ESCAPE_RE.sub(one, text)


@command("echo")
def _echo(sh, argv, stdin, out):
    args, newline, escapes = argv[1:], True, False
    while args and args[0] in ("-n", "-e", "-ne", "-en"):
        newline &= "n" not in args[0]
        escapes |= "e" in args[0]
        args = args[1:]
    text = " ".join(args)
    if escapes:
        try:
            text = _unescape(text)
        except ValueError as exc:
            out.error(f"echo: {exc}\n")
            return 1
    out.write(text + ("\n" if newline else ""))
    return 0


@command("printf")
def _printf(sh, argv, stdin, out):
    if len(argv) < 2:
        out.error("printf: need format\n")
        return 1
    fmt = argv[1].replace("\\n", "\n").replace("\\t", "\t")
    args = argv[2:]
    specs = re.findall(r"%([-0-9.]*)[sdif]", fmt)
    if any(int(n) > FIELD_WIDTH_MAX for spec in specs for n in re.findall(r"\d+", spec)):
        out.error(f"printf: field width over {FIELD_WIDTH_MAX}\n")
        return 1
    try:
        count = len(specs)
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
        return sh.subshell().run(argv[2], out, stdin)
    if len(argv) == 1:
        return sh.subshell().run(stdin.decode(errors="replace"), out)
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
    # the command survives the ADB link (SIGHUP ignored)
    return sh.subshell(detached=True).exec(argv[1:], out, stdin)


@command("su")
def _su(sh, argv, stdin, out):
    if sh.phone.props.get("ro.debuggable") != "1":
        return not_found(out, "su")
    args = argv[1:]
    if args and args[0] in ("0", "root"):
        args = args[1:]
    if args and args[0] == "-c":
        return _sh(sh, ["sh", "-c", " ".join(args[1:])], stdin, out)
    if args:
        return sh.exec(args, out, stdin)
    return 0


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
    flags, _ = parse_flags(argv, "asrmn")
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
        if not (math.isfinite(seconds) and 0 <= seconds <= SLEEP_MAX_S):
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
        if bs < 1:
            raise ValueError
    except ValueError:
        out.error("dd: bad number\n")
        return 1
    src, dst = opts.get("if", "-"), opts.get("of", "-")
    if src == DEV_ZERO and dst == DEV_NULL and count >= 0:
        total = bs * count
        seconds = total / VIRTUAL_DD_BYTES_PER_S
        if seconds > SLEEP_MAX_S:
            out.error("dd: count too large\n")
            return 1
        t0 = time.monotonic()
        with sh.phone.timeline.busy(1):
            sh.sleep(seconds)
        dt = max(time.monotonic() - t0, 1e-9)
        out.error(f"{count}+0 records in\n{count}+0 records out\n{total} bytes transferred in {dt:.3f} secs "
                  f"({int(total / dt)} bytes/sec)\n")
        return 0
    if src == DEV_ZERO and count < 0:
        out.error("dd: reading /dev/zero needs count=N on the virtual phone\n")
        return 1
    limit = bs * count if count >= 0 else None
    fh_out = None if dst in ("-", DEV_NULL) else open(sh.writable(dst), "wb")  # noqa: SIM115
    copied = 0
    try:
        for block in _dd_source(sh, src, stdin, limit):
            if sh.cancel.is_set():
                raise Cancelled()
            if dst == "-":
                out.write(block)
            elif fh_out is not None:
                fh_out.write(block)
            copied += len(block)
    finally:
        if fh_out is not None:
            fh_out.close()
    n = (copied + bs - 1) // bs
    out.error(f"{n}+0 records in\n{n}+0 records out\n{copied} bytes transferred\n")
    return 0


def _dd_source(sh, src: str, stdin: bytes, limit: int | None):
    """The input of ``dd`` in blocks of at most ``IO_BLOCK_BYTES``, stopping at ``limit`` bytes."""
    left = limit if limit is not None else math.inf
    if src == DEV_ZERO:
        while left > 0:
            n = int(min(left, IO_BLOCK_BYTES))
            yield bytes(n)
            left -= n
        return
    if src == "-":
        view = memoryview(stdin)
        for i in range(0, len(stdin), IO_BLOCK_BYTES):
            if left <= 0:
                return
            block = bytes(view[i:i + int(min(IO_BLOCK_BYTES, left))])
            left -= len(block)
            yield block
        return
    with open(sh.host(src), "rb") as fh:
        while left > 0:
            block = fh.read(int(min(IO_BLOCK_BYTES, left)))
            if not block:
                return
            left -= len(block)
            yield block


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]

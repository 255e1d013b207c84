"""File commands of the virtual phone: ls, stat, cat, rm, mkdir, touch, mv, cp, chmod, *sum, wc, grep.

Files stream in blocks (``cat`` of a 1 GB file holds 64 KiB at a time); ``grep`` and ``wc`` of a file read
at most ``PIPE_MAX_BYTES``.  ``chmod`` keeps only safe mode bits (:func:`sandbox.safe_mode`: no setuid,
setgid, sticky, group or other write), since the files are host files of the user running the phone.
``grep`` matches with the ``regex`` engine, which releases the GIL and takes a time limit, so a
catastrophic pattern (``^(a+)+$``) fails after ``GREP_TIME_LIMIT_S`` with status 2 while other
clients keep being served.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat as stat_mod
import time
from datetime import datetime

import regex

from device.virtual_phone.cmdbase import (
    IO_BLOCK_BYTES,
    Command,
    command,
    parse_flags,
    read_limited,
)
from device.virtual_phone.sandbox import DEV_NULL, safe_mode

GREP_TIME_LIMIT_S = 1.0


def _mode_string(mode: int) -> str:
    return stat_mod.filemode(mode)


@command("ls")
def _ls(sh, argv, stdin, out):
    flags, paths = parse_flags(argv, "laRd1h")
    status = 0
    for p in paths or ["."]:
        host = sh.host_or_none(p)
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
        host = sh.host_or_none(p)
        if host is None or not host.exists():
            out.error(f"cat: {p}: No such file or directory\n")
            status = 1
        elif host.is_dir():
            out.error(f"cat: {p}: Is a directory\n")
            status = 1
        else:
            with open(host, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(IO_BLOCK_BYTES), b""):
                    if sh.cancel.is_set():
                        break
                    out.write(block)
    return status


def _per_path(known_flags: str, each) -> Command:
    """A command doing ``each(flags, path, host, out)`` (0, or 1 after saying what failed) for every path
    argument and its writable host path; its status is 1 when any path failed."""
    def run(sh, argv, stdin, out):
        flags, paths = parse_flags(argv, known_flags)
        status = 0
        for p in paths:
            status |= each(flags, p, sh.writable(p), out)
        return status

    return run


def _rm_one(flags, p, host, out) -> int:
    if not host.exists() and not host.is_symlink():
        if "f" in flags:
            return 0
        out.error(f"rm: {p}: No such file or directory\n")
        return 1
    if host.is_dir() and not host.is_symlink():
        if not flags & {"r", "R"}:
            out.error(f"rm: {p}: is a directory\n")
            return 1
        shutil.rmtree(host)
    else:
        host.unlink()
    return 0


def _mkdir_one(flags, p, host, out) -> int:
    if host.exists() and "p" not in flags:
        out.error(f"mkdir: '{p}': File exists\n")
        return 1
    host.mkdir(parents="p" in flags, exist_ok="p" in flags)
    return 0


command("rm")(_per_path("rfRv", _rm_one))
command("mkdir")(_per_path("p", _mkdir_one))
command("rmdir")(_per_path("", lambda flags, p, host, out: host.rmdir() or 0))
command("touch")(_per_path("", lambda flags, p, host, out: host.touch() or 0))


def _source_dest_command(flags: str, source, check_source: bool, action) -> Command:
    """A ``NAME [-FLAGS] SOURCE DEST`` command doing ``action(src, dst)`` on host paths (``dst`` inside a
    directory it names).  ``source(sh, path)`` resolves the source; ``check_source``: say a missing source
    here (``mv``), else the action's own OSError says it (``cp``)."""
    def run(sh, argv, stdin, out):
        _flags_, paths = parse_flags(argv, flags)
        if len(paths) != 2:
            out.error(f"usage: {argv[0]} SOURCE DEST\n")
            return 1
        src, dst = source(sh, paths[0]), sh.writable(paths[1])
        if check_source and not src.exists():
            out.error(f"{argv[0]}: {paths[0]}: No such file or directory\n")
            return 1
        if dst.is_dir():
            dst = sh.writable(paths[1].rstrip("/") + "/" + src.name)
        action(src, dst)
        return 0

    return run


command("mv")(_source_dest_command("f", lambda sh, p: sh.writable(p), True, os.replace))
command("cp")(_source_dest_command("fp", lambda sh, p: sh.host(p), False, shutil.copyfile))


@command("chmod")
def _chmod(sh, argv, stdin, out):
    _flags_, args = parse_flags(argv, "R")
    if len(args) < 2 or not re.fullmatch(r"[0-7]{1,4}", args[0]):
        out.error("chmod: only octal modes are supported (e.g. chmod 755 FILE)\n")
        return 1
    for p in args[1:]:
        host = sh.writable(p)
        if not host.exists():
            out.error(f"chmod: {p}: No such file or directory\n")
            return 1
        host.chmod(safe_mode(int(args[0], 8)))
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
    flags, paths = parse_flags(argv, "clw")
    size = lines = 0
    if paths:
        with open(sh.host(paths[0]), "rb") as fh:
            for block in iter(lambda: fh.read(IO_BLOCK_BYTES), b""):
                size, lines = size + len(block), lines + block.count(b"\n")
    else:
        size, lines = len(stdin), stdin.count(b"\n")
    out.write(f"{size if 'c' in flags else lines}" + (f" {paths[0]}" if paths else "") + "\n")
    return 0


@command("grep")
def _grep(sh, argv, stdin, out):
    flags, args = parse_flags(argv, "iqvE")
    if not args:
        out.error("usage: grep [-iqv] PATTERN [FILE]\n")
        return 2
    try:
        pattern = regex.compile(args[0], regex.IGNORECASE if "i" in flags else 0)
    except (regex.error, OverflowError, RecursionError) as exc:
        out.error(f"grep: bad regex '{args[0][:80]}': {exc}\n")
        return 2
    data = stdin if len(args) == 1 else read_limited(sh.host(args[1]))
    deadline = time.monotonic() + GREP_TIME_LIMIT_S
    hits = []
    try:
        for ln in data.decode(errors="replace").splitlines():
            left = deadline - time.monotonic()
            if left <= 0 or sh.cancel.is_set():
                raise TimeoutError
            if bool(pattern.search(ln, concurrent=True, timeout=left)) != ("v" in flags):
                hits.append(ln)
    except TimeoutError:
        out.error(f"grep: pattern too expensive (over {GREP_TIME_LIMIT_S:g} s)\n")
        return 2
    if "q" not in flags:
        out.write("".join(ln + "\n" for ln in hits))
    return 0 if hits else 1

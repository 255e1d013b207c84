"""Shared helpers for sub-commands: JSON output, list parsing, progress bars."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from device.errors import short_repr as short
from device.files import atomic_write_bytes
from harness.errors import UsageError

T = TypeVar("T")


def _clean(obj: Any) -> Any:
    """Make numpy scalars/arrays and NaN JSON-safe (NaN/inf become null)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None  # type: ignore[assignment]
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if np is not None and isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def add_command(subparsers, name: str, func, help_text: str, doc: str | None = None):
    """The sub-parser of command ``name``, which runs ``func(args)``: ``help_text`` is its line in
    ``harness --help``; its description is ``doc`` (the command module's docstring) after the first paragraph."""
    description = (doc or "").partition("\n\n")[2].strip() or None
    p = subparsers.add_parser(name, help=help_text, description=description)
    p.set_defaults(func=func)
    return p


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores like the new one and notes itself in ``args.deprecated_flags``
    (``harness.cli`` logs one warning per use once logging is set up)."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        notes = list(getattr(namespace, "deprecated_flags", None) or [])
        notes.append((option_string, self.new_flag))
        namespace.deprecated_flags = notes


class _RefusedFlag(argparse.Action):
    """A flag whose meaning changed: refused with one line saying what to use."""

    def __init__(self, option_strings, dest, message: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{parser.prog}: {option_string} {self.message}")


class LazyChoices:
    """argparse ``choices`` read from a registry on first use (a flag given, ``--help``), so building the parser
    does not import torch: ``harness --help`` and every bad-input refusal stay fast."""

    def __init__(self, load: Callable[[], Iterable[str]]):
        self._load = load
        self._names: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __contains__(self, item: object) -> bool:
        return item in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def add_output_flag(parser, help_text: str, *, dest: str = "output", old: tuple[str, ...] = (), **kwargs) -> None:
    """``-o/--output``, the one spelling of an output file or folder; ``old`` spellings (``--out``,
    ``--plot``) still work, hidden, with a deprecation warning."""
    parser.add_argument("-o", "--output", dest=dest, help=help_text, **kwargs)
    for flag in old:
        parser.add_argument(flag, dest=dest, action=_DeprecatedFlag, new_flag="-o/--output",
                            default=argparse.SUPPRESS, metavar=kwargs.get("metavar"), help=argparse.SUPPRESS)


def add_refused_flag(parser, flag: str, message: str) -> None:
    """A hidden ``flag`` that fails with ``message`` (a flag renamed because its old meaning misled)."""
    parser.add_argument(flag, dest=f"refused_{flag.strip('-').replace('-', '_')}", action=_RefusedFlag,
                        message=message, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


#: Most items a list flag (``--levels``, ``--classes``) may expand to; ranges are checked before expanding.
MAX_LIST_ITEMS = 1000


def parse_int_list(text: str, what: str, lo: int | None = None, hi: int | None = None,
                   max_items: int = MAX_LIST_ITEMS) -> list[int]:
    """Parse ``"1,2,3"`` (and ranges ``"2-5"``) into ints; one clear UsageError on anything odd.

    Bounds are checked on the ends of a range before it is expanded, and the list may hold at most
    ``max_items`` numbers, so ``1-300000000`` is refused at once instead of filling memory.
    """
    if text is None or not str(text).strip():
        raise UsageError(f"{what}: empty list; give comma-separated numbers like 0,1,2")
    text = str(text)
    shown = short(text)

    def check(v: int) -> int:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise UsageError(f"{what}: {v} is out of range {lo}..{hi}")
        return v

    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"{what}: empty item in {shown}; give comma-separated numbers like 0,1,2")
        try:
            if "-" in part[1:]:
                a, b = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                lo_v, hi_v = _int(a), _int(b)
                if hi_v < lo_v:
                    raise ValueError
                check(lo_v)
                check(hi_v)
                if len(out) + (hi_v - lo_v + 1) > max_items:
                    raise UsageError(f"{what}: more than {max_items} numbers in {shown}")
                out.extend(range(lo_v, hi_v + 1))
            else:
                out.append(check(_int(part)))
        except ValueError:
            raise UsageError(f"{what}: {short(part, 40)} is not a whole number or range (in {shown})") from None
        if len(out) > max_items:
            raise UsageError(f"{what}: more than {max_items} numbers in {shown}")
    return out


def _int(text: str) -> int:
    """A plain decimal integer (no ``1_000``, no 5000-digit numbers)."""
    t = text.strip()
    body = t[1:] if t[:1] in "+-" else t
    if not body.isdigit() or not body.isascii() or len(body) > 18:
        raise ValueError(text)
    return int(t)


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, carriage returns, escapes) shown escaped: one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _ranged(parse, fmt, name: str, lo, hi, lo_open: bool = False):
    """An argparse ``type=``: ``parse`` the text, then keep it in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def convert(text: str):
        v = parse(text)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"{fmt(v)} must be {'above' if lo_open else 'at least'} {fmt(lo)}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{fmt(v)} is above the limit {fmt(hi)}")
        return v

    convert.__name__ = name
    return convert


def _parse_finite(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{short(text, 40)} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{short(text, 40)} is not a finite number")
    return v


def _parse_whole(text: str) -> int:
    try:
        return _int(str(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{short(text, 40)} is not a whole number") from None


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    """An argparse ``type=`` for a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``): NaN/inf refused."""
    return _ranged(_parse_finite, lambda v: f"{v:g}", "number", lo, hi, lo_open)


def bounded_int(lo: int | None = None, hi: int | None = None):
    """An argparse ``type=`` for a whole number in ``[lo, hi]``."""
    return _ranged(_parse_whole, str, "whole number", lo, hi)


def max_threads() -> int:
    """The most inference threads a command may ask for: 256, or four per core on bigger machines."""
    return max(256, 4 * (os.cpu_count() or 1))


def check_output_file(path: str | Path, flag: str = "-o") -> Path:
    """The output file ``path`` if it can be written: not a directory, under a writable directory.

    Checked before slow work; nothing is left behind by the check.  One UsageError (exit 2) otherwise.
    """
    p = Path(path)
    if not str(path).strip():
        raise UsageError(f"{flag}: give a file name")
    if p.is_dir():
        raise UsageError(f"{flag} {short(str(p))}: is a directory; give a file name")
    writable_dir(p.parent, f"{flag} {short(str(p))}")
    return p


def writable_dir(d: str | Path, what: str) -> None:
    """UsageError unless ``d`` (or its nearest existing ancestor, if ``d`` does not exist yet) is a writable directory.

    Probed by creating and removing a temporary file there, which is also true for root and for
    read-only or immutable mounts, where ``os.access`` is not.
    """
    import tempfile

    d = Path(d) if str(d) else Path(".")
    probe = d
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{what}: {short(str(probe))} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".harness-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {short(str(probe))} ({exc.strerror or exc})") from None


def write_output(path: str | Path, data: bytes, flag: str = "-o") -> Path:
    """``atomic_write_bytes`` with an OSError as one UsageError line (the temporary file is removed)."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"{flag} {short(str(path))}: cannot write ({exc.strerror or exc})") from None
    return Path(path)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar on stderr when it is a terminal (or HARNESS_PROGRESS=1), else plain."""
    show = os.environ.get("HARNESS_PROGRESS", "") == "1" or (
        sys.stderr.isatty() and os.environ.get("HARNESS_PROGRESS", "") != "0"
    )
    if not show:
        yield from iterable
        return
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: it aborted next to ExecuTorch's thread pool
    yield from tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


__all__ = ["add_json_flag", "add_output_flag", "add_refused_flag", "atomic_write_bytes", "bounded_int", "check_output_file", "finite_float", "parse_int_list",
           "print_json", "progress", "short", "writable_dir", "write_output"]

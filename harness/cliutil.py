"""Shared helpers for sub-commands: JSON output, list parsing, progress bars."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def parse_int_list(text: str, what: str, lo: int | None = None, hi: int | None = None) -> list[int]:
    """Parse ``"1,2,3"`` (and ranges ``"2-5"``) into ints; one clear UsageError on anything odd."""
    if text is None or not str(text).strip():
        raise UsageError(f"{what}: empty list; give comma-separated numbers like 0,1,2")
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"{what}: empty item in {text!r}; give comma-separated numbers like 0,1,2")
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo_v, hi_v = int(a), int(b)
                if hi_v < lo_v:
                    raise ValueError
                out.extend(range(lo_v, hi_v + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"{what}: {part!r} is not a whole number or range (in {text!r})") from None
    for v in out:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise UsageError(f"{what}: {v} is out of range {lo}..{hi}")
    return out


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


__all__ = ["add_json_flag", "atomic_write_bytes", "parse_int_list", "print_json", "progress"]

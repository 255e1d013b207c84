"""What a sweep covers and how it runs: :class:`SweepOptions` (frozen, validated, loadable from TOML)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.options import options_from_mapping, read_toml_table
from specialist.model import N_CLASSES

SIZES_RANGE = (2, N_CLASSES)
DEFAULT_SIZES: tuple[int, ...] = tuple(range(2, N_CLASSES + 1))
DEFAULT_LEVELS: tuple[float, ...] = (10.0, 20.0, 30.0, 40.0, 50.0)
QUICK_SUBSETS = 3
QUICK_PER_CLASS = 200


def _default_method() -> str:
    from specialist.methods import DEFAULT_METHOD

    return DEFAULT_METHOD


def parse_levels(text: str) -> tuple[float, ...]:
    """``"10,20,30"`` -> ``(10.0, 20.0, 30.0)`` (sorted, unique, each in (0, 100)); UsageError otherwise."""
    if text is None or not str(text).strip():
        raise UsageError("--levels: empty list; give levels like 10,20,30,40,50")
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"--levels: {part!r} is not a number (in {text!r}); give levels like 10,20,30") from None
        if not 0 < v < 100 or not math.isfinite(v):
            raise UsageError(f"--levels: {part} is out of range; levels are percent of channels removed, "
                             "above 0 and below 100 (the unpruned column is always included)")
        out.append(v)
    return tuple(sorted(set(out)))


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"2-10"`` or ``"2,5,10"`` -> sorted unique subset sizes in 2..10; UsageError otherwise."""
    from harness.cliutil import parse_int_list

    return tuple(sorted(set(parse_int_list(text, "--sizes", *SIZES_RANGE))))


def _whole(value: Any, name: str, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= {lo}, got {value!r}")


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep and how.  Loadable from TOML (a ``[sweep]`` table with these field names)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    levels: tuple[float, ...] = DEFAULT_LEVELS
    subsets: int = 10
    seed: int = 0
    methods: tuple[str, ...] = field(default_factory=lambda: (_default_method(),))
    per_class: int | None = None  # test images per class (None: all)
    exact_only: bool = False
    engine: str = "auto"  # specialist.evaluate.ENGINES; auto: bf16 with native bfloat16, else torch-cl
    workers: int = 2  # worker processes (1: evaluate in this process)
    threads: int = 0  # torch threads per worker (0: 1 with several workers, torch's default with one)
    chunk_images: int = 32
    task_jobs: int = 30  # pruned jobs (subset x level) per task: the unit of work and of resumption
    calib_per_class: int | None = None  # calibration images per class of methods that reconstruct from images

    def __post_init__(self) -> None:
        from specialist.evaluate import ENGINES

        sizes = tuple(int(s) for s in self.sizes)
        if not sizes or any(not SIZES_RANGE[0] <= s <= SIZES_RANGE[1] for s in sizes):
            raise UsageError(f"sizes {list(sizes)}: subset sizes must be within {SIZES_RANGE[0]}-{SIZES_RANGE[1]}")
        object.__setattr__(self, "sizes", tuple(sorted(set(sizes))))
        levels = tuple(float(v) for v in self.levels)
        if not levels or any(not 0 < v < 100 for v in levels):
            raise UsageError(f"levels {list(levels)}: each level must be above 0 and below 100 (percent removed)")
        object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        if isinstance(self.methods, str):
            object.__setattr__(self, "methods", tuple(m.strip() for m in self.methods.split(",") if m.strip()))
        if not self.methods:
            raise UsageError("methods: give at least one method name")
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"methods {list(self.methods)}: a method is named twice")
        for name, lo in (("subsets", 1), ("workers", 1), ("chunk_images", 1), ("task_jobs", 1), ("threads", 0),
                         ("seed", 0)):
            _whole(getattr(self, name), name, lo)
        if self.per_class is not None:
            _whole(self.per_class, "per_class", 1)
        if self.calib_per_class is not None:
            _whole(self.calib_per_class, "calib_per_class", 1)
        if self.engine not in ENGINES:
            raise UsageError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")

    def replace(self, **changes: Any) -> SweepOptions:
        """A copy with the given fields changed (``None`` values are ignored)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **clean) if clean else self

    def quick(self) -> SweepOptions:
        """The ``--quick`` variant: 3 subsets, 200 test images per class."""
        return dataclasses.replace(self, subsets=QUICK_SUBSETS, per_class=QUICK_PER_CLASS)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepOptions:
        """Options from a TOML file: ``[sweep]`` with any of the field names (``sizes`` may be "2-10")."""
        table = read_toml_table(path, "sweep", "sweep options", UsageError)
        if isinstance(table.get("sizes"), str):
            table["sizes"] = parse_sizes(table["sizes"])
        if isinstance(table.get("levels"), str):
            table["levels"] = parse_levels(table["levels"])
        return options_from_mapping(cls, table, f"sweep options {path}", UsageError)

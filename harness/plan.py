"""Run plans: what to measure, how long, in which order, and when enough is enough.

A :class:`RunPlan` is a frozen option set built from defaults for the kind of device (real phone,
virtual phone, host), then a TOML run file (``--config``), then command-line flags.  The window
order is a randomized, counterbalanced sequence of rounds (each round is one row of a balanced
Latin square, so every model precedes every other equally often and thermal drift and battery
state hit all models alike), with every inference window bracketed by idle windows:
``idle, inf, idle, inf, ..., idle``.  After ``min_reps`` rounds the run stops as soon as the precision
targets are met (:func:`target_misses`: every level's savings CI half-width, from paired per-round ratios,
at most ``target_saved_ci_pts`` points, and, when set, every model's CI at most ``target_ci_pct`` of its
value), at ``max_reps``, or when the next round would overrun ``max_measure_s``.  A run that stopped
without meeting them is "complete, target not reached" and says which level missed and by how much.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harness.cliutil import max_threads, short
from harness.errors import UsageError

#: The virtual lab's default windows (docs/run.md, "Precision"): many short rounds pair each specialist with
#: the base model measured seconds apart; idle windows are short because the virtual phone's idle power is
#: flat (0.5 s of 5 kHz samples pins it to well under 0.1%); the measuring budget keeps a default run of
#: five levels within 5 minutes on a 2-core machine.
VIRTUAL_WINDOW_S = 1.0
VIRTUAL_IDLE_S = 0.5
VIRTUAL_MEASURE_S = 210.0

#: Device kinds and their defaults.  Real phones follow published practice (>= 60 s and >= 1024
#: inferences per model, warm-up, cool-down); the virtual lab and the host get a quick demo.  The host
#: measures no energy, so its idle windows last 0 s (they keep the schedule's shape).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "real": dict(window_s=15.0, min_reps=4, max_reps=20, target_ci_pct=2.0, warmup_inferences=10,
                 min_inference_s_per_model=60.0, min_inferences_per_model=1024, cooldown_temp_c=40.0,
                 cooldown_timeout_s=120.0, cooldown_pause_s=30.0),
    "virtual": dict(window_s=VIRTUAL_WINDOW_S, idle_s=VIRTUAL_IDLE_S, min_reps=6, max_reps=40,
                    target_ci_pct=None, target_saved_ci_pts=2.0, max_measure_s=VIRTUAL_MEASURE_S,
                    warmup_inferences=20, min_inference_s_per_model=0.0, min_inferences_per_model=64,
                    cooldown_temp_c=None, cooldown_timeout_s=0.0, cooldown_pause_s=0.0),
    "host": dict(window_s=1.0, idle_s=0.0, min_reps=3, max_reps=8, target_ci_pct=3.0, warmup_inferences=3,
                 min_inference_s_per_model=3.0, min_inferences_per_model=64, cooldown_temp_c=None,
                 cooldown_timeout_s=0.0, cooldown_pause_s=0.0),
}


@dataclass(frozen=True)
class RunPlan:
    """Every setting of one run (stored with the run as JSON; loadable from TOML)."""

    device: str = "virtual"
    kind: str = "virtual"  # real | virtual | host
    levels: tuple[int, ...] = (10, 20, 30, 40, 50)
    classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    method: str = ""  # "" = the project's default preset
    monitor: str = "monsoon"  # monsoon | gauge (real phones)
    serial: str = ""  # phone serial (real phones)
    monitor_serial: str = ""  # power monitor serial (real phones)
    window_s: float = 2.0  # target length of one inference window
    idle_s: float | None = None  # idle window length (None: same as window_s)
    warmup_inferences: int = 3
    min_reps: int = 4
    max_reps: int = 6
    target_ci_pct: float | None = 5.0  # stop only when every model's 95% CI half-width / value is below this
    target_saved_ci_pts: float | None = 2.0  # ... and every level's savings CI half-width is below this (points)
    max_measure_s: float | None = None  # start no round that would end past this many seconds of measuring
    min_inference_s_per_model: float = 8.0
    min_inferences_per_model: int = 64
    cooldown_temp_c: float | None = None  # wait until the device is below this before a window
    cooldown_timeout_s: float = 0.0
    cooldown_pause_s: float = 0.0  # fixed pause when no temperature can be read
    threads: int = 1
    seed: int = 0
    max_consecutive_failures: int = 3  # stop (resumable) after this many failed windows in a row
    model: str = ""  # base model: .npz or "nin" (NIN; "" = shipped), or a graph model (resnet20, pkg.mod:fn, .pt2)
    weights: str = ""  # graph models: a state_dict file for ``model``
    stats: str = ""  # stats artifact ("" = build or reuse the default one)
    data: str = ""  # CIFAR-10 directory for accuracy ("" = the usual search)
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def idle_window_s(self) -> float:
        return float(self.idle_s if self.idle_s is not None else self.window_s)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> RunPlan:
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(RunPlan)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("levels", "classes"):
            d[k] = tuple(d.get(k, ()))
        d["extra"] = tuple(tuple(x) for x in d.get("extra", ()))
        return RunPlan(**d)


PLAN_KEYS = tuple(f.name for f in dataclasses.fields(RunPlan) if f.name not in ("extra",))

#: Upper bounds of plan settings: sane runs stay far below them; beyond them a typo costs hours or memory.
MAX_WINDOW_S = 600.0
MAX_REPS = 1000
MAX_WARMUP_INFERENCES = 1_000_000
MAX_INFERENCES_PER_MODEL = 10_000_000
MAX_INFERENCE_S_PER_MODEL = 3600.0
MAX_COOLDOWN_S = 3600.0
MAX_MEASURE_S = 7 * 86400.0
MAX_TEMPERATURE_C = 150.0
MAX_SEED = 2**32 - 1
MAX_TEXT_CHARS = 4096


def _coerce_settings(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``data`` with every value converted to its :class:`RunPlan` field type; one UsageError otherwise.

    Whole numbers stay whole (``levels = [10.7, 20]`` is refused, not truncated), lists stay lists
    (``levels = "10,20"`` and ``levels = 10`` are refused), numbers are finite, text has no NUL.
    """
    from harness.options import _type_name, coerce_value

    hints = typing.get_type_hints(RunPlan)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints or key == "extra":
            raise UsageError(f"{what}: unknown key {short(key, 40)}; known: {', '.join(PLAN_KEYS)}")
        tp = hints[key]
        try:
            v = coerce_value(tp, value)
        except (TypeError, ValueError, OverflowError):
            want = "a list of whole numbers, e.g. [10, 20, 30]" if key in ("levels", "classes") else _type_name(tp)
            raise UsageError(f"{what}: {key} must be {want}, not {short(value, 60)}") from None
        if isinstance(v, str) and ("\x00" in v or len(v) > MAX_TEXT_CHARS):
            raise UsageError(f"{what}: {key} must be text without NUL and at most {MAX_TEXT_CHARS} characters")
        out[key] = v
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run file: keys at top level or under ``[run]``; unknown keys and wrong types are refused."""
    p = Path(path)
    where = f"--config {short(str(p))}"
    if not str(path).strip():
        raise UsageError("--config: give a TOML file")
    if not p.is_file():
        raise UsageError(f"{where}: no such file")
    try:
        if p.stat().st_size > 1 << 20:
            raise UsageError(f"{where}: larger than 1 MiB; a run file holds a few settings")
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}: not valid TOML ({short(str(exc))})") from None
    except (OSError, RecursionError) as exc:
        raise UsageError(f"{where}: cannot read ({short(getattr(exc, 'strerror', None) or str(exc))})") from None
    if "run" in data:
        if not isinstance(data["run"], dict):
            raise UsageError(f"{where}: [run] must be a table")
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    unknown = sorted(set(data) - set(PLAN_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {short(', '.join(unknown))}; known: {', '.join(PLAN_KEYS)}")
    settings = _coerce_settings(data, where)
    for key, value in settings.items():
        if key in FIELD_CHECKS:
            try:
                FIELD_CHECKS[key](value)
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
    return settings


def make_plan(kind: str, device: str, overrides: Mapping[str, Any] | None = None) -> RunPlan:
    """Defaults for the device kind, then ``overrides`` (TOML, then flags); every setting checked."""
    if kind not in KIND_DEFAULTS:
        raise UsageError(f"unknown device kind {kind!r}; known: {', '.join(KIND_DEFAULTS)}")
    values: dict[str, Any] = dict(KIND_DEFAULTS[kind])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["kind"] = kind
    values["device"] = device
    if values.get("model") == "nin":  # the shipped NIN, as no --model
        values["model"] = ""
    plan = RunPlan(**_coerce_settings(values, "run settings"))
    validate(plan)
    return plan


def _finite_in(name: str, v: float | None, lo: float, hi: float, *, lo_open: bool = False,
               unit: str = "") -> None:
    if v is None:
        return
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        rel = ">" if lo_open else ">="
        raise UsageError(f"{name} must be a finite number {rel} {lo:g} and <= {hi:g}{unit} (got {v!r})")


def _int_in(name: str, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        raise UsageError(f"{name} must be a whole number from {lo} to {hi} (got {v})")


def _levels(levels: tuple[int, ...]) -> None:
    if not levels:
        raise UsageError("levels: give at least one level, e.g. --levels 10,20,30")
    for lv in levels:
        if not 1 <= lv <= 99:
            raise UsageError(f"levels: {lv} is out of range 1..99 (percent of channels removed)")
    if len(set(levels)) != len(levels):
        raise UsageError(f"levels: {short(','.join(map(str, levels)))} repeats a level")


def _classes(classes: tuple[int, ...]) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UsageError("classes: give at least two different classes, e.g. --classes 0,1,2,3,4")
    if any(not 0 <= c <= 9 for c in classes):
        raise UsageError("classes: CIFAR-10 classes are 0..9")


def _device(name: str) -> None:
    if not name.strip():
        raise UsageError("device: give a device name (virtual, host or a profile such as nexus4)")


def _monitor(name: str) -> None:
    if name not in ("monsoon", "gauge"):
        raise UsageError(f"monitor: {short(name, 40)} is not monsoon or gauge")


#: The check of each plan setting on its own (ranges, upper bounds, NaN and infinity); cross-setting
#: rules are in :func:`validate`.  ``load_toml`` runs them too, so a bad run file is named in the error.
FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "device": _device,
    "levels": _levels,
    "classes": _classes,
    "monitor": _monitor,
    "window_s": partial(_finite_in, "window_s", lo=0.0, hi=MAX_WINDOW_S, lo_open=True, unit=" s"),
    "idle_s": partial(_finite_in, "idle_s", lo=0.0, hi=MAX_WINDOW_S, unit=" s"),
    "min_reps": partial(_int_in, "min_reps", lo=2, hi=MAX_REPS),
    "max_reps": partial(_int_in, "max_reps", lo=2, hi=MAX_REPS),
    "target_ci_pct": partial(_finite_in, "target_ci_pct", lo=0.0, hi=100.0, lo_open=True, unit=" %"),
    "target_saved_ci_pts": partial(_finite_in, "target_saved_ci_pts", lo=0.0, hi=100.0, lo_open=True,
                                   unit=" points"),
    "max_measure_s": partial(_finite_in, "max_measure_s", lo=0.0, hi=MAX_MEASURE_S, lo_open=True, unit=" s"),
    "warmup_inferences": partial(_int_in, "warmup_inferences", lo=0, hi=MAX_WARMUP_INFERENCES),
    "min_inferences_per_model": partial(_int_in, "min_inferences_per_model", lo=1, hi=MAX_INFERENCES_PER_MODEL),
    "min_inference_s_per_model": partial(_finite_in, "min_inference_s_per_model", lo=0.0,
                                         hi=MAX_INFERENCE_S_PER_MODEL, unit=" s"),
    "cooldown_temp_c": partial(_finite_in, "cooldown_temp_c", lo=0.0, hi=MAX_TEMPERATURE_C, unit=" C"),
    "cooldown_timeout_s": partial(_finite_in, "cooldown_timeout_s", lo=0.0, hi=MAX_COOLDOWN_S, unit=" s"),
    "cooldown_pause_s": partial(_finite_in, "cooldown_pause_s", lo=0.0, hi=MAX_WINDOW_S, unit=" s"),
    "threads": lambda v: _int_in("threads", v, 1, max_threads()),
    "seed": partial(_int_in, "seed", lo=0, hi=MAX_SEED),
    "max_consecutive_failures": partial(_int_in, "max_consecutive_failures", lo=1, hi=MAX_REPS),
}


def validate(plan: RunPlan) -> None:
    """One clear UsageError for the first bad setting (types, ranges, upper bounds, NaN and infinity)."""
    for key, check in FIELD_CHECKS.items():
        check(getattr(plan, key))
    if plan.max_reps < plan.min_reps:
        raise UsageError(f"repetitions: need 2 <= min_reps <= max_reps (got {plan.min_reps}, {plan.max_reps})")


def check_inputs(plan: RunPlan) -> None:
    """The plan's named inputs exist and are of the right kind: method, base model, stats artifact, data.

    Cheap (a preset lookup or a small TOML, the weights file, the artifact the build reads anyway, which
    is then cached), and run before anything is written or built, so a typo costs no exports.
    """
    from harness.graphargs import is_graph_spec

    if is_graph_spec(plan.model):  # resnet20, pkg.mod:factory, .pt2 (harness/graphrun.py)
        from harness.graphrun import check_graph_plan

        return check_graph_plan(plan)
    if plan.weights:
        raise UsageError("weights: applies to graph models (--model resnet20, pkg.mod:factory, .pt2), not NIN")
    from specialist.build import load_default_stats
    from specialist.methods import get_method
    from specialist.model import load_weights

    if plan.method:
        get_method(plan.method)
    if plan.model and not Path(plan.model).is_file():
        raise UsageError(f"--model {short(plan.model)}: no such file (give a base model .npz)")
    base = load_weights(plan.model or None)
    if plan.stats:
        if not Path(plan.stats).is_file():
            raise UsageError(f"--stats {short(plan.stats)}: no such file (make one with 'harness stats -o FILE')")
        load_default_stats(base, plan.stats)
    if plan.data and not Path(plan.data).is_dir():
        raise UsageError(f"data {short(plan.data)}: no such directory")


def inferences_per_window(plan: RunPlan, est_ms_per_inference: float) -> int:
    """Inferences in one window: fill ``window_s`` and reach the per-model minimums in ``min_reps`` rounds."""
    per_window_s = max(plan.window_s, plan.min_inference_s_per_model / plan.min_reps)
    by_time = math.ceil(per_window_s * 1000.0 / max(est_ms_per_inference, 1e-3))
    by_count = math.ceil(plan.min_inferences_per_model / plan.min_reps)
    return int(max(1, by_time, by_count))


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Slot:
    """One planned window: ``seq`` is its key in the store."""

    seq: int
    round_idx: int
    kind: str  # "inference" | "idle"
    model_key: str  # "" for idle


def balanced_latin_square(n: int) -> np.ndarray:
    """Rows of a Williams design: each symbol follows each other equally often.

    ``n`` rows for even ``n``; ``2n`` rows (the square and its mirror) for odd ``n``.
    """
    if n < 1:
        raise ValueError("n must be positive")
    j = np.arange(n)
    first = np.where(j % 2 == 1, (j + 1) // 2, (n - j // 2) % n)
    rows = (first[None, :] + np.arange(n)[:, None]) % n
    if n % 2 == 1:
        rows = np.concatenate([rows, rows[:, ::-1]])
    return rows


def round_orders(model_keys: Sequence[str], n_rounds: int, seed: int) -> list[list[str]]:
    """Model order of each round: Williams rows, symbols randomly assigned, rows shuffled per block."""
    keys = list(model_keys)
    rng = np.random.default_rng(seed)
    sym = rng.permutation(len(keys))
    square = balanced_latin_square(len(keys))
    orders: list[list[str]] = []
    while len(orders) < n_rounds:
        for r in rng.permutation(len(square)):
            orders.append([keys[sym[s]] for s in square[r]])
    return orders[:n_rounds]


def schedule(model_keys: Sequence[str], n_rounds: int, seed: int) -> list[Slot]:
    """``idle, inf, idle, inf, ..., idle`` over ``n_rounds`` rounds (2*M*R + 1 slots)."""
    slots: list[Slot] = []
    seq = 0
    for r, order in enumerate(round_orders(model_keys, n_rounds, seed)):
        for key in order:
            slots.append(Slot(seq, r, "idle", ""))
            slots.append(Slot(seq + 1, r, "inference", key))
            seq += 2
    slots.append(Slot(seq, n_rounds, "idle", ""))
    return slots


def round_slots(slots: Sequence[Slot], round_idx: int) -> list[Slot]:
    return [s for s in slots if s.round_idx == round_idx]


def closing_idle(n_models: int, round_idx: int) -> Slot:
    """The idle window that closes round ``round_idx`` (it opens the next round when there is one)."""
    seq = 2 * n_models * (round_idx + 1)
    return Slot(seq, round_idx + 1, "idle", "")


def ci_reached(values_by_model: Mapping[str, Sequence[float]], target_ci_pct: float, min_n: int) -> bool:
    """True when every model has ``min_n`` values and a 95% CI half-width below ``target_ci_pct`` of its mean."""
    from harness.verdict import mean_ci

    for vals in values_by_model.values():
        v = np.asarray(vals, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < max(min_n, 2):
            return False
        mean, half = mean_ci(v)
        if not np.isfinite(half) or mean == 0 or abs(half / mean) * 100.0 > target_ci_pct:
            return False
    return True


# --------------------------------------------------------------------------- precision targets


@dataclass(frozen=True)
class Miss:
    """One precision target a run did not reach: ``half_width`` > ``target`` (both in ``unit``)."""

    model: str
    level: int
    what: str  # "time saved" | "energy saved" | "time" | "energy"
    half_width: float | None  # None: no interval yet (fewer than two paired rounds)
    target: float
    unit: str  # "points" | "%"

    @property
    def missed_by(self) -> float | None:
        return None if self.half_width is None else self.half_width - self.target

    @property
    def text(self) -> str:
        where = f"level {self.level}" if self.level else "base model"
        if self.half_width is None:
            return f"{where}: {self.what} has no CI yet (fewer than two valid rounds)"
        return (f"{where}: {self.what} CI +-{self.half_width:.2f} {self.unit} > target {self.target:g} "
                f"(missed by {self.missed_by:.2f})")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "level": self.level, "what": self.what, "half_width": self.half_width,
                "target": self.target, "unit": self.unit, "missed_by": self.missed_by, "text": self.text}


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def target_misses(rows: Sequence[Mapping[str, Any]], plan: RunPlan, measures_energy: bool) -> list[Miss]:
    """The precision targets the table rows (``harness.tables.model_rows``) do not meet yet; [] = reached.

    Savings (``<metric>_saved_pct_ci``, paired per-round CIs) against ``target_saved_ci_pts`` for every level;
    per-model CIs (``<metric>_ci`` relative to the value) against ``target_ci_pct`` when it is set.
    """
    metrics = [("time", "time_ms", "time_saved_pct")]
    if measures_energy:
        metrics.append(("energy", "energy_mj", "energy_saved_pct"))
    misses: list[Miss] = []
    for r in rows:
        level = int(r["level"])
        for name, key, saved in metrics:
            if plan.target_saved_ci_pts is not None and level != 0:
                half = _finite(r.get(saved + "_ci"))
                if half is None or half > plan.target_saved_ci_pts:
                    misses.append(Miss(r["model"], level, f"{name} saved", half, plan.target_saved_ci_pts, "points"))
            if plan.target_ci_pct is not None:
                value, ci = _finite(r.get(key)), _finite(r.get(key + "_ci"))
                rel = abs(ci / value) * 100.0 if value and ci is not None else None
                if rel is None or rel > plan.target_ci_pct:
                    misses.append(Miss(r["model"], level, name, rel, plan.target_ci_pct, "%"))
    return misses


def target_from_events(events: Sequence[tuple[str, str, str]]) -> dict[str, Any] | None:
    """``{"reached": bool, "misses": [text, ...]}`` from a run's last ``complete`` event, None when the run is
    not complete or was recorded before targets were (``events``: ``(event, detail, t_utc)`` in order)."""
    for event, detail, _ in reversed(events):
        if event != "complete":
            continue
        try:
            d = json.loads(detail)
        except ValueError:
            return None
        if not isinstance(d, dict) or "target_reached" not in d:
            return None
        return {"reached": bool(d["target_reached"]), "misses": list(d.get("misses", []))}
    return None


def status_text(status: str, target: Mapping[str, Any] | None) -> str:
    """``complete``, ``complete, target reached`` or ``complete, target not reached`` (others unchanged)."""
    if status != "complete" or not target:
        return status
    return "complete, target reached" if target.get("reached") else "complete, target not reached"

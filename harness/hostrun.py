"""Host measurement: time several ``.pte`` programs on this machine, interleaved, in the paper's Table 4 layout.

Protocol (:func:`measure_host`): every program is loaded once; ``warmup`` rounds then ``iterations``
timed rounds, where one round runs each model once in a fixed order (A B C A B C ..., ``order="abab"``)
or alternately forwards and backwards (A B C C B A ..., ``order="abba"``, which also cancels position
effects), so that drift (thermal, other load) hits all models alike.  Per model: trimmed mean (10% cut
at each end) with its 95% CI (Tukey-McLaughlin), mean, p50, p90, p99 (``latency_p50_ms`` ...), the load time,
first inference and warm-up of each program (``load_ms``, ``first_inference_ms``, ``warmup_ms``); time saved against the base model
(level 0) with a propagated CI.  Energy columns read "not measured": the host has no power source here.

Rows carry the keys every device's ``harness run`` uses (docs/seams.md): ``level``, ``flops_pruned_pct``,
``time_ms``, ``time_ms_ci``, ``time_saved_pct``, ``energy_mj``, ``energy_mj_ci``, ``energy_saved_pct``,
``valid_windows``, ``invalid_windows``; the CI of a figure is always ``<key>_ci``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import latency
from harness.errors import InputError, MeasurementError, UsageError

log = logging.getLogger(__name__)

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class ModelEntry:
    """One program to time: its ``.pte`` and what it is (level 0 = the base model)."""

    level: float
    pte_path: str
    flops: int
    flops_pruned_pct: float
    key: str = ""
    classes: tuple[int, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.key or f"L{self.level:g}"


@dataclass(frozen=True)
class HostRunOptions:
    """Options of a host measurement.  Loadable from TOML (a ``[hostrun]`` table)."""

    iterations: int = 200
    warmup: int = 20
    threads: int = 1
    trim: float = latency.DEFAULT_TRIM
    confidence: float = latency.DEFAULT_CONFIDENCE
    order: str = "abab"  # abab | abba
    input_path: str | None = None
    #: profiling mode: after the timed rounds, ``profile_runs`` more executions of each model with the event
    #: tracer on, written to ``<profile_dir>/<model>.etdp`` (read with ``harness.profile`` / ``device.etdump``)
    profile_dir: str | None = None
    profile_runs: int = 10

    def __post_init__(self) -> None:
        if self.iterations < 2:
            raise UsageError(f"iterations must be at least 2, got {self.iterations}")
        if self.warmup < 0:
            raise UsageError(f"warm-up must be 0 or more, got {self.warmup}")
        if self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.order not in ("abab", "abba"):
            raise UsageError(f"order {self.order!r} is not abab or abba")
        if self.profile_runs < 1:
            raise UsageError(f"profile_runs must be at least 1, got {self.profile_runs}")
        if not 0 <= self.trim < 0.5 or not 0 < self.confidence < 1:
            raise UsageError("trim must be in [0, 0.5) and confidence in (0, 1)")

    @classmethod
    def from_toml(cls, path: str | Path) -> HostRunOptions:
        from harness.options import load_options

        return load_options(cls, path, "hostrun", "host-run options", UsageError)


@dataclass
class HostRunResult:
    """Rows (one per model, in the order given) plus the raw latencies ``[models, iterations]``."""

    rows: list[dict[str, Any]]
    latencies_ms: np.ndarray
    models: list[ModelEntry]
    options: HostRunOptions
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: profiling mode: model name -> its ETDump file
    profiles: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"device": "host", "virtual": False, "instrument": "none (host timing)",
                "energy": NOT_MEASURED, "options": asdict(self.options), "fingerprint": self.fingerprint,
                "rows": self.rows, **({"profiles": self.profiles} if self.profiles else {})}


def host_fingerprint(threads: int) -> dict[str, Any]:
    """What the timings were taken on."""
    from importlib.metadata import version

    def _v(pkg: str) -> str:
        try:
            return version(pkg)
        except Exception:  # noqa: BLE001
            return "unknown"

    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    return {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "load_avg_1min": load1, "threads": threads,
            "executorch": _v("executorch"), "torch": _v("torch")}


def summarize_rows(models: list[ModelEntry], lat_ms: np.ndarray, trim: float = latency.DEFAULT_TRIM,
                   confidence: float = latency.DEFAULT_CONFIDENCE,
                   phases: list[latency.Phases] | None = None) -> list[dict[str, Any]]:
    """Table rows from a ``[models, samples]`` latency array (pure: vectorised over models); ``phases`` (one
    per model) fill ``load_ms``, ``first_inference_ms`` and ``warmup_ms`` (None without them)."""
    lat = np.asarray(lat_ms, dtype=np.float64)
    if lat.ndim != 2 or lat.shape[0] != len(models):
        raise ValueError("latencies must be [models, samples]")
    tm = latency.trimmed_mean(lat, trim)
    ci = latency.trimmed_mean_ci(lat, trim, confidence)
    mean = lat.mean(axis=1)
    p50 = latency.percentile(lat, 50)
    p90 = latency.percentile(lat, 90)
    p99 = latency.percentile(lat, 99)
    base_idx = [i for i, m in enumerate(models) if float(m.level) == 0.0]
    if base_idx:
        b = base_idx[0]
        saved = latency.time_saved_pct(tm[b], tm)
        saved_ci = latency.time_saved_pct_ci(tm[b], ci[b], tm, ci)
        saved_ci[b] = 0.0
    else:
        saved = np.full(len(models), np.nan)
        saved_ci = np.full(len(models), np.nan)
    rows = []
    for i, m in enumerate(models):
        fp = float(m.flops_pruned_pct)
        rows.append({
            "level": m.level, "key": m.name, "flops": int(m.flops), "flops_pruned_pct": round(fp, 3),
            "channels_removed_pct": m.level,
            "time_ms": float(tm[i]), "time_ms_ci": float(ci[i]),
            "time_saved_pct": float(saved[i]) if np.isfinite(saved[i]) else None,
            "time_saved_pct_ci": float(saved_ci[i]) if np.isfinite(saved_ci[i]) else None,
            "time_saved_per_flops_saved": (float(saved[i] / fp) if fp > 0 and np.isfinite(saved[i]) else None),
            "time_ms_mean": float(mean[i]), "time_ms_p50": float(p50[i]), "time_ms_p90": float(p90[i]),
            "latency_p50_ms": float(p50[i]), "latency_p90_ms": float(p90[i]), "latency_p99_ms": float(p99[i]),
            **(phases[i] if phases is not None else latency.Phases()).to_dict(),
            "n_inferences": int(lat.shape[1]),
            "energy_mj": None, "energy_mj_ci": None, "energy_saved_pct": None,
            "valid_windows": 1, "invalid_windows": 0, "pte": m.pte_path,
        })
    return rows


def measure_host(models: list[ModelEntry], iterations: int = 200, warmup: int = 20, threads: int = 1, *,
                 options: HostRunOptions | None = None, progress: bool = False) -> HostRunResult:
    """Time ``models`` on this machine with the ExecuTorch runtime, interleaved; see the module doc.

    Every model gets the same input (``options.input_path``, else all ones as ``executor_runner``).
    """
    from device.runner import HostProgram, default_input, read_input_file, set_host_threads

    opts = options or HostRunOptions(iterations=iterations, warmup=warmup, threads=threads)
    if not models:
        raise InputError("no models to measure")
    set_host_threads(opts.threads)  # before loading: XNNPACK binds the thread pool at load time
    progs, load_ms = [], []
    for m in models:
        t0 = time.perf_counter()
        progs.append(HostProgram(m.pte_path))
        load_ms.append((time.perf_counter() - t0) * 1000.0)
    shapes = {p.input_shape for p in progs}
    if len(shapes) != 1:
        raise InputError(f"models take different inputs: {sorted(shapes)}")
    p0 = progs[0]
    x = (read_input_file(opts.input_path, p0.input_shape, p0.input_dtype) if opts.input_path
         else default_input(p0.input_shape, p0.input_dtype))
    for p in progs:
        p.set_input(x)
    k = len(progs)
    fwd = list(range(k))
    rev = fwd[::-1]
    warm = np.zeros((k, opts.warmup))
    for r in range(opts.warmup):
        for i in (rev if opts.order == "abba" and r % 2 else fwd):
            warm[i, r] = progs[i].run_once()
    lat = np.empty((k, opts.iterations), dtype=np.float64)
    rounds = range(opts.iterations)
    if progress:
        from harness.cliutil import progress as bar

        rounds = bar(rounds, total=opts.iterations, desc="host rounds")
    for r in rounds:
        for i in (rev if opts.order == "abba" and r % 2 else fwd):
            lat[i, r] = progs[i].run_once()
    for m, p in zip(models, progs, strict=True):
        out = p.output()
        if not np.all(np.isfinite(out)):
            raise MeasurementError(f"model {m.pte_path} produced NaN/inf on the fixed input")
    phases = [latency.phases_of(load_ms[i], warm[i], lat[i]) for i in range(k)]
    rows = summarize_rows(models, lat, opts.trim, opts.confidence, phases)
    return HostRunResult(rows, lat, list(models), opts, host_fingerprint(opts.threads),
                         _profile(models, opts) if opts.profile_dir else {})


def _profile(models: list[ModelEntry], opts: HostRunOptions) -> dict[str, str]:
    """Profiling mode: one ETDump per model, after (never inside) the timed rounds."""
    from device.etdump import profile_host

    d = Path(str(opts.profile_dir))
    d.mkdir(parents=True, exist_ok=True)
    return {m.name: str(profile_host(m.pte_path, d / f"{m.name}.etdp", runs=opts.profile_runs,
                                     threads=opts.threads, input_path=opts.input_path)) for m in models}


# --------------------------------------------------------------------------- Table 4 writers

#: Table 4 columns (the paper's, plus our CIs and the energy columns a power source would fill).
TABLE4_COLUMNS = ("flops_pruned_pct", "channels_removed_pct", "time_ms", "time_ms_ci", "time_saved_pct",
                  "time_saved_pct_ci", "time_saved_per_flops_saved", "energy_mj", "energy_mj_ci",
                  "energy_saved_pct")


def _table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paper order: most pruned first, the base model last."""
    return sorted(rows, key=lambda r: (float(r["level"]) == 0.0, -float(r["level"])))


def _cell(v: Any, key: str) -> str:
    if v is None:
        if key.startswith("energy"):
            return NOT_MEASURED
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if key.startswith("time_ms") else f"{v:.2f}"
    return str(v)


def table4_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with :data:`TABLE4_COLUMNS` (energy cells say "not measured" when null)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE4_COLUMNS)
    for r in _table_rows(rows):
        w.writerow([_cell(r.get(c), c) for c in TABLE4_COLUMNS])
    return buf.getvalue()


def table4_markdown(rows: list[dict[str, Any]], title: str = "") -> str:
    """The rows as a Markdown table in the layout of the paper's Table 4."""
    heads = ("FLOPs pruned (%)", "channels removed (%)", "time (ms)", "time saved (%)", "time saved / FLOPs saved",
             "energy (mJ)", "energy saved (%)")
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "---:|" * len(heads))
    for r in _table_rows(rows):
        t = f"{r['time_ms']:.3f} ± {r['time_ms_ci']:.3f}"
        if r.get("time_saved_pct") is None or float(r["level"]) == 0.0:
            s = ""
        else:
            s = f"{r['time_saved_pct']:.1f} ± {r['time_saved_pct_ci']:.1f}"
        ratio = "" if r.get("time_saved_per_flops_saved") is None else f"{r['time_saved_per_flops_saved']:.2f}"
        e = NOT_MEASURED if r.get("energy_mj") is None else f"{r['energy_mj']:.3f} ± {r.get('energy_mj_ci') or 0:.3f}"
        es = NOT_MEASURED if r.get("energy_saved_pct") is None else f"{r['energy_saved_pct']:.1f}"
        lines.append(f"| {r['flops_pruned_pct']:.1f} | {r['channels_removed_pct']:g} | {t} | {s} | {ratio} | {e} | {es} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], out_dir: str | Path = "results", stem: str = "host_table4",
                 title: str = "") -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` under ``out_dir`` (atomically); returns both paths."""
    from harness.cliutil import atomic_write_bytes

    d = Path(out_dir)
    md, cs = d / f"{stem}.md", d / f"{stem}.csv"
    atomic_write_bytes(md, table4_markdown(rows, title).encode())
    atomic_write_bytes(cs, table4_csv(rows).encode())
    return md, cs

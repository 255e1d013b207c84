"""ExecuTorch's ETDump, the devtools' per-operator profile: write one on this machine, read any.

Writing: :func:`profile_host` runs a ``.pte`` with the runtime's event tracer on (``device.runner`` in its
profiling mode, the same code as the virtual phone's ``executor_runner --etdump_path``) and writes the
``.etdp`` file.  A real phone writes one when its ``executor_runner`` was built with
``-DEXECUTORCH_BUILD_DEVTOOLS=ON -DEXECUTORCH_ENABLE_EVENT_TRACER=ON`` and run with ``--etdump_path``.

Reading: :func:`read_etdump` parses the file with the devtools ``Inspector`` (an ETRecord is optional; it only
adds the module names of each delegate call) into :class:`OperatorTime` rows, one per operator event, with
the median, min and mean over the executions the dump holds (warm-up included; the median is the figure).

Granularity (docs/run.md, "Per-layer profile"): with the XNNPACK delegate the runtime sees one
``DELEGATE_CALL`` per delegated subgraph; the delegate's own profiler (on whenever the event tracer is
compiled in) adds one event per XNNPACK operator (``Convolution (NHWC, F32) IGEMM #1``, ``Fully Connected
(NC, F32) GEMM #2``, ``Max Pooling ...``), in execution order and with activations fused into them.  Those
events carry no link to the model's layers; ``harness.profile`` maps them to layers by order and kind.
Operators left to the portable kernels appear as ``native_call_<op>`` events.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device.errors import DataError

log = logging.getLogger(__name__)

#: An ETDump larger than this is refused (a profile of a few executions of a CNN is kilobytes).
MAX_ETDUMP_BYTES = 64 * 1024 * 1024
#: Events that frame operators rather than being one (their times include the operators inside them).
FRAME_EVENTS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")
LOAD_EVENTS = ("Program::load_method", "Method::init")

#: XNNPACK operator names -> the kind of layer they compute (first match wins).
_KINDS = (
    (re.compile(r"^Convolution .*DWConv", re.I), "depthwise"),
    (re.compile(r"^Deconvolution", re.I), "deconv"),
    (re.compile(r"^Convolution", re.I), "conv"),
    (re.compile(r"^Fully Connected|^Batch Matrix Multiply|^(native_call_)?(linear|addmm|mm|bmm)", re.I), "fc"),
    (re.compile(r"^native_call_(convolution|conv)", re.I), "conv"),
    (re.compile(r"Pool|^Mean|Reduce|^native_call_(max_pool|avg_pool|mean|adaptive)", re.I), "pool"),
    (re.compile(r"^Transpose|^Copy|^Static Reshape|^Convert|^native_call_(view|permute|clone|_to_copy)", re.I),
     "layout"),
)


def op_kind(name: str) -> str:
    """``conv``, ``depthwise``, ``deconv``, ``fc``, ``pool``, ``layout`` or ``other`` for an event name."""
    for pat, kind in _KINDS:
        if pat.search(name):
            return kind
    return "other"


@dataclass(frozen=True)
class OperatorTime:
    """One operator event of the profile: times in ms over the executions the ETDump holds."""

    index: int
    name: str
    kind: str
    backend: str
    delegated: bool
    runs: int
    median_ms: float
    min_ms: float
    mean_ms: float
    module: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EtdumpProfile:
    """A parsed ETDump: operator rows in execution order plus the frame totals (medians, ms)."""

    operators: list[OperatorTime]
    execute_ms: float | None
    load_ms: float | None
    runs: int
    delegate_calls: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "execute_ms": self.execute_ms, "load_ms": self.load_ms,
                "operators_ms": round(sum(o.median_ms for o in self.operators), 6),
                "delegate_calls": self.delegate_calls, "operators": [o.as_dict() for o in self.operators]}


def profile_host(pte_path: str | Path, etdump_path: str | Path, runs: int = 10, threads: int = 1,
                 input_path: str | Path | None = None) -> Path:
    """Run ``pte_path`` ``runs`` times with the event tracer on (``device.runner`` profiling mode) and write
    the ETDump to ``etdump_path``; returns the path."""
    from device.runner import RunSpec, run_host

    spec = RunSpec(pte_path, iterations=max(1, int(runs)), warmup=0, input_path=input_path, threads=threads,
                   etdump_path=Path(etdump_path))
    run_host(spec)
    return Path(etdump_path)


def _finite(values) -> list[float]:
    return [float(v) for v in (values or []) if v is not None and math.isfinite(float(v)) and float(v) >= 0]


def _module_names(event) -> str:
    """The model's module paths an (ETRecord-mapped) event came from, e.g. ``features.0,features.3``."""
    names: list[str] = []
    for hier in (getattr(event, "module_hierarchy", None) or {}).values():
        for path, _cls in (hier or {}).values():
            if path and path not in names:
                names.append(path)
    return ",".join(names)


def read_etdump(path: str | Path | None = None, data: bytes | None = None,
                etrecord: str | Path | None = None) -> EtdumpProfile:
    """Parse an ETDump (a file or its bytes) with the devtools ``Inspector``; :class:`DataError` when it is
    missing, too large or not an ETDump."""
    if data is None:
        p = Path(str(path))
        if not p.is_file():
            raise DataError(f"ETDump {p} not found")
        if p.stat().st_size > MAX_ETDUMP_BYTES:
            raise DataError(f"ETDump {p} is larger than {MAX_ETDUMP_BYTES // 2**20} MiB")
        data = p.read_bytes()
    what = str(path) if path is not None else "ETDump data"
    if not data:
        raise DataError(f"{what} is empty (was the runner built with EXECUTORCH_ENABLE_EVENT_TRACER=ON?)")
    try:
        from executorch.devtools import Inspector

        with warnings.catch_warnings():  # "Output Buffer not found": no debug buffer is asked for
            warnings.simplefilter("ignore")
            ins = Inspector(etdump_data=bytes(data), etrecord=str(etrecord) if etrecord else None)
    except Exception as exc:  # noqa: BLE001 - the flatbuffer reader raises anything on a corrupt file
        raise DataError(f"{what} is not a readable ETDump ({type(exc).__name__}: {str(exc)[:200]})") from None
    ops: list[OperatorTime] = []
    calls: list[dict[str, Any]] = []
    execute_ms = load_ms = None
    runs = 0
    for block in ins.event_blocks:
        for ev in block.events:
            raw = _finite(ev.perf_data.raw if ev.perf_data is not None else None)
            if not raw:
                continue
            med = statistics.median(raw)
            name = str(ev.name)
            if name in LOAD_EVENTS:
                if name == "Program::load_method":
                    load_ms = med
                continue
            if name == "Method::execute":
                execute_ms, runs = med, len(raw)
                continue
            if name == "DELEGATE_CALL":
                calls.append({"backend": ev.delegate_backend_name or "", "median_ms": med,
                              "op_types": list(ev.op_types or []), "modules": _module_names(ev)})
                continue
            if name in FRAME_EVENTS:
                continue
            delegated = bool(ev.is_delegated_op)
            backend = ev.delegate_backend_name or ("delegate" if delegated else "portable")
            ops.append(OperatorTime(len(ops), name, op_kind(name), backend, delegated, len(raw), med, min(raw),
                                    statistics.fmean(raw), _module_names(ev)))
    if not ops and execute_ms is None:
        raise DataError(f"{what} holds no executions (the runner wrote an empty profile)")
    return EtdumpProfile(ops, execute_ms, load_ms, runs, calls)

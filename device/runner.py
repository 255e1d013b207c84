"""The runner contract: what one inference run is, the host runner, and the one parser of runner text.

An inference run is a model file (``.pte``), ``warmup`` untimed-for-the-result inferences followed by
``iterations`` timed ones, on an input read from a file or generated (all ones, as ExecuTorch's
``executor_runner`` does without ``--inputs``).  It yields the per-inference latencies of the timed
inferences, their total and the output of the last inference (:class:`RunResult`).

Two implementations print the same text, so one parser (:func:`parse_runner_output`) serves both:

* ExecuTorch's ``executor_runner`` on a phone.  It has no warm-up flag: the harness passes
  ``--num_executions=W+N`` and drops the first ``W``.  Per-iteration times are ``ET_LOG(Info, ...)``
  lines, printed only by a build with logging on (``I 00:00:00.123456 executorch:executor_runner.cpp:NNN]
  Iteration 3 of 220: 3.912000 ms``); the output tensor is printed on stdout as
  ``OutputX 0: tensor(sizes=[1, 10], [0.1, 2.5, ...])`` (older releases: ``Output 0: ...``).
* :func:`run_host`: the same run with the ``executorch.runtime`` Python runtime on this machine;
  :func:`format_runner_output` prints its result the way ``executor_runner`` would.

Input files (``executor_runner --inputs``): raw little-endian float32, the *normalised* NCHW tensor
``[1, 3, 32, 32]`` (12,288 bytes; normalised as ``NinWeights.normalize``: ``(pixel - mean) / std`` per
RGB channel, pixels 0..255).  A ``.npy`` file is also accepted by the host runner (its dtype and shape
are then checked exactly).
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.errors import DataError, InputError, MeasurementError

log = logging.getLogger(__name__)

#: The flatbuffer file identifier of ExecuTorch programs, at bytes 4..8 of a ``.pte``.
PTE_MAGIC = b"ET12"
#: ExecuTorch ScalarType codes -> numpy dtypes (the ones a runner input may have).
_SCALAR_TYPES = {6: np.dtype("<f4"), 0: np.dtype("u1"), 1: np.dtype("i1"), 3: np.dtype("<i4"),
                 4: np.dtype("<i8"), 7: np.dtype("<f8"), 5: np.dtype("<f2"), 11: np.dtype("?")}
#: Clocks a run can be timed with (:class:`RunSpec`): name -> nanosecond counter.
CLOCKS = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns}
#: Default tolerances of the output check (the text output carries 6 significant digits).
OUTPUT_ATOL = 1e-3
OUTPUT_RTOL = 1e-3


@dataclass(frozen=True)
class RunSpec:
    """One inference run: ``warmup`` + ``iterations`` inferences of ``model_path`` on ``threads`` threads."""

    model_path: str | Path
    iterations: int
    warmup: int = 0
    input_path: str | Path | None = None
    threads: int = 1
    method: str = "forward"
    #: ``wall``: wall-clock time of each execution (the host, real phones); ``thread``: CPU time of the
    #: executing thread (one thread only), what a dedicated CPU would take: the virtual phone's clock
    clock: str = "wall"
    #: profiling mode: write an ETDump (per-operator times of every execution) to this path after the run
    etdump_path: str | Path | None = None

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise InputError(f"clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "thread" and int(self.threads) != 1:
            raise InputError("the thread clock times one thread: use threads=1 or clock='wall'")
        if int(self.iterations) < 1:
            raise InputError(f"iterations must be at least 1, got {self.iterations}")
        if int(self.warmup) < 0:
            raise InputError(f"warm-up must be 0 or more, got {self.warmup}")
        if int(self.threads) < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")


@dataclass
class RunResult:
    """What a run yields.  ``latencies_ms``: timed inferences only (warm-up dropped)."""

    latencies_ms: np.ndarray
    total_ms: float
    output: np.ndarray
    raw_text: str = ""
    warmup_latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_shape: tuple[int, ...] = ()
    threads: int = 1
    model_path: str = ""
    #: from the runner's start to its first inference (program + method load, input set-up); None = unknown
    load_ms: float | None = None

    @property
    def iterations(self) -> int:
        return int(len(self.latencies_ms))

    @property
    def warmup(self) -> int:
        return int(len(self.warmup_latencies_ms))


# --------------------------------------------------------------------------- input files


def write_input_file(path: str | Path, x: np.ndarray) -> Path:
    """Write a normalised float32 NCHW tensor as ``executor_runner --inputs`` reads it (raw LE float32)."""
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise InputError(f"input for {path} must be float32, got {a.dtype}")
    p = Path(path)
    p.write_bytes(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return p


def read_input_file(path: str | Path, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Read a runner input file (raw LE bytes, or ``.npy``) and check it against the model's input."""
    p = Path(path)
    want = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * want.itemsize
    what = f"{want.name} {list(shape)} ({nbytes} bytes)"
    if not p.is_file():
        raise InputError(f"input file {p} not found; the model expects {what}")
    if p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"input file {p} is not a readable .npy array ({exc})") from None
        if a.dtype != want:
            raise InputError(f"input file {p} holds {a.dtype}, but the model expects {what}")
        if tuple(a.shape) != tuple(shape):
            raise InputError(f"input file {p} has shape {list(a.shape)}, but the model expects {what}")
        return np.ascontiguousarray(a)
    raw = p.read_bytes()
    if len(raw) != nbytes:
        raise InputError(f"input file {p} has {len(raw)} bytes, but the model expects {what} "
                         f"(raw little-endian {want.name}, normalised NCHW)")
    a = np.frombuffer(raw, dtype=want.newbyteorder("<")).reshape(shape).astype(want)
    if want.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"input file {p} holds NaN or inf values")
    return a


# --------------------------------------------------------------------------- host runtime


def check_pte_file(path: str | Path) -> Path:
    """A clear :class:`DataError` for a missing, empty or non-ExecuTorch file (cheap header check)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"model file {p} not found")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != PTE_MAGIC:
        raise DataError(f"model file {p} is not an ExecuTorch program (no {PTE_MAGIC.decode()} header)")
    return p


#: Bumped whenever the runtime's thread pool is recreated; programs loaded before that must not run.
_POOL_GENERATION = 0


def set_host_threads(threads: int) -> int:
    """Size the runtime's thread pool (XNNPACK's threads); returns the previous size.

    Call it BEFORE loading programs: the XNNPACK delegate keeps the pool it was loaded with, and
    resizing recreates the pool (a program loaded earlier would run on a freed pool and may hang).
    """
    global _POOL_GENERATION
    import executorch.extension.pybindings.portable_lib as pl  # the runtime, not the exporter

    before = int(pl._threadpool_get_thread_count())
    if before != threads:
        pl._unsafe_reset_threadpool(int(threads))
        _POOL_GENERATION += 1
    return before


def _torch_dtype_to_numpy(code: int) -> np.dtype:
    if code not in _SCALAR_TYPES:
        raise DataError(f"model input has ExecuTorch scalar type {code}, which the runner cannot feed")
    return _SCALAR_TYPES[code]


class HostProgram:
    """One loaded ``.pte`` method on this machine, ready to run one timed inference at a time."""

    def __init__(self, model_path: str | Path, method: str = "forward", etdump: bool = False):
        from executorch.runtime import Runtime

        self.path = check_pte_file(model_path)
        self.etdump = bool(etdump)
        try:
            # Keep the Program: its methods point into it.  ``etdump``: the profiling mode (an event tracer
            # records every operator of every execution; see :meth:`write_etdump`)
            self._program = Runtime.get().load_program(self.path, enable_etdump=self.etdump)
            if method not in self._program.method_names:
                raise DataError(f"model file {self.path} has no method {method!r} "
                                f"(has: {', '.join(sorted(self._program.method_names))})")
            self._method = self._program.load_method(method)
        except RuntimeError as exc:
            raise DataError(f"model file {self.path} is corrupt, truncated or not a loadable ExecuTorch "
                            f"program ({exc})") from None
        meta = self._method.metadata
        if meta.num_inputs() != 1:
            raise DataError(f"model file {self.path} takes {meta.num_inputs()} inputs; the runner feeds one")
        info = meta.input_tensor_meta(0)
        self.input_shape = tuple(int(s) for s in info.sizes())
        self.input_dtype = _torch_dtype_to_numpy(int(info.dtype()))
        self._raw = getattr(self._method, "_method", None)
        self._x = None
        self._generation = _POOL_GENERATION

    def set_input(self, x: np.ndarray) -> None:
        """Fix the input used by the following :meth:`run_once` calls (shape and dtype checked)."""
        a = np.asarray(x)
        if tuple(a.shape) != self.input_shape or a.dtype != self.input_dtype:
            raise InputError(f"input {a.dtype} {list(a.shape)} does not fit model {self.path}: it expects "
                             f"{self.input_dtype.name} {list(self.input_shape)}")
        import torch

        self._x = torch.from_numpy(np.ascontiguousarray(a))

    def run_once(self, clock: str = "wall") -> float:
        """Run one inference; returns its latency in ms (the method's execution only, like the runner), on the
        wall clock or (``clock="thread"``) as the calling thread's CPU time (:data:`CLOCKS`)."""
        now = CLOCKS[clock]
        if self._x is None:
            raise MeasurementError("no input set")
        if self._generation != _POOL_GENERATION:
            raise MeasurementError(f"the thread pool was resized after {self.path} was loaded; load it again "
                                   "(set_host_threads before HostProgram)")
        if self._raw is not None:
            self._raw.set_inputs([self._x])
            t0 = now()
            self._raw.execute()
            t1 = now()
        else:  # pragma: no cover - older runtime wrappers
            t0 = now()
            self._out = self._method.execute([self._x])
            t1 = now()
        return (t1 - t0) / 1e6

    def output(self) -> np.ndarray:
        """The first output of the last inference, as a numpy array."""
        outs = self._raw.get_outputs() if self._raw is not None else self._out
        return np.asarray(outs[0].detach().numpy() if hasattr(outs[0], "detach") else outs[0]).copy()

    def write_etdump(self, path: str | Path) -> Path:
        """Write the ETDump of every execution so far to ``path`` (atomically); profiling mode only."""
        import os

        if not self.etdump:
            raise MeasurementError(f"{self.path} was loaded without profiling (HostProgram(..., etdump=True))")
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            self._program.write_etdump_result_to_file(str(tmp), None)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return p

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run once on ``x`` and return the output (no timing)."""
        self.set_input(x)
        self.run_once()
        return self.output()


def default_input(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """The input ``executor_runner`` uses without ``--inputs``: all ones."""
    return np.ones(shape, dtype=dtype)


def run_host(spec: RunSpec) -> RunResult:
    """Run ``spec`` with the ExecuTorch runtime on this machine (the host implementation of the contract)."""
    now = CLOCKS[spec.clock]
    t_start = now()
    set_host_threads(spec.threads)  # before loading: the delegate binds the pool at load time
    prog = HostProgram(spec.model_path, spec.method, etdump=spec.etdump_path is not None)
    if spec.input_path is not None:
        x = read_input_file(spec.input_path, prog.input_shape, prog.input_dtype)
    else:
        x = default_input(prog.input_shape, prog.input_dtype)
    prog.set_input(x)
    load_ms = (now() - t_start) / 1e6
    n_all = int(spec.warmup) + int(spec.iterations)
    lat = np.empty(n_all, dtype=np.float64)
    for i in range(n_all):
        lat[i] = prog.run_once(spec.clock)
    out = prog.output()
    if spec.etdump_path is not None:
        prog.write_etdump(spec.etdump_path)
    w = int(spec.warmup)
    res = RunResult(latencies_ms=lat[w:], total_ms=float(lat[w:].sum()), output=out.ravel(),
                    warmup_latencies_ms=lat[:w], output_shape=tuple(out.shape), threads=int(spec.threads),
                    model_path=str(spec.model_path), load_ms=load_ms)
    res.raw_text = format_runner_output(res)
    return res


# --------------------------------------------------------------------------- runner text


def executor_runner_argv(runner_path: str, model_path: str, iterations: int, warmup: int = 0,
                         threads: int = 1, input_path: str | None = None,
                         etdump_path: str | None = None) -> list[str]:
    """The ``executor_runner`` argument vector for a run (W+N executions: it has no warm-up flag).
    ``etdump_path``: where a runner built with ``EXECUTORCH_ENABLE_EVENT_TRACER=ON`` writes its ETDump."""
    argv = [runner_path, f"--model_path={model_path}", f"--num_executions={int(iterations) + int(warmup)}",
            f"--cpu_threads={int(threads)}"]
    if input_path:
        argv.append(f"--inputs={input_path}")
    if etdump_path:
        argv.append(f"--etdump_path={etdump_path}")
    return argv


def executor_runner_command(runner_path: str, spec: RunSpec) -> str:
    """The shell line for ``spec`` on a phone, every argument quoted with :func:`shlex.quote`."""
    argv = executor_runner_argv(runner_path, str(spec.model_path), spec.iterations, spec.warmup, spec.threads,
                                str(spec.input_path) if spec.input_path else None,
                                str(spec.etdump_path) if spec.etdump_path else None)
    return " ".join(shlex.quote(a) for a in argv)


def _cpp_double(v: float) -> str:
    """A float as ``std::ostream << double`` prints it (6 significant digits), with ExecuTorch's
    trailing dot on integral values (``print_evalue.cpp``)."""
    if not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    s = f"{v:.6g}"
    if v == 0.0 or ("e" not in s and "." not in s):
        return s + "."
    return s


def format_tensor(values: np.ndarray, shape: tuple[int, ...], edge_items: int = 100) -> str:
    """``tensor(sizes=[...], [...])`` as ExecuTorch's ``print_evalue`` prints a float tensor."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    n = flat.size
    items = [_cpp_double(float(v)) for v in flat]
    shown = min(n, 2 * edge_items)
    wrapping = shown > 10
    parts = ["["]
    printed = 0
    i = 0
    while i < n:
        if wrapping and printed % 10 == 0:
            parts.append("\n  ")
        parts.append(items[i])
        if wrapping or i < n - 1:
            parts.append(", ")
        printed += 1
        if i + 1 == edge_items and i + edge_items + 1 < n:
            if wrapping:
                parts.append("\n  ...,")
                printed = 10 - edge_items % 10
                if printed % 10 != 0:
                    parts.append("\n  ")
            else:
                parts.append("..., ")
            i = n - edge_items - 1
        i += 1
    if wrapping:
        parts.append("\n")
    parts.append("]")
    sizes = ", ".join(str(int(s)) for s in shape)
    return f"tensor(sizes=[{sizes}], {''.join(parts)})"


def _log_line(t_us: int, msg: str, line: int) -> str:
    h, rem = divmod(t_us, 3_600_000_000)
    m, rem = divmod(rem, 60_000_000)
    s, us = divmod(rem, 1_000_000)
    return f"I {h:02d}:{m:02d}:{s:02d}.{us:06d} executorch:executor_runner.cpp:{line}] {msg}\n"


def format_runner_output(result: RunResult, model_path: str | None = None) -> str:
    """The text ``executor_runner`` (logging build) prints for ``result``: one line per execution
    (warm-up ones first, as the runner ran W+N), the total, then the output tensor.

    Log timestamps count from the runner's start, as ExecuTorch's PAL clock does: the program is loaded at
    ``load_ms`` and each ``Iteration`` line is stamped at the end of its execution, so
    :func:`parse_runner_output` reads the load time back (``t(Iteration 1) - latency 1``)."""
    lat = np.concatenate([np.asarray(result.warmup_latencies_ms, float), np.asarray(result.latencies_ms, float)])
    n = len(lat)
    path = model_path or result.model_path or "model.pte"
    load_us = int(round(1000.0 * result.load_ms)) if result.load_ms is not None else 2000
    out = [_log_line(0, f"Resetting threadpool with num threads = {result.threads}", 333)]
    out.append(_log_line(load_us, f"Model file {path} is loaded.", 420))
    out.append(_log_line(load_us, "Using method forward", 430))
    out.append(_log_line(load_us, "Setting up planned buffer 0, size 0.", 480))
    t = load_us
    for i, ms in enumerate(lat):
        t += int(round(ms * 1000))
        out.append(_log_line(t, f"Iteration {i + 1} of {n}: {ms:f} ms", 612))
    out.append(_log_line(t + 10, f"Model executed successfully {n} time(s) in {float(lat.sum()):f} ms.", 626))
    out.append(_log_line(t + 20, "1 outputs: ", 632))
    shape = result.output_shape or (int(np.asarray(result.output).size),)
    out.append(f"OutputX 0: {format_tensor(result.output, shape)}\n")
    return "".join(out)


_ITER_RE = re.compile(r"Iteration (\d+) of (\d+): ([-+0-9.eE]+) ms")
_ITER1_TS_RE = re.compile(r"^I (\d\d):(\d\d):(\d\d)\.(\d{6}) [^\n]*\] Iteration 1 of \d+: ", re.M)
_TOTAL_RE = re.compile(r"Model executed successfully (\d+) time\(s\) in ([-+0-9.eE]+) ms")
_OUT_RE = re.compile(r"Output\w* 0: tensor\(sizes=\[([^\]]*)\], \[(.*?)\]\)", re.S)
_ERR_RE = re.compile(r"^E \d\d:\d\d:\d\d\.\d+ executorch:[^\]]*\] (.*)$", re.M)


def parse_runner_output(text: str, warmup: int) -> RunResult:
    """Parse ``executor_runner`` / host runner text; drop the first ``warmup`` executions.

    Raises :class:`MeasurementError` when the text shows a failure, lacks per-iteration times (a runner
    built without logging) or holds fewer executions than ``warmup + 1``.
    """
    warmup = int(warmup)
    errors = _ERR_RE.findall(text)
    its = _ITER_RE.findall(text)
    if not its:
        if errors:
            raise MeasurementError(f"executor_runner failed: {errors[0].strip()}")
        raise MeasurementError("runner output has no per-iteration times ('Iteration i of n: x ms'); use an "
                               "executor_runner built with logging on (ET_LOG_ENABLED, Info level)")
    idx = np.array([int(a) for a, _, _ in its])
    of = {int(b) for _, b, _ in its}
    lat = np.array([float(c) for _, _, c in its], dtype=np.float64)
    if len(of) != 1 or not np.array_equal(idx, np.arange(1, len(idx) + 1)) or len(idx) != of.pop():
        raise MeasurementError(f"runner output has an incomplete or out-of-order iteration list "
                               f"({len(idx)} lines, indices {idx[:3].tolist()}...{idx[-3:].tolist()})")
    if len(lat) <= warmup:
        raise MeasurementError(f"runner printed {len(lat)} executions, not more than the {warmup} warm-up ones")
    if not np.all(np.isfinite(lat)) or np.any(lat < 0):
        raise MeasurementError("runner output holds negative or non-finite iteration times")
    m = _TOTAL_RE.search(text)
    if m is not None and int(m.group(1)) != len(lat):
        raise MeasurementError(f"runner says it executed {m.group(1)} times but printed {len(lat)} iterations")
    output = np.zeros(0, dtype=np.float32)
    shape: tuple[int, ...] = ()
    mo = _OUT_RE.search(text)
    if mo is not None:
        shape = tuple(int(s) for s in mo.group(1).replace(" ", "").split(",") if s)
        body = [v.strip() for v in mo.group(2).replace("\n", " ").split(",")]
        vals = [v for v in body if v and v != "..."]
        try:
            output = np.array([float(v.rstrip(".") if v.endswith(".") else v) for v in vals], dtype=np.float32)
        except ValueError:
            raise MeasurementError(f"runner output tensor is unreadable: {mo.group(0)[:80]!r}") from None
    timed = lat[warmup:]
    return RunResult(latencies_ms=timed, total_ms=float(timed.sum()), output=output, raw_text=text,
                     warmup_latencies_ms=lat[:warmup], output_shape=shape, load_ms=_load_ms(text, float(lat[0])))


def _load_ms(text: str, first_ms: float) -> float | None:
    """From the runner's start (its log clock's zero) to the start of the first execution: the timestamp of
    the ``Iteration 1`` line (stamped at its end) minus its latency; None without timestamps."""
    m = _ITER1_TS_RE.search(text)
    if m is None:
        return None
    h, mi, sec, us = (int(g) for g in m.groups())
    t_ms = ((h * 60 + mi) * 60 + sec) * 1000.0 + us / 1000.0
    return max(t_ms - first_ms, 0.0)


def host_reference(model_path: str | Path, input_path: str | Path | None = None) -> np.ndarray:
    """The host's output for a fixed input (the file, or all ones): the reference for :func:`check_output`."""
    return run_host(RunSpec(model_path, iterations=1, warmup=0, input_path=input_path)).output


def check_output(result: RunResult, reference: np.ndarray, atol: float = OUTPUT_ATOL, rtol: float = OUTPUT_RTOL,
                 what: str = "run") -> float:
    """Fail (:class:`MeasurementError`) unless the run's last output matches ``reference`` within
    ``atol + rtol*|ref|``; returns the max abs difference.  A broken build cannot pass as fast."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(result.output, dtype=np.float64).ravel()
    if out.size != ref.size:
        raise MeasurementError(f"{what}: output has {out.size} values, the host reference {ref.size} "
                               "(was the output printed? --print_output=summary)")
    diff = np.abs(out - ref)
    bad = diff > atol + rtol * np.abs(ref)
    if np.any(bad):
        i = int(np.argmax(diff))
        raise MeasurementError(f"{what}: output differs from the host reference (max abs diff {diff[i]:.3g} at "
                               f"index {i}: {out[i]:.6g} vs {ref[i]:.6g}); the runner or model is broken")
    return float(diff.max()) if diff.size else 0.0

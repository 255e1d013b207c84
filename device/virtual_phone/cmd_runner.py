"""The virtual phone's built-in ``executor_runner``: real ExecuTorch on the host, the real runner's text.

One runner runs at a time in a process (``RUNNER_LOCK``): the ExecuTorch host thread pool is
process-wide, and resizing it under a running program crashed or deadlocked the phone when clients
ran with different ``--cpu_threads``.

Timing: the phone's CPU is its own, so with one thread each execution is timed by the CPU time of the
executing thread (``RunSpec(clock="thread")``): time the host gave to other processes (a shared machine) is
not phone time.  With more threads it is wall-clock time.  The phone is busy on its timeline until the
runner has printed its output, as a real runner is until it exits.  A waiting runner is not busy on the timeline and gives up when its
session ends.  ``--cpu_threads`` is at most ``MAX_CPU_THREADS`` and ``--num_executions`` at most
``MAX_EXECUTIONS``, otherwise an error line and status 1, as for any bad flag.
"""

from __future__ import annotations

import threading

from device.virtual_phone.cmdbase import RUNNER_NAME, Cancelled, Output, command, wait_cancellable

MAX_CPU_THREADS = 64
MAX_EXECUTIONS = 1_000_000
RUNNER_LOCK = threading.Lock()


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


@command(RUNNER_NAME)
def executor_runner(sh, argv: list[str], stdin: bytes, out: Output) -> int:
    """ExecuTorch's ``executor_runner``: runs the .pte with the runtime on the host, prints what it prints.

    Flags as the real runner: ``--model_path``, ``--num_executions``, ``--inputs`` (raw float32 file),
    ``--cpu_threads``, ``--etdump_path`` (the phone's runner is a build with ``EXECUTORCH_ENABLE_EVENT_TRACER=ON``:
    given the flag, it writes the ETDump of every execution there).  While it runs the phone is busy with
    ``cpu_threads`` threads.
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
    if threads > MAX_CPU_THREADS or n > MAX_EXECUTIONS:
        return _runner_error(out, f"--cpu_threads must be at most {MAX_CPU_THREADS} and --num_executions at "
                                  f"most {MAX_EXECUTIONS}")
    host_model = sh.host(model)
    if not host_model.is_file():
        return _runner_error(out, f"FileDataLoader::from() failed: 0x22 ({model}: No such file or directory)", 129)
    host_input = None
    if opts.get("inputs"):
        host_input = sh.host(opts["inputs"].split(",")[0])
        if not host_input.is_file():
            return _runner_error(out, f"input file {opts['inputs']}: No such file or directory")
    host_etdump = None
    if opts.get("etdump_path"):
        from device.virtual_phone.sandbox import SandboxError

        try:
            host_etdump = sh.writable(opts["etdump_path"])
        except SandboxError as exc:
            return _runner_error(out, f"--etdump_path {opts['etdump_path']}: {exc.strerror}")
        if not host_etdump.parent.is_dir():
            return _runner_error(out, f"--etdump_path {opts['etdump_path']}: No such file or directory")
    try:
        from device.runner import RunSpec, format_runner_output, run_host
    except ImportError as exc:
        return _runner_error(out, sh.scrub(f"the ExecuTorch runtime is not available on this host ({exc})"))
    phone = sh.phone
    drop = phone.faults.drop_mid_run_s
    if drop is not None and phone.take_drop() and phone.on_drop_all:
        threading.Timer(drop, phone.on_drop_all).start()
    spec = RunSpec(model_path=host_model, iterations=n, warmup=0, input_path=host_input, threads=threads,
                   clock="thread" if threads == 1 else "wall", etdump_path=host_etdump)
    wait_cancellable(RUNNER_LOCK, sh.cancel)
    try:
        with phone.timeline.busy(threads):
            try:
                result = run_host(spec)
            except Exception as exc:  # the runtime's own failures become the runner's error text
                return _runner_error(out, sh.scrub(f"{type(exc).__name__}: {exc}"))
            if sh.cancel.is_set():
                raise Cancelled()
            out.write(format_runner_output(result, model_path=model))
    finally:
        RUNNER_LOCK.release()
    return 0

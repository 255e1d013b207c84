"""The ``Device`` interface (a phone the harness drives) and the workload primitives built on it.

A device runs shell commands with a timeout and an exit status, pushes/pulls/stats files, reads
properties and reboots.  Every command the harness builds from user text goes through
:meth:`Device.run`, which ``shlex.quote``s each argument.  Workloads: :func:`run_inferences` (the
runner contract of ``device/runner.py``) and :func:`idle_baseline`, both optionally *detached* so
they survive the USB link being cut while a Monsoon measures.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from device.closing import Closing
from device.errors import CommandError, DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShellResult:
    """What one shell command did: its merged output, its exit status and how long it took."""

    command: str
    output: str
    exit_code: int
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class RemoteStat:
    """``stat`` of a device path (``mode == 0`` means it does not exist)."""

    mode: int
    size_bytes: int
    mtime_s: int

    @property
    def exists(self) -> bool:
        return self.mode != 0

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000


def quote_argv(argv: Sequence[str | Path | int | float]) -> str:
    """One shell command line from arguments, each ``shlex.quote``d."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def parse_getprop(text: str) -> dict[str, str]:
    """Parse ``getprop`` output (``[key]: [value]`` lines) into a dict."""
    props = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and "]: [" in line and line.endswith("]"):
            key, _, value = line[1:-1].partition("]: [")
            props[key] = value
    return props


class Device(Closing, ABC):
    """A phone (or anything that behaves like one) the harness can drive."""

    name: str = "device"

    @abstractmethod
    def shell(self, command: str, timeout_s: float = 60.0, check: bool = True, retry: bool = True) -> ShellResult:
        """Run shell text on the device; raise :class:`CommandError` on a non-zero status when ``check``.

        ``retry`` allows re-running it after a transport error (leave it off for non-idempotent commands).
        """

    def run(self, argv: Sequence[str | Path | int | float], timeout_s: float = 60.0, check: bool = True,
            retry: bool = True) -> ShellResult:
        """Run one command given as arguments (each quoted): the safe way to pass user text."""
        return self.shell(quote_argv(argv), timeout_s=timeout_s, check=check, retry=retry)

    @abstractmethod
    def push(self, local: Path | str, remote: str, mode: int = 0o644, timeout_s: float = 120.0) -> None:
        """Copy a host file to the device (unchecked: see :func:`device.push.checked_push`)."""

    @abstractmethod
    def pull(self, remote: str, local: Path | str, timeout_s: float = 120.0) -> None:
        """Copy a device file to the host."""

    @abstractmethod
    def stat(self, remote: str) -> RemoteStat:
        """Mode, size and mtime of a device path (mode 0 when missing)."""

    @abstractmethod
    def reboot_and_wait(self, timeout_s: float = 180.0) -> float:
        """Reboot, wait until the device is back and booted; returns the seconds it took."""

    def properties(self) -> dict[str, str]:
        """All system properties (``getprop``)."""
        return parse_getprop(self.shell("getprop", timeout_s=30).output)

    def getprop(self, key: str) -> str:
        """One system property ('' when unset)."""
        return self.run(["getprop", key], timeout_s=30).output.strip()

    def close(self) -> None:
        """Release the link (idempotent)."""
        return None



# ---------------------------------------------------------------- detached workloads


@dataclass(frozen=True)
class DetachedJob:
    """A command running on the phone independently of the ADB link; its files live in ``job_dir``."""

    device: Device
    job_dir: str
    command: str
    started_mono_s: float

    @property
    def out_path(self) -> str:
        return posixpath.join(self.job_dir, "stdout")

    @property
    def err_path(self) -> str:
        return posixpath.join(self.job_dir, "stderr")

    @property
    def rc_path(self) -> str:
        return posixpath.join(self.job_dir, "rc")

    def poll(self) -> int | None:
        """The exit status once finished, else None."""
        res = self.device.run(["cat", self.rc_path], check=False, timeout_s=30)
        text = res.output.strip()
        return int(text) if res.ok and text.lstrip("-").isdigit() else None

    def wait(self, timeout_s: float, poll_s: float = 0.2) -> int:
        """Wait for the job to finish; :class:`DeviceError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            rc = self.poll()
            if rc is not None:
                return rc
            if time.monotonic() > deadline:
                raise DeviceError(self.device.name, f"detached job {self.command!r} still running after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def collect(self, timeout_s: float = 600.0) -> ShellResult:
        """Wait, then return the job's stdout+stderr and exit status (and remove its files)."""
        rc = self.wait(timeout_s)
        out = self.device.run(["cat", self.out_path, self.err_path], check=False, timeout_s=60).output
        self.device.run(["rm", "-r", "-f", self.job_dir], check=False, timeout_s=30)
        return ShellResult(self.command, out, rc, time.monotonic() - self.started_mono_s)


def start_detached(device: Device, command: str, work_dir: str) -> DetachedJob:
    """Start shell text on the phone in the background, ignoring SIGHUP, so it survives the link dropping.

    Output goes to ``<job_dir>/stdout``/``stderr``; the exit status is written to ``rc`` last
    (via a rename, so a half-written status is never read).
    """
    job_dir = posixpath.join(work_dir, f"job-{uuid.uuid4().hex[:10]}")
    q = shlex.quote
    rc, rc_tmp = posixpath.join(job_dir, "rc"), posixpath.join(job_dir, "rc.tmp")
    inner = (f"sh -c {q(command)} > {q(posixpath.join(job_dir, 'stdout'))} 2> {q(posixpath.join(job_dir, 'stderr'))}; "
             f"echo $? > {q(rc_tmp)}; mv {q(rc_tmp)} {q(rc)}")
    # `trap '' HUP` rather than nohup: Android 5.1's toolbox has no nohup; an ignored SIGHUP is inherited.
    detached = q("trap '' HUP; " + inner)
    device.shell(f"mkdir -p {q(job_dir)} && sh -c {detached} > /dev/null 2>&1 &", timeout_s=30, retry=False)
    return DetachedJob(device, job_dir, command, time.monotonic())


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class InferenceWorkload:
    """N inferences of a model already on the phone, with the runner already on the phone."""

    runner_path: str
    model_path: str
    iterations: int
    warmup: int = 0
    threads: int = 1
    input_path: str | None = None
    cpu_mask: int | None = None

    def argv(self) -> list[str]:
        argv = [] if self.cpu_mask is None else ["taskset", f"{self.cpu_mask:x}"]
        argv += [self.runner_path, f"--model_path={self.model_path}",
                 f"--num_executions={self.iterations + self.warmup}", f"--cpu_threads={self.threads}"]
        if self.input_path:
            argv.append(f"--inputs={self.input_path}")
        return argv


def run_inferences(device: Device, work: InferenceWorkload, timeout_s: float = 600.0,
                   detached_work_dir: str | None = None, window_s: float | None = None):
    """Run the workload and parse the runner's text into a ``device.runner.RunResult``.

    With ``detached_work_dir`` the runner is started detached; the harness sleeps ``window_s`` (the
    measurement window, during which the link may be cut) and collects the output afterwards.
    """
    from device.runner import parse_runner_output

    cmd = quote_argv(work.argv())
    if detached_work_dir is None:
        res = device.shell(cmd, timeout_s=timeout_s, check=False, retry=False)
    else:
        job = start_detached(device, cmd, detached_work_dir)
        if window_s:
            time.sleep(window_s)
        res = job.collect(timeout_s=timeout_s)
    if not res.ok:
        raise CommandError(device.name, cmd, res.output, res.exit_code)
    return parse_runner_output(res.output, work.warmup)


def idle_baseline(device: Device, duration_s: float, detached_work_dir: str | None = None) -> float:
    """Keep the phone idle (``sleep``) for ``duration_s`` in its prepared state; returns the host seconds."""
    t0 = time.monotonic()
    cmd = quote_argv(["sleep", f"{duration_s:g}"])
    if detached_work_dir is None:
        device.shell(cmd, timeout_s=duration_s + 30, retry=False)
    else:
        job = start_detached(device, cmd, detached_work_dir)
        time.sleep(duration_s)
        job.collect(timeout_s=duration_s + 60)
    return time.monotonic() - t0

"""The one module that imports Ray: nodes (``ray start``), the driver's connection, tasks, the lab board.

The rest of the harness sees small interfaces: :func:`ray_start_command` (a node's command line),
:func:`connect` / :func:`disconnect`, :func:`nodes` (hosts with their resources), :func:`put` (an object
shipped once), :func:`submit_device` (a device job on the node that owns the device),
:func:`wait_done` (finished jobs, with a lost node told apart from a failed job), :func:`map_cpu`
(CPU tasks on any node) and the board (:func:`board_report`, :func:`board_snapshot`), a detached actor
on the head that records what each device is doing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError, InputError

log = logging.getLogger(__name__)

NAMESPACE = "harness-lab"
BOARD_NAME = "harness-lab-board"
HEAD_RESOURCE = "node:__internal_head__"


class LabError(HarnessError):
    """The lab cannot be reached or used (exit code 1)."""


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency (pyproject.toml)
        raise LabError("the lab needs Ray: pip install 'ray[default]' (see pyproject.toml)") from None
    return ray


# ---- nodes

def ray_start_command(*, head: bool, address: str = "", node_ip: str = "", port: int = 6379,
                      num_cpus: int | None = None, resources: dict[str, float] | None = None,
                      block: bool = False, temp_dir: str = "") -> list[str]:
    """``ray start`` for a head or a joining node: dashboard off, usage stats off, resources as JSON.

    ``node_ip``: the address the node advertises (and others connect to); Ray replaces 127.0.0.1 by the
    machine's interface address, any other loopback address (127.0.0.2...) is kept as given.
    """
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--disable-usage-stats"]
    if head:
        cmd += ["--head", f"--port={int(port)}", "--include-dashboard=false"]
        if temp_dir:
            cmd.append(f"--temp-dir={temp_dir}")
    else:
        cmd.append(f"--address={address}")
    if node_ip:
        cmd.append(f"--node-ip-address={node_ip}")
    if num_cpus is not None:
        cmd.append(f"--num-cpus={int(num_cpus)}")
    if resources:
        cmd.append(f"--resources={json.dumps(resources, sort_keys=True)}")
    if block:
        cmd.append("--block")
    return cmd


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node started by the harness: no usage reports, plus ``extra`` (inherited by the
    node's worker processes)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(extra or {})}


def local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (a socket can be bound to it; nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--lab/--address {address!r}: expected HOST:PORT of a Ray head (harness lab head)")
    return host, int(port)


# ---- the driver's connection

def _cluster_message_to_log(data: dict, ignore_prefix: bool = False) -> None:
    """Ray's driver prints the cluster's error messages (e.g. "Raylet is terminated" when a node dies) to
    stdout, where they would break ``--json`` output: they go to the log (stderr) instead."""
    for line in data.get("lines") or []:
        log.warning("ray (%s): %s", data.get("pid", "cluster"), str(line).rstrip())


def _quiet_stdout(ray) -> None:
    """Send what Ray's driver would print to stdout to the log; a Ray without that hook is left as it is."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if worker is not None and hasattr(worker, "print_to_stdstream"):
        worker.print_to_stdstream = _cluster_message_to_log


def connect(address: str) -> None:
    """Connect this process to the lab at ``address`` (HOST:PORT of the head's GCS)."""
    ray = _ray()
    host, _ = split_address(address)
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if local_address(host):  # a driver on a lab host uses that host's node
        kwargs["_node_ip_address"] = host
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _quiet_stdout(ray)
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LabError(f"cannot reach the lab at {address}: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None


def disconnect() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class NodeInfo:
    """One host of the lab as Ray sees it."""

    node_id: str
    ip: str
    hostname: str
    alive: bool
    head: bool
    resources: dict[str, float] = field(default_factory=dict)

    def named(self, prefix: str) -> list[str]:
        return sorted(k[len(prefix):] for k in self.resources if k.startswith(prefix))


def nodes() -> list[NodeInfo]:
    """Every node the head knows (dead ones too), head first."""
    ray = _ray()
    out = []
    for n in ray.nodes():
        res = {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        out.append(NodeInfo(str(n.get("NodeID", "")), str(n.get("NodeManagerAddress", "")),
                            str(n.get("NodeManagerHostname", "")), bool(n.get("Alive")), HEAD_RESOURCE in res,
                            res))
    return sorted(out, key=lambda n: (not n.head, not n.alive, n.ip, n.node_id))


def available_resources() -> dict[str, float]:
    return {k: float(v) for k, v in _ray().available_resources().items()}


# ---- the board: what each device is doing (a detached actor on the head)

_BOARD_CLS = None


def _board_cls():
    global _BOARD_CLS
    if _BOARD_CLS is None:
        ray = _ray()

        @ray.remote(num_cpus=0, max_restarts=-1)
        class Board:
            def __init__(self) -> None:
                self.state: dict[str, dict] = {}

            def report(self, serial: str, info: dict) -> None:
                self.state[serial] = dict(info)

            def snapshot(self) -> dict[str, dict]:
                return dict(self.state)

        _BOARD_CLS = Board
    return _BOARD_CLS


def _head_node_id() -> str:
    for n in nodes():
        if n.head and n.alive:
            return n.node_id
    raise LabError("the lab has no live head node")


def board(create: bool = False):
    """The board actor (None when there is none and ``create`` is False)."""
    ray = _ray()
    try:
        return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
    except ValueError:
        if not create:
            return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return _board_cls().options(
        name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(_head_node_id(), soft=False)).remote()


def board_report(serial: str, info: dict) -> None:
    """Tell the board (fire and forget); nothing happens when there is no board."""
    b = board()
    if b is not None:
        b.report.remote(serial, info)


def board_snapshot(timeout_s: float = 10.0) -> dict[str, dict]:
    b = board()
    if b is None:
        return {}
    try:
        return dict(_ray().get(b.snapshot.remote(), timeout=timeout_s))
    except Exception as exc:  # noqa: BLE001 - status still shows the nodes without the board
        log.warning("lab board unavailable: %s", exc)
        return {}


# ---- tasks

_DEVICE_TASK = None
_CPU_TASK = None


def _device_task():
    global _DEVICE_TASK
    if _DEVICE_TASK is None:
        ray = _ray()

        @ray.remote(num_cpus=0, max_retries=0)
        def device_task(spec: dict, hashes: list[str], *blobs: bytes) -> dict:
            from harness.lab.devicejob import run_device_job

            serial = spec["serial"]
            return run_device_job(spec, dict(zip(hashes, blobs, strict=True)),
                                  lambda info: board_report(serial, info))

        _DEVICE_TASK = device_task
    return _DEVICE_TASK


def _cpu_task():
    global _CPU_TASK
    if _CPU_TASK is None:
        ray = _ray()

        @ray.remote(max_retries=2)
        def cpu_task(fn: Callable, *args: Any) -> Any:
            return fn(*args)

        _CPU_TASK = cpu_task
    return _CPU_TASK


def put(blob: Any):
    """Ship ``blob`` to the lab's object store once; the handle goes to any number of tasks."""
    return _ray().put(blob)


def submit_device(spec: dict, artifacts: dict[str, Any], resources: dict[str, float]):
    """Run :func:`harness.lab.devicejob.run_device_job` on the node that owns ``resources``; a handle."""
    hashes = sorted(artifacts)
    return _device_task().options(resources=resources).remote(spec, hashes, *[artifacts[h] for h in hashes])


@dataclass(frozen=True)
class Done:
    """A finished job: its value, or why it failed and whether its node (or worker) was lost."""

    handle: Any
    value: Any = None
    error: str = ""
    lost: bool = False


def wait_done(handles: Iterable, timeout_s: float | None = None) -> list[Done]:
    """The jobs among ``handles`` that have finished (waits up to ``timeout_s`` for the first one)."""
    ray = _ray()
    from ray.exceptions import RayTaskError

    pending = list(handles)
    if not pending:
        return []
    ready, _ = ray.wait(pending, num_returns=1, timeout=timeout_s)
    if ready:
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
    out = []
    for h in ready:
        try:
            out.append(Done(h, ray.get(h)))
        except RayTaskError as exc:  # the job itself raised
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            out.append(Done(h, error=f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"))
        except Exception as exc:  # noqa: BLE001 - Ray's system errors: the node or its worker is gone
            first = (str(exc).strip().splitlines() or [""])[0]
            out.append(Done(h, error=f"{type(exc).__name__}: {first}"[:300], lost=True))
    return out


def pending_device_resources(resources: dict[str, float]) -> list[str]:
    """The resources no live node offers (a device whose host is not in the lab)."""
    offered: set[str] = set()
    for n in nodes():
        if n.alive:
            offered.update(n.resources)
    return sorted(r for r in resources if r not in offered)


def map_cpu(fn: Callable, items: list, accept: Callable[[Any], None], num_cpus: float = 1.0) -> None:
    """``fn(*item)`` for every item as Ray tasks on any node (``num_cpus`` each); each result goes to
    ``accept`` as it arrives.  The first failure cancels the rest and is raised."""
    ray = _ray()
    from ray.exceptions import RayTaskError

    task = _cpu_task().options(num_cpus=num_cpus)
    fn_ref = ray.put(fn)
    pending = [task.remote(fn_ref, *item) for item in items]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                try:
                    accept(ray.get(r))
                except RayTaskError as exc:
                    raise (exc.cause if isinstance(getattr(exc, "cause", None), Exception) else
                           LabError(str(exc).splitlines()[0])) from None
    finally:
        for r in pending:
            ray.cancel(r, force=True)

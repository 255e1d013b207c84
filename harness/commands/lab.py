"""``harness lab head|join|status``: hosts join a Ray cluster and advertise the phones and monitors they own.

``lab head`` starts a Ray head (dashboard off) or names a running one (--address); ``lab join --address HEAD``
starts a Ray node on this host advertising each owned phone as the custom resource ``device:<serial>`` and its
power monitor as ``monsoon:<serial>`` (found like ``harness devices`` does, or listed in --lab-file);
``lab status`` shows the hosts, their devices and monitors, and what each device is doing.  See docs/lab.md
(keep Ray on a private network).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

from harness.cliutil import add_command, add_json_flag, bounded_int, print_json
from harness.errors import UsageError

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 120.0


def register(subparsers) -> None:
    p = add_command(subparsers, "lab", lambda a: a.lab_func(a), "the device lab: Ray head, joining hosts, status",
                    __doc__)
    sub = p.add_subparsers(dest="lab_cmd", required=True, metavar="{head,join,status}")

    h = sub.add_parser("head", help="start (or name) the lab's Ray head")
    h.add_argument("--address", default=None, metavar="HOST:PORT", help="name a running head instead of starting one")
    h.add_argument("--port", type=bounded_int(1, 65535), default=6379, help="GCS port (default 6379)")
    _node_flags(h)
    h.set_defaults(lab_func=_head)

    j = sub.add_parser("join", help="start a Ray node here that advertises this host's phones and monitors")
    j.add_argument("--address", required=True, metavar="HOST:PORT", help="the head (harness lab head prints it)")
    _node_flags(j)
    j.set_defaults(lab_func=_join)

    s = sub.add_parser("status", help="hosts, devices, monitors and what each device is doing")
    s.add_argument("--address", required=True, metavar="HOST:PORT", help="the head")
    add_json_flag(s)
    s.set_defaults(lab_func=_status)


def _node_flags(p) -> None:
    p.add_argument("--node-ip", default="", metavar="IP",
                   help="address this node advertises (a private-network address; default: Ray's choice)")
    p.add_argument("--num-cpus", type=bounded_int(0, 4096), default=None, help="CPUs offered to sweep tasks")
    p.add_argument("--lab-file", default=None, metavar="TOML", help="devices and groups of the lab (docs/lab.md)")
    p.add_argument("--host", default=None, help="this host's name in the lab file (default: the hostname)")
    p.add_argument("--no-discover", action="store_true", help="advertise only the lab file's devices")
    p.add_argument("--no-devices", action="store_true", help="advertise no devices (a CPU-only node)")
    p.add_argument("--block", action="store_true", help="stay in the foreground until the node stops")
    add_json_flag(p)


def _devices(args):
    from harness.lab.inventory import owned_devices

    if args.lab_file and not Path(args.lab_file).is_file():
        raise UsageError(f"--lab-file {args.lab_file}: no such file")
    if args.no_devices:
        return []
    return owned_devices(args.lab_file, args.host, discover=not args.no_discover)


def _env(args) -> dict[str, str]:
    from harness.lab.inventory import LAB_FILE_ENV, LAB_HOST_ENV, this_host
    from harness.lab.ray_adapter import node_env

    extra = {LAB_HOST_ENV: args.host or this_host()}
    if args.lab_file:
        extra[LAB_FILE_ENV] = str(Path(args.lab_file).resolve())
    return node_env(extra)


def _start(cmd: list[str], env: dict[str, str], block: bool, ready) -> int:
    """Run ``ray start``; with ``block``, keep it in the foreground once ``ready()`` has passed."""
    if not block:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise UsageError("ray start failed: " + " | ".join(tail))
        ready(res.stdout + res.stderr)
        return 0
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise UsageError(f"ray start exited with code {proc.returncode}")
            try:
                ready("")
                break
            except Exception as exc:  # noqa: BLE001 - the node is still starting
                if time.monotonic() > deadline:
                    raise UsageError(f"the node did not come up within {JOIN_TIMEOUT_S:.0f} s: {exc}") from None
                time.sleep(0.5)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def _head(args) -> int:
    from harness.lab import ray_adapter as lab
    from harness.lab.inventory import node_resources

    if args.address:  # name a running head: check it answers, put the board there
        lab.connect(args.address)
        lab.board(create=True)
        lab.disconnect()
        _say(args, {"role": "head", "address": args.address, "started": False})
        return 0
    devices = _devices(args) if (args.lab_file and not args.no_devices) else []
    cmd = lab.ray_start_command(head=True, node_ip=args.node_ip, port=args.port, num_cpus=args.num_cpus,
                                resources=node_resources(devices), block=args.block)
    host = args.node_ip or ""
    info = {"role": "head", "address": f"{host}:{args.port}" if host else "", "started": True,
            "devices": [d.to_dict() for d in devices]}

    def ready(output: str) -> None:
        if not info["address"]:
            m = re.search(r"--address='([^']+)'", output)
            info["address"] = m.group(1) if m else f"127.0.0.1:{args.port}"
        lab.connect(info["address"])
        try:
            lab.board(create=True)
        finally:
            lab.disconnect()
        _say(args, info)

    return _start(cmd, _env(args), args.block, ready)


def _join(args) -> int:
    from harness.lab import ray_adapter as lab
    from harness.lab.inventory import node_resources

    lab.split_address(args.address)
    devices = _devices(args)
    resources = node_resources(devices)
    cmd = lab.ray_start_command(head=False, address=args.address, node_ip=args.node_ip, num_cpus=args.num_cpus,
                                resources=resources, block=args.block)
    info = {"role": "node", "address": args.address, "node_ip": args.node_ip, "devices": [d.to_dict() for d in devices],
            "resources": resources}

    def ready(_output: str) -> None:
        lab.connect(args.address)
        try:
            if lab.pending_device_resources(resources):
                raise UsageError("node not up yet")
        finally:
            lab.disconnect()
        _say(args, info)

    return _start(cmd, _env(args), args.block, ready)


def _say(args, info: dict) -> None:
    if getattr(args, "json", False):
        print_json(info)
    else:
        if info["role"] == "node":
            serials = ", ".join(d["serial"] for d in info["devices"]) or "none"
            print(f"lab node up at {info['address']}; devices: {serials}", flush=True)
        else:
            print(f"lab head {info['address']}" + (f"; devices: {', '.join(d['serial'] for d in info['devices'])}"
                                                    if info.get("devices") else ""), flush=True)
        if info.get("started") and info.get("address"):
            print(f"  join hosts with: harness lab join --address {info['address']}", flush=True)
    sys.stdout.flush()


def status_info(address: str) -> dict:
    """Hosts (alive or not), their devices and monitors, and what each device is doing."""
    from harness.lab import ray_adapter as lab
    from harness.lab.inventory import paired_monitors

    lab.connect(address)
    try:
        avail = lab.available_resources()
        board = lab.board_snapshot()
        hosts = []
        for n in lab.nodes():
            devs = []
            for serial in n.named("device:"):
                busy = n.alive and avail.get(f"device:{serial}", 0.0) < n.resources.get(f"device:{serial}", 1.0)
                doing = board.get(serial, {})
                devs.append({"serial": serial, "monitors": paired_monitors(serial, n.resources), "busy": bool(busy),
                             "state": doing.get("state", "idle") if busy else ("idle" if n.alive else "offline"),
                             "doing": doing})
            hosts.append({"node_id": n.node_id, "ip": n.ip, "hostname": n.hostname, "alive": n.alive,
                          "head": n.head, "cpus": n.resources.get("CPU", 0.0), "devices": devs,
                          "monitors": n.named("monsoon:")})
        return {"address": address, "hosts": hosts}
    finally:
        lab.disconnect()


def _status(args) -> int:
    info = status_info(args.address)
    if args.json:
        print_json(info)
        return 0
    print(f"lab {info['address']}: {sum(h['alive'] for h in info['hosts'])} host(s) up")
    for h in info["hosts"]:
        role = "head" if h["head"] else "node"
        print(f"  {role} {h['ip']:15} {h['hostname'] or '-':20} {'up' if h['alive'] else 'DOWN':4} "
              f"cpus={h['cpus']:g} monitors={','.join(h['monitors']) or '-'}")
        for d in h["devices"]:
            doing = d["doing"]
            what = ""
            if d["busy"] and doing.get("run_id"):
                what = f" run {doing['run_id']} ({doing.get('lab_run', '')}) {doing.get('done', 0)}/" \
                       f"{doing.get('planned', '?')} windows"
            print(f"      device {d['serial']:20} monitor={','.join(d['monitors']) or '-':16} {d['state']}{what}")
    return 0

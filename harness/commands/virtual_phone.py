"""``harness virtual-phone``: serve a virtual ADB phone on 127.0.0.1 until stopped.

Serve a virtual phone that speaks the ADB wire protocol on 127.0.0.1 (adb connect 127.0.0.1:PORT). It runs
pushed .pte models with the ExecuTorch runtime on this host and records its busy timeline in
ROOT/busy_timeline.tsv. Stop it with Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from harness.cliutil import add_command, add_json_flag, bounded_int, finite_float, print_json
from harness.errors import UsageError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = add_command(subparsers, "virtual-phone", run, "serve a virtual ADB phone on 127.0.0.1", __doc__)
    p.add_argument("--port", type=bounded_int(0, 65535), default=5555, help="TCP port on 127.0.0.1 (0 = any free port; default 5555)")
    p.add_argument("--profile", default="virtual-nexus4", help="device profile to emulate (default virtual-nexus4)")
    p.add_argument("--root", default=None,
                   help="directory for the phone's files, keys and timeline (default ~/.cache/harness/virtual-phone/PROFILE)")
    p.add_argument("--accept-new-keys", action="store_true",
                   help="accept ADB keys it does not know (like tapping 'Allow USB debugging'); they are remembered")
    p.add_argument("--authorize-key", action="append", default=[], metavar="ADBKEY_PUB",
                   help="pre-authorise this public key file (repeatable)")
    p.add_argument("--serial", default=None, help="serial number the phone reports (default virtual-PID)")
    p.add_argument("--duration-s", type=finite_float(0.0, lo_open=True), default=None, help="stop by itself after this many seconds")
    p.add_argument("--fault-drop-after-bytes", type=int, default=None, metavar="N",
                   help="fault injection: drop the link once it has received N bytes")
    p.add_argument("--fault-drop-mid-run-s", type=finite_float(0.0), default=None, metavar="S",
                   help="fault injection: drop every link S seconds after executor_runner starts")
    p.add_argument("--fault-delay-ms", type=finite_float(0.0, 60_000.0), default=0.0, metavar="MS",
                   help="fault injection: delay every packet the phone sends")
    p.add_argument("--fault-refuse-auth", action="store_true", help="fault injection: refuse every key")
    p.add_argument("--fault-corrupt-push", action="store_true",
                   help="fault injection: flip one byte of every pushed file (same size, wrong hash)")
    p.add_argument("--fault-drops", type=int, default=1, metavar="K", help="how many times drop faults fire (default 1)")
    add_json_flag(p)


def run(args) -> int:
    from device.profiles import load_profile
    from device.virtual_phone import FaultConfig, VirtualPhone
    from device.virtual_phone.registry import announce, cache_dir, withdraw

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 0..65535")
    if args.duration_s is not None and args.duration_s <= 0:
        raise UsageError("--duration-s must be positive")
    if args.fault_delay_ms < 0 or (args.fault_drop_after_bytes is not None and args.fault_drop_after_bytes < 1):
        raise UsageError("fault values must be positive")
    profile = load_profile(args.profile)
    for k in args.authorize_key:
        if not Path(k).is_file():
            raise UsageError(f"--authorize-key {k}: no such file")
    root = Path(args.root) if args.root else cache_dir() / "virtual-phone" / profile.name
    phone = VirtualPhone(root, profile=profile, port=args.port, accept_new_keys=args.accept_new_keys,
                         authorized_keys=tuple(args.authorize_key), serial=args.serial)
    phone.set_faults(FaultConfig(drop_after_bytes=args.fault_drop_after_bytes, drop_mid_run_s=args.fault_drop_mid_run_s,
                                 delay_s=args.fault_delay_ms / 1000.0, refuse_auth=args.fault_refuse_auth,
                                 drops=args.fault_drops, corrupt_push=args.fault_corrupt_push))
    phone.start()
    info = {"address": phone.address, "port": phone.port, "profile": profile.name, "serial": phone.state.serial,
            "root": str(phone.root), "timeline": str(phone.timeline_path), "keys": str(phone.state.keys_path),
            "pid": os.getpid(), "accept_new_keys": args.accept_new_keys}
    entry = announce(info)
    try:
        if args.json:
            print_json(info)
        else:
            print(f"virtual phone {profile.name} ({info['serial']}) listening on {phone.address}\n"
                  f"  root {phone.root}\n  adb connect {phone.address}   (Ctrl-C to stop)", flush=True)
        # until --duration-s, Ctrl-C or SIGTERM (harness.cli's stop handlers raise Terminated, a KeyboardInterrupt)
        threading.Event().wait(args.duration_s)
    except KeyboardInterrupt:
        pass
    finally:
        phone.stop()
        withdraw(entry)
    return 0

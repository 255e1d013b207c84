"""Benchmark: ADB speed against the virtual phone (shell round trip, 4 MB push/pull, checked push).

    python benchmarks/bench_adb.py [--rounds 50] [--size-mb 4] [--profile virtual-nexus4]

Targets from the devices issue: a shell round trip under 50 ms and a 4 MB push under 1 s.  The
"plain adb-shell" row uses adb-shell's own TCP transport (no TCP_NODELAY on the client) to show the
Nagle / delayed-ACK stall that device/adb.py's transport avoids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def _stats_ms(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"{statistics.median(ms):9.2f} {p90:9.2f} {ms[0]:9.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--size-mb", type=float, default=4.0)
    ap.add_argument("--profile", default="virtual-nexus4")
    a = ap.parse_args()

    from adb_shell.adb_device import AdbDeviceTcp
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    from device.adb import AdbOptions, connect, ensure_adb_key
    from device.push import checked_push
    from device.virtual_phone import VirtualPhone

    work = Path(tempfile.mkdtemp(prefix="bench-adb-"))
    key = ensure_adb_key(work / "adbkey")
    blob = work / "model.pte"
    blob.write_bytes(os.urandom(int(a.size_mb * (1 << 20))))
    rows: list[tuple[str, str]] = []
    with VirtualPhone(work / "phone", profile=a.profile, authorized_keys=(f"{key}.pub",)) as vp:
        dev = connect(vp.address, AdbOptions(key_path=str(key)))
        for _ in range(5):
            dev.shell("true")
        rt = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            dev.shell("echo x")
            rt.append(time.perf_counter() - t0)
        rows.append(("shell round trip, device/adb.py", _stats_ms(rt)))

        plain = AdbDeviceTcp("127.0.0.1", vp.port, default_transport_timeout_s=10)
        plain.connect(rsa_keys=[PythonRSASigner.FromRSAKeyPath(str(key))], auth_timeout_s=5)
        rt = []
        for _ in range(min(a.rounds, 20)):
            t0 = time.perf_counter()
            plain.shell("echo x")
            rt.append(time.perf_counter() - t0)
        plain.close()
        rows.append(("shell round trip, plain adb-shell (Nagle)", _stats_ms(rt)))

        push, pull, checked = [], [], []
        for k in range(5):
            t0 = time.perf_counter()
            dev.push(blob, f"/data/local/tmp/b{k}.pte")
            push.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            dev.pull(f"/data/local/tmp/b{k}.pte", work / "back.pte")
            pull.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checked_push(dev, blob, f"/data/local/tmp/harness/c{k}.pte", skip_if_same=False)
            checked.append(time.perf_counter() - t0)
        rows.append((f"push {a.size_mb:g} MB", _stats_ms(push)))
        rows.append((f"pull {a.size_mb:g} MB", _stats_ms(pull)))
        rows.append((f"checked push {a.size_mb:g} MB (push+stat+hash+mv)", _stats_ms(checked)))
        dev.close()
    print(f"virtual phone {a.profile}, {a.rounds} rounds, {os.cpu_count()} CPUs (timings on a shared machine)")
    print(f"{'operation':48} {'median ms':>9} {'p90 ms':>9} {'min ms':>9}")
    for name, s in rows:
        print(f"{name:48} {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: `harness run` end to end, wall time and the harness's own overhead.

    python benchmarks/bench_run.py [--device virtual] [--levels 10,20,30,40,50] [--db DIR/harness.db]

Runs `harness run ... --json` in a subprocess (a fresh store unless --db is given) and prints the wall
time, the time inside measurement windows, the overhead share (everything outside windows: building,
export, pushing, preflight, report) and the rows of Tables 3 and 4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="virtual")
    ap.add_argument("--levels", default="10,20,30,40,50")
    ap.add_argument("--db", default=None)
    ap.add_argument("extra", nargs="*", help="more `harness run` flags (after --)")
    a = ap.parse_args()
    db = a.db or str(Path(tempfile.mkdtemp(prefix="bench-run-")) / "harness.db")
    cmd = [sys.executable, "-m", "harness.cli", "run", "--device", a.device, "--levels", a.levels, "--db", db,
           "--json", *a.extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        print(f"harness run exited {proc.returncode} after {wall:.1f} s")
        return proc.returncode
    res = json.loads(proc.stdout)
    print(f"device {res['device']} (virtual: {res['virtual']}), run {res['run_id']}, status {res['status']}")
    print(f"{'process wall (s)':28}{wall:10.1f}")
    print(f"{'run wall (s)':28}{res['wall_s']:10.1f}")
    print(f"{'preparing models (s)':28}{res['prepare_s']:10.1f}")
    print(f"{'inside windows (s)':28}{res['measured_s']:10.1f}")
    print(f"{'overhead (% of run)':28}{res['overhead_pct']:10.1f}")
    print()
    print(f"{'level':>6}{'FLOPs-%':>9}{'ms':>10}{'±':>8}{'saved%':>8}{'mJ':>10}{'±':>8}{'saved%':>8}{'valid':>7}{'inv':>5}")

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    for r in sorted(res["rows"], key=lambda r: r["level"]):
        print(f"{r['level']:>6}{f(r['flops_pruned_pct'], 1):>9}{f(r['time_ms'], 3):>10}{f(r['time_ms_ci'], 3):>8}"
              f"{f(r['time_saved_pct'], 1):>8}{f(r['energy_mj'], 3):>10}{f(r['energy_mj_ci'], 3):>8}"
              f"{f(r['energy_saved_pct'], 1):>8}{r['valid_windows']:>7}{r['invalid_windows']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

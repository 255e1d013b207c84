"""The device lab against one host: a fixed plan on 1, 2 and 4 virtual phones.

For each phone count N it measures (a) the wall time of ``harness run --lab HEAD --devices vp1..vpN`` on a local
Ray cluster (head + two worker nodes, the phones split between them; all in a private network namespace, as in
tests/harness/test_lab_cluster.py) and (b) the same plan run phone after phone on one host
(``harness run --device virtual-nexus4 --connect ...`` once per phone: each phone's run is timed once, and N
phones one after the other take the sum of the first N).  It prints the throughput gain (b/a) and the scheduling
overhead: the lab run's wall time (as the driver reports it: connecting, shipping, starting the jobs, gathering)
less its slowest device job, per lab run and per window of that job.  The models are exported once before
timing (both sides use the same cache), and an untimed lab run on all four phones warms them first (the runner
and the programs pushed, reference outputs and file caches filled), so neither side pays for a cold phone, as in
a lab that measures every build.  The table is Markdown, followed by the command and the load average (paste both into docs/lab.md).

    python benchmarks/bench_lab.py [--json] [--max-reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "harness"))

from test_lab_cluster import Lab, netns_available  # noqa: E402

COUNTS = (1, 2, 4)


def _plan(max_reps: int) -> dict:
    return {"levels": [50], "window_s": 0.1, "idle_s": 0.1, "min_reps": 2, "max_reps": max_reps,
            "target_ci_pct": 0.001, "warmup_inferences": 1, "min_inference_s_per_model": 0.1,
            "min_inferences_per_model": 4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-reps", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cache", default=None, metavar="DIR", help="start from the .pte files of this model cache")
    args = ap.parse_args()
    if not netns_available():
        print("bench_lab: needs network namespaces (unshare --net) to keep Ray on loopback", file=sys.stderr)
        return 2
    from harness.backends import ModelPreparation
    from harness.plan import make_plan

    load0 = os.getloadavg()
    plan = _plan(args.max_reps)
    n_windows = 2 * 2 * plan["max_reps"] + 1
    work = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    (work / "plan.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in plan.items()))
    (work / "results").mkdir()
    if args.cache:
        shutil.copytree(args.cache, work / "results" / "cache")
    with ModelPreparation(make_plan("virtual", "virtual", plan), work / "results" / "cache") as prep:
        prep.finish()
    lab = Lab(work, {**os.environ, "HARNESS_LOCK_DIR": str(work / "locks")}, port=46101)
    rows = []
    try:
        owner = {f"vp{i}": ("node-a" if i % 2 else "node-b") for i in range(1, 5)}
        phones = lab.start_phones(owner)
        lab.start_head()
        lab.phones_ready(phones)
        lab.join("node-a", "127.0.0.3")
        lab.join("node-b", "127.0.0.4")
        # untimed: one lab run on every phone first, so that both sides find the phones warm (the runner and the
        # programs pushed, the host's reference outputs and file caches filled); without it the side timed
        # first pays for all of that (a 1.4x "gain" for one phone, measured)
        warm = lab.cli("run", "--lab", lab.address, "--devices", ",".join(owner), "--config",
                       str(work / "plan.toml"), "--db", str(work / "results" / "warm-up.db"), "--no-report", "--json",
                       timeout_s=3600)
        if warm.returncode != 0:
            raise RuntimeError(warm.stderr[-3000:])
        one_host_s: dict[str, float] = {}  # each phone's plan run alone on its host, once
        for serial in owner:
            env = lab.node_env(owner[serial])
            t1 = time.monotonic()
            address = _address(work, owner[serial], serial)
            r = lab.cli_env(env, "run", "--device", "virtual-nexus4", "--connect", address, "--config",
                            str(work / "plan.toml"), "--db", str(work / "results" / "one-host.db"),
                            "--no-report", "--json", timeout_s=3600)
            one_host_s[serial] = time.monotonic() - t1
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-3000:])
        for n in COUNTS:
            serials = [f"vp{i}" for i in range(1, n + 1)]
            db = work / "results" / f"lab{n}.db"
            t0 = time.monotonic()
            res = lab.cli("run", "--lab", lab.address, "--devices", ",".join(serials), "--config",
                          str(work / "plan.toml"), "--db", str(db), "--no-report", "--json", timeout_s=3600)
            lab_wall_s = time.monotonic() - t0
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-3000:])
            out = json.loads(res.stdout)
            slowest_job_s = max(d["wall_s"] for d in out["devices"].values())
            seq_wall_s = sum(one_host_s[s] for s in serials)  # phone after phone: one run after the other
            rows.append({"phones": n, "lab_wall_s": round(lab_wall_s, 1), "one_host_wall_s": round(seq_wall_s, 1),
                         "gain": round(seq_wall_s / lab_wall_s, 2),
                         "overhead_s_per_lab_run": round(out["wall_s"] - slowest_job_s, 1),
                         "overhead_ms_per_window": round((out["wall_s"] - slowest_job_s) * 1000 / n_windows, 1),
                         "windows_per_phone": n_windows})
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    command = " ".join(["python", "benchmarks/bench_lab.py", *sys.argv[1:]])
    if args.json:
        print(json.dumps({"command": command, "rows": rows, "load_avg_start": load0, "load_avg_end": load,
                          "cpus": os.cpu_count()}, indent=2))
    else:
        print("| phones | lab wall (s) | one host, phone after phone (s) | gain | scheduling overhead per lab run (s) "
              "| per window (ms) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['phones']} | {r['lab_wall_s']} | {r['one_host_wall_s']} | {r['gain']} | "
                  f"{r['overhead_s_per_lab_run']} | {r['overhead_ms_per_window']} |")
        print(f"\n`{command}`: {rows[0]['windows_per_phone'] if rows else '-'} windows per phone; load average "
              f"{load0[0]:.1f} at the start, {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end "
              f"({os.cpu_count()} CPUs)")
    return 0


def _address(work: Path, node: str, serial: str) -> str:
    for entry in (work / node / "cache" / "virtual-phones").glob("*.json"):
        info = json.loads(entry.read_text())
        if info.get("serial") == serial:
            return str(info["address"])
    raise RuntimeError(f"phone {serial} not announced")


if __name__ == "__main__":
    raise SystemExit(main())

"""Power analysis benchmark: ground-truth accuracy, 1 hour of 5 kHz samples, CSV parsing throughput.

    python benchmarks/bench_energy.py [--hours 1.0] [--chunk 1048576] [--csv-rows 1000000] [--keep DIR]

Prints three tables: (1) energy / net-energy / sync errors on synthetic traces with known truth; (2) the
time and peak memory (tracemalloc: numpy buffers included) to analyse ``hours`` of 5 kHz samples in our
binary format with 12 windows; (3) Monsoon CSV parsing throughput (sampleEngine flavour).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device import sync  # noqa: E402
from device.power_model import PowerModelProfile, ground_truth_trace  # noqa: E402
from device.tracefile import TraceReader, TraceWriter, read_monsoon_csv  # noqa: E402
from harness import energy as E  # noqa: E402


def ground_truth_table() -> None:
    cases = [
        ("plain 5 kHz", dict()),
        ("noise 30 mA + drift", dict(profile=PowerModelProfile(noise_current_a=0.03, drift_a_per_s=0.001), seed=2)),
        ("spikes + 0.4% dropped", dict(spikes=8, drop_every=700, drop_run=3, seed=1)),
        ("1 kHz, 3 threads", dict(rate_hz=1000.0, work_threads=3, seed=4)),
        ("20 kHz", dict(rate_hz=20000.0, work_s=2.0, seed=5)),
        ("noise 50 mA, 5 kHz", dict(profile=PowerModelProfile(noise_current_a=0.05), seed=6)),
    ]
    print("\n(1) ground truth (windows found by the sync markers, host guesses off by +0.4 / -0.3 s)")
    print(f"{'case':24s} {'energy err %':>12s} {'net err %':>10s} {'sync start ms':>14s} {'sync end ms':>12s} "
          f"{'dropped':>8s} {'in CI':>6s}")
    worst_e = worst_s = 0.0
    for name, kw in cases:
        g = ground_truth_trace(**kw)
        r = g.rate_hz
        ms = sync.find_marker(g.current_a, r, "start", expected_sync_s=g.window_s[0] + 0.4, sample_index=g.sample_index)
        me = sync.find_marker(g.current_a, r, "end", expected_sync_s=g.window_s[1] - 0.3, sample_index=g.sample_index)
        st = E.window_stats_from_arrays(g.current_a, g.voltage_v, r, [(ms.sync_point_s, me.sync_point_s),
                                        *g.idle_windows_s], sample_index=g.sample_index)
        ne = E.net_energy(st[0], st[1:])
        e_err = 100 * (st[0].energy_j / g.energy_j - 1)
        n_err = 100 * (ne.net_energy_j / g.net_energy_j - 1)
        s0 = 1e3 * (ms.sync_point_s - g.window_s[0])
        s1 = 1e3 * (me.sync_point_s - g.window_s[1])
        inci = ne.net_energy_ci_j[0] <= g.net_energy_j <= ne.net_energy_ci_j[1]
        worst_e = max(worst_e, abs(e_err), abs(n_err))
        if r >= 5000:
            worst_s = max(worst_s, abs(s0), abs(s1))
        print(f"{name:24s} {e_err:12.4f} {n_err:10.4f} {s0:14.4f} {s1:12.4f} {st[0].dropped:8d} {str(inci):>6s}")
    print(f"worst |energy error| {worst_e:.4f} % (limit 0.5 %), worst |sync error| at >= 5 kHz {worst_s:.4f} ms "
          "(limit 1 ms)")


def long_trace(path: Path, hours: float, rate: float = 5000.0, block: int = 1 << 20) -> tuple[int, float]:
    """Write ``hours`` of samples (1 W + 0.5 W square wave at 0.1 Hz + noise); returns (samples, exact J)."""
    n = int(round(hours * 3600 * rate))
    rng = np.random.default_rng(0)
    w = TraceWriter(path, {"rate_hz": rate, "anchor_mono_s": 0.0, "instrument": {"kind": "synthetic"}})
    for s in range(0, n, block):
        k = np.arange(s, min(s + block, n))
        cur = 0.25 + 0.125 * ((k // int(5 * rate)) % 2) + rng.normal(0, 0.01, k.size)
        w.append(s, cur.astype(np.float32), np.full(k.size, 4.0, np.float32))
    w.close({"end_reason": "bench"})
    return n, float("nan")


def long_table(hours: float, chunk: int, keep: str | None) -> None:
    d = Path(keep or tempfile.mkdtemp(prefix="bench_energy_"))
    path = d / f"long_{hours:g}h.ptrc"
    if not path.exists():
        t = time.perf_counter()
        n, _ = long_trace(path, hours)
        print(f"\n(wrote {n:,} samples, {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s)")
    reader = TraceReader(path)
    n = reader.samples
    total_s = n / reader.rate_hz
    # 12 windows of 290 s = 29 whole periods of the square wave: exact mean power 1.25 W
    windows = [(k * total_s / 12, k * total_s / 12 + 290.0) for k in range(12)]
    # exact truth of the noise-free signal in window 0 (mean of 0.25/0.375 A square wave x 4 V)
    print(f"\n(2) {hours:g} h at 5 kHz = {n:,} samples in our binary format, 12 windows, chunk {chunk:,} samples")
    print(f"{'run':6s} {'time s':>8s} {'peak MB (tracemalloc)':>22s} {'samples/s':>14s}")
    for rep in range(3):
        gc.collect()
        reader = TraceReader(path)
        tracemalloc.start()
        t = time.perf_counter()
        stats = E.analyse_windows(reader.iter_chunks(chunk_samples=chunk), windows, reader.rate_hz, reader.first_index)
        dt = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"{rep + 1:<6d} {dt:8.3f} {peak / 1e6:22.1f} {n / dt:14,.0f}")
    t = time.perf_counter()
    stats = E.analyse_windows(reader.iter_chunks(chunk_samples=chunk), windows, reader.rate_hz, reader.first_index)
    dt_plain = time.perf_counter() - t
    err = max(abs(s.mean_power_w / 1.25 - 1) for s in stats)
    print(f"without tracemalloc: {dt_plain:.3f} s; worst window mean-power error {100 * err:.4f} % "
          f"(truth 1.25 W), all valid: {all(s.valid for s in stats)}")
    for c in (1 << 16, 1 << 18, 1 << 20, 1 << 22):
        reader = TraceReader(path)
        tracemalloc.start()
        t = time.perf_counter()
        E.analyse_windows(reader.iter_chunks(chunk_samples=c), windows, reader.rate_hz, reader.first_index)
        dt = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  chunk {c:>9,d}: {dt:.3f} s, peak {peak / 1e6:.1f} MB")
    if not keep:
        path.unlink()
        d.rmdir()


def csv_table(rows: int) -> None:
    d = Path(tempfile.mkdtemp(prefix="bench_csv_"))
    p = d / "se.csv"
    rng = np.random.default_rng(1)
    t = (np.arange(rows) // 3) * 3 / 5000.0 + 0.0173
    cur = 250 + rng.normal(0, 10, rows)
    with open(p, "w") as fh:
        fh.write("Time(ms),Main(mA),Main Voltage(V),\n")
        for s in range(0, rows, 200_000):
            e = min(s + 200_000, rows)
            fh.write("".join(f"{t[i]!r},{cur[i]!r},4.0,\n" for i in range(s, e)))
    size = p.stat().st_size
    print(f"\n(3) Monsoon CSV (sampleEngine flavour), {rows:,} rows, {size / 1e6:.1f} MB")
    for rep in range(2):
        t0 = time.perf_counter()
        tr = read_monsoon_csv(p)
        dt = time.perf_counter() - t0
        print(f"  read {rep + 1}: {dt:.2f} s = {rows / dt:,.0f} rows/s = {size / dt / 1e6:.1f} MB/s "
              f"({tr.time_mode})")
    os.unlink(p)
    d.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=1 << 16)
    ap.add_argument("--csv-rows", type=int, default=1_000_000)
    ap.add_argument("--keep", default=None, help="keep the long trace in this directory (reused next time)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs (shared with other jobs: timings are upper bounds)")
    ground_truth_table()
    long_table(args.hours, args.chunk, args.keep)
    csv_table(args.csv_rows)


if __name__ == "__main__":
    main()

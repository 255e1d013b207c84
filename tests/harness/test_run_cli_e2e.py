"""``harness run`` end to end, every time in a FRESH process (issue 12: a test in a shared process passed only
because an earlier test had already sized the runtime's thread pool).

- ``test_host_backend_in_a_fresh_process`` (default run, seconds): the host backend prepares and times a tiny
  program in a new interpreter, with a thread count that differs from the runtime's initial pool.
- ``test_harness_run_cli_fresh_process`` (slow: exports the NIN and its specialists; HARNESS_SLOW=1):
  ``python -m harness.cli run`` in a fresh directory for each backend, then again (export cache hit), then
  ``harness compare``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAST = ["--window-s", "0.3", "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2"]
LEVELS = {"host": [10, 30, 50], "virtual": [50]}  # host: the command of issue 12


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_PROGRESS": "0", "OPENBLAS_NUM_THREADS": "1",
            "HARNESS_LOCK_DIR": str(tmp_path / "locks"), "HARNESS_CACHE_DIR": str(tmp_path / "hcache"), **extra}


def _stats_flags():
    """Extra flags, e.g. HARNESS_TEST_RUN_FLAGS="--stats my.stats.npz --method paper-grad"."""
    return os.environ.get("HARNESS_TEST_RUN_FLAGS", "").split()


FRESH_HOST_SCRIPT = r"""
import json, sys
import executorch.extension.pybindings.portable_lib as pl
from harness.backends import HostBackend
from harness.runloop import PreparedModel

pool0 = int(pl._threadpool_get_thread_count())
threads = 2 if pool0 == 1 else 1  # differs from the pool the runtime starts with
backend = HostBackend(threads=threads)
models = [PreparedModel(k, lv, (0, 1), "t", 1, 0.0, "h", "a", sys.argv[1]) for k, lv in (("L0", 0), ("L50", 50))]
with backend:
    est = [backend.prepare(m, warmup=1) for m in models]
    wins = [backend.run_window(m, 4, 1) for m in models]
print(json.dumps({"pool0": pool0, "threads": threads, "pool": int(pl._threadpool_get_thread_count()),
                  "est_ms": est, "valid": [w.valid for w in wins], "n": [len(w.latencies_ms) for w in wins]}))
"""


def test_host_backend_in_a_fresh_process(tiny_pte, tmp_path):
    proc = subprocess.run([sys.executable, "-c", FRESH_HOST_SCRIPT, str(tiny_pte)], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["pool0"] != res["threads"] and res["pool"] == res["threads"]
    assert all(e > 0 for e in res["est_ms"]) and res["valid"] == [True, True] and res["n"] == [4, 4]


def _run(tmp_path: Path, device: str, db: Path) -> dict:
    argv = [sys.executable, "-m", "harness.cli", "run", "--device", device, "--threads", "1",
            "--levels", ",".join(map(str, LEVELS[device])), *FAST, *_stats_flags(), "--db", str(db), "--json"]
    proc = subprocess.run(argv, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["virtual", "host"])
def test_harness_run_cli_fresh_process(tmp_path, device):
    db = tmp_path / "results" / "h.db"
    res = _run(tmp_path, device, db)
    assert res["device"] == device and res["virtual"] is (device == "virtual") and res["status"]
    assert [r["level"] for r in res["rows"]] == [0, *LEVELS[device]]
    spec = res["rows"][-1]
    for key in ("flops_pruned_pct", "time_ms", "time_ms_ci", "time_saved_pct", "energy_mj", "energy_mj_ci",
                "energy_saved_pct", "valid_windows", "invalid_windows"):
        assert key in spec
    assert spec["flops_pruned_pct"] == pytest.approx(57.8, abs=1.0)
    assert all(r["valid_windows"] == 2 and r["time_ms"] > 0 for r in res["rows"])
    if device == "host":
        assert all(r["energy_mj"] is None for r in res["rows"])
    else:
        assert spec["energy_mj"] > 0 and spec["energy_saved_pct"] is not None
    assert os.path.isfile(res["report"])
    # a per-layer profile for each model, taken after the measured windows (harness profile)
    prof = json.loads(Path(res["profile"]).read_text())
    assert [m["model"] for m in prof["models"]] == [f"L{lv}" for lv in (0, *LEVELS[device])]
    assert all(m["layers"] and m["operators"] and "note" not in m for m in prof["models"])
    assert 0 <= res["overhead_pct"] <= 100
    # a second run, in another fresh process, hits the export cache; compare them
    second = _run(tmp_path, device, db)
    assert second["prepare_s"] < res["prepare_s"]
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "compare", res["run_id"], second["run_id"],
                           "--db", str(db), "--json", "--threshold", "50"],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    cmp = json.loads(proc.stdout)
    assert proc.returncode == (1 if cmp["regressed"] else 0), proc.stderr[-2000:]
    assert {c["model"] for c in cmp["comparisons"]} == {f"L{lv}" for lv in (0, *LEVELS[device])}

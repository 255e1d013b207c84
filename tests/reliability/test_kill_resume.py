"""``harness run --device virtual`` stopped by real signals, then resumed: nothing lost, nothing twice, no orphan.

Each test starts the real CLI (``python -m harness.cli run``) on the virtual lab with a tiny plan (one level,
0.1 s windows, two rounds: 9 windows), stops it with a real signal once a few windows are stored, checks by
pid that no process it started survives (the Monsoon sampler's pid comes from its claim on the virtual
monitor, the others from /proc before the signal), then resumes it and checks the store holds every
planned window exactly once.  The models are exported once per module into a shared cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.lock import pid_alive, process_start_ticks

ROOT = Path(__file__).resolve().parents[2]
PLAN = {"levels": [50], "window_s": 0.1, "idle_s": 0.1, "min_reps": 2, "max_reps": 2, "target_ci_pct": 0.001,
        "warmup_inferences": 1, "min_inference_s_per_model": 0.1, "min_inferences_per_model": 4}
N_WINDOWS = 2 * 2 * 2 + 1  # rounds x models x (idle + inference) + the closing idle
START_TIMEOUT_S = 300.0  # a loaded 2-core machine; on an idle one the first windows come within ~10 s

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A work directory with the plan's models already exported to its cache (so no run is stopped while it
    exports), the plan file and the runs' environment (locks kept in the work directory)."""
    from harness.backends import ModelPreparation
    from harness.plan import make_plan

    work = tmp_path_factory.mktemp("reliability")
    (work / "plan.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in PLAN.items()))
    with ModelPreparation(make_plan("virtual", "virtual", PLAN), work / "cache") as prep:
        prep.finish()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_PROGRESS": "0",
           "HARNESS_LOCK_DIR": str(work / "locks")}
    return work, env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", "--device", "virtual", *args, "--no-report", "--json"]


def _windows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM windows").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def _descendants(pid: int) -> dict[int, int | None]:
    """pid -> start ticks of every live descendant of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_bytes()
                parent[int(d.name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: dict[int, int | None] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        for child, pp in parent.items():
            if pp == p and child not in out:
                out[child] = process_start_ticks(child)
                todo.append(child)
    return out


def _start(lab, db: Path, min_windows: int) -> tuple[subprocess.Popen, str, Path]:
    """Start a run; return once ``min_windows`` are stored (process, run id, stderr file)."""
    work, env = lab
    err = db.with_suffix(".err")
    with open(db.with_suffix(".out"), "w") as out, open(err, "w") as errf:
        proc = subprocess.Popen(_cli("--config", str(work / "plan.toml"), "--db", str(db)), cwd=work, env=env,
                                stdout=out, stderr=errf, start_new_session=True)  # its own group, as in a shell
    deadline = time.monotonic() + START_TIMEOUT_S
    while _windows(db) < min_windows:
        if proc.poll() is not None or time.monotonic() > deadline:
            for pid in [proc.pid, *_descendants(proc.pid)]:  # leave nothing behind
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)
            pytest.fail(f"run ended or hung before {min_windows} windows (rc {proc.poll()}):\n{err.read_text()}")
        time.sleep(0.05)
    run_id = re.search(r"run (\S+) on virtual", err.read_text()).group(1)
    return proc, run_id, err


def _sampler_pid(lab) -> int:
    work, _ = lab
    owner = (work / "virtual-lab" / "virtual_monsoon_20421.lock").read_text().split()
    return int(owner[0])


def _assert_no_orphans(procs: dict[int, int | None], sampler: int, timeout_s: float = 15.0) -> None:
    assert sampler in procs, f"the sampler pid {sampler} is not a child of the run ({sorted(procs)})"
    deadline = time.monotonic() + timeout_s
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = {p: t for p, t in alive.items() if pid_alive(p, t)}
        time.sleep(0.05)
    assert not alive, f"processes of the stopped run still alive: {sorted(alive)} (sampler {sampler})"


def _resume_and_check(lab, db: Path, run_id: str) -> list[tuple[str, str]]:
    """Resume to completion; check every planned window is stored exactly once; return the events."""
    work, env = lab
    res = subprocess.run(_cli("--resume", run_id, "--db", str(db)), cwd=work, env=env, capture_output=True,
                         text=True, timeout=START_TIMEOUT_S + 120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["status"] == "complete"
    assert "busy" not in res.stderr and "in use by pid" not in res.stderr
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seqs = [r[0] for r in con.execute("SELECT seq FROM windows WHERE run_id = ? ORDER BY seq", (run_id,))]
        events = [(e, d) for e, d in con.execute(
            "SELECT event, detail FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,))]
    finally:
        con.close()
    assert seqs == list(range(N_WINDOWS))  # every planned window, none twice
    return events


def test_kill_9_leaves_no_orphan_and_resume_completes(lab):
    db = lab[0] / "kill9.db"
    proc, run_id, _ = _start(lab, db, 2)
    procs, sampler = _descendants(proc.pid), _sampler_pid(lab)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _assert_no_orphans(procs, sampler)
    events = _resume_and_check(lab, db, run_id)
    assert [e for e, _ in events] == ["created", "started", "resumed", "target_not_reached",
                                        "complete"]  # kill -9 writes nothing; 2 rounds miss target_ci_pct


def test_sigterm_is_an_interrupt_exit_143_and_resume_completes(lab):
    db = lab[0] / "term.db"
    proc, run_id, err = _start(lab, db, 2)
    procs, sampler = _descendants(proc.pid), _sampler_pid(lab)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, err.read_text()
    assert f"--resume {run_id}" in err.read_text() and "Traceback" not in err.read_text()
    _assert_no_orphans(procs, sampler)
    events = _resume_and_check(lab, db, run_id)
    assert events[2] == ("interrupted", "SIGTERM")
    assert [e for e, _ in events] == ["created", "started", "interrupted", "resumed", "target_not_reached",
                                        "complete"]


def test_ctrl_c_pressed_again_while_stopping_keeps_the_event_and_the_store(lab):
    db = lab[0] / "int.db"
    proc, run_id, err = _start(lab, db, 2)
    procs, sampler = _descendants(proc.pid), _sampler_pid(lab)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group, the sampler too
    for _ in range(8):  # impatient presses while the run records the interrupt and closes the lab
        time.sleep(0.01)
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, err.read_text()
    assert "cannot rollback" not in err.read_text() and "Traceback" not in err.read_text()
    _assert_no_orphans(procs, sampler)
    events = _resume_and_check(lab, db, run_id)
    assert [e for e, _ in events] == ["created", "started", "interrupted", "resumed", "target_not_reached",
                                        "complete"]
    assert events[2] == ("interrupted", "Ctrl-C")

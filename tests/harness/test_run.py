import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import InputError, MeasurementError
from harness.plan import make_plan
from harness.runloop import check_resumable, create_run, run_experiment
from harness.store import Store
from harness.tables import model_rows

sys.path.insert(0, str(Path(__file__).parent))
from test_run_backend import ScriptedBackend, models  # noqa: E402

FAST = {"window_s": 0.01, "idle_s": 0.01, "min_reps": 2, "max_reps": 4, "min_inferences_per_model": 4,
        "min_inference_s_per_model": 0.01, "levels": [10, 50]}


def _check_contiguous(st, run_id):
    seqs = [w.seq for w in st.windows(run_id)]
    assert seqs == list(range(len(seqs)))  # nothing lost, nothing duplicated
    kinds = [w.kind for w in st.windows(run_id)]
    assert kinds[0] == "idle" and kinds[-1] == "idle"
    return seqs


def test_complete_run_stops_at_min_reps_when_ci_is_tight(tmp_path):
    plan = make_plan("virtual", "scripted", FAST)
    with Store(tmp_path / "h.db") as st, ScriptedBackend() as be:
        run_id = create_run(st, be, plan)
        out = run_experiment(st, be, plan, models(), run_id, progress=False)
        assert out.status == "complete" and st.run_status(run_id) == "complete"
        seqs = _check_contiguous(st, run_id)
        assert len(seqs) == 2 * 3 * 2 + 1  # 3 models, 2 rounds (CI is zero), bracketing idles
        rows = model_rows(st.models(run_id), st.windows(run_id))
        base = rows[0]
        assert base["time_ms"] == pytest.approx(10.0)
        assert base["energy_mj"] == pytest.approx(20.0)  # (3 W - 1 W) x 10 ms
        assert rows[2]["energy_saved_pct"] == pytest.approx(50.0)
        assert all(r["valid_windows"] == 2 for r in rows)
        assert st.windows(run_id)[1].trace_hash and st.windows(run_id)[1].latencies_hash
        with pytest.raises(InputError, match="already complete"):
            check_resumable(st, run_id, be)


def test_noisy_run_goes_to_max_reps(tmp_path):
    plan = make_plan("virtual", "scripted", {**FAST, "target_ci_pct": 0.01})
    with Store(tmp_path / "h.db") as st, ScriptedBackend(noise=0.05) as be:
        run_id = create_run(st, be, plan)
        run_experiment(st, be, plan, models(), run_id, progress=False)
        assert len(_check_contiguous(st, run_id)) == 2 * 3 * 4 + 1
        assert st.events(run_id)[-2][0] == "target_not_reached" and "missed by" in st.events(run_id)[-2][1]


def test_lost_phone_marks_invalid_then_resume_completes(tmp_path):
    plan = make_plan("virtual", "scripted", FAST)
    with Store(tmp_path / "h.db") as st:
        with ScriptedBackend(fail_windows={4, 5, 6}) as be:
            run_id = create_run(st, be, plan)
            with pytest.raises(MeasurementError, match="resume"):
                run_experiment(st, be, plan, models(), run_id, progress=False)
        assert st.run_status(run_id) == "interrupted"
        bad = [w for w in st.windows(run_id) if not w.valid]
        assert len(bad) == 3 and "phone lost" in bad[0].reason
        with ScriptedBackend() as be:
            plan2 = check_resumable(st, run_id, be)
            assert plan2 == plan
            run_experiment(st, be, plan2, models(), run_id, progress=False)
        _check_contiguous(st, run_id)
        assert st.run_status(run_id) == "complete"
        rows = model_rows(st.models(run_id), st.windows(run_id))
        assert sum(r["invalid_windows"] for r in rows) >= 1  # invalid windows are kept, not lost
        assert all(r["valid_windows"] >= 2 for r in rows)


def test_ctrl_c_keeps_measured_and_resumes(tmp_path):
    plan = make_plan("virtual", "scripted", FAST)
    with Store(tmp_path / "h.db") as st:
        with ScriptedBackend(interrupt_at=6) as be:
            run_id = create_run(st, be, plan)
            with pytest.raises(KeyboardInterrupt):
                run_experiment(st, be, plan, models(), run_id, progress=False)
        assert len(st.windows(run_id)) == 5 and st.run_status(run_id) == "interrupted"
        with ScriptedBackend() as be:
            run_experiment(st, be, plan, models(), run_id, progress=False)
        assert len(_check_contiguous(st, run_id)) == 13


def test_resume_on_other_device_refused(tmp_path):
    plan = make_plan("virtual", "scripted", FAST)

    class Other(ScriptedBackend):
        def fingerprint(self):
            return {"device": "scripted", "serial": "OTHER"}

    with Store(tmp_path / "h.db") as st:
        run_id = create_run(st, ScriptedBackend(), plan)
        with pytest.raises(InputError, match="same device"):
            check_resumable(st, run_id, Other())


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from harness.plan import make_plan
    from harness.runloop import check_resumable, create_run, run_experiment
    from harness.store import Store
    from test_run_backend import ScriptedBackend, models
    plan = make_plan("virtual", "scripted", {fast!r})
    with Store({db!r}) as st, ScriptedBackend(sleep_s=0.03, noise=0.05) as be:
        run_id = sys.argv[1] if len(sys.argv) > 1 else create_run(st, be, plan)
        print(run_id, flush=True)
        if len(sys.argv) > 1:
            plan = check_resumable(st, run_id, be)
        run_experiment(st, be, plan, models(), run_id, progress=False)
""")


def test_kill_9_then_resume_no_lost_no_duplicate(tmp_path):
    db = tmp_path / "h.db"
    fast = {**FAST, "max_reps": 4, "target_ci_pct": 0.01}
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(here=str(Path(__file__).parent), fast=fast, db=str(db)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    run_id = proc.stdout.readline().strip()
    deadline = time.monotonic() + 30
    n = 0
    while time.monotonic() < deadline:
        with Store(db) as st:
            n = len(st.windows(run_id))
        if n >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert 8 <= n < 25
    with Store(db) as st:
        assert st.run_status(run_id) in ("started", "created")  # killed: no event written
    out = subprocess.run([sys.executable, str(script), run_id], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    with Store(db) as st:
        assert len(_check_contiguous(st, run_id)) == 2 * 3 * 4 + 1
        assert st.run_status(run_id) == "complete"
        # target_ci_pct 0.01 cannot be met in 4 noisy rounds: complete, target not reached
        assert [e for e, _, _ in st.events(run_id)] == ["created", "started", "resumed", "target_not_reached",
                                                         "complete"]


def test_resume_reuses_stored_artifacts_only_when_complete_and_intact(tmp_path):
    from harness.backends import stored_models
    from harness.store import ModelRecord

    plan = make_plan("virtual", "scripted", {**FAST, "levels": [50]})
    arts = []
    for key in ("a", "b"):
        p = tmp_path / f"{key}.pte"
        p.write_bytes(key.encode() * 100)
        arts.append(p)
    from device.files import file_hash as _file_sha256

    recs = [ModelRecord("r", "L0", 0, "0,1", "best", 10, 0.0, "m0", _file_sha256(arts[0]), str(arts[0])),
            ModelRecord("r", "L50", 50, "0,1", "best", 5, 57.8, "m5", _file_sha256(arts[1]), str(arts[1]))]
    got = stored_models(recs, plan)
    assert [m.key for m in got] == ["L0", "L50"] and got[1].classes == (0, 1)
    assert stored_models(recs[:1], plan) is None  # killed while storing models: build again
    arts[1].write_bytes(b"changed")
    assert stored_models(recs, plan) is None  # artifact altered: build again

"""The commands on a PostgreSQL store: a virtual-lab run with every planned window once, the same
``show``/``history``/``compare`` output as from SQLite for runs moved by export-results/import-results, and no
password in any output or in the database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.plan import make_plan
from harness.runloop import create_run, run_experiment
from harness.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from test_run_backend import ScriptedBackend, models  # noqa: E402

FAST = {"window_s": 0.01, "idle_s": 0.01, "min_reps": 4, "max_reps": 4, "min_inferences_per_model": 4,
        "min_inference_s_per_model": 0.01, "levels": [10, 50]}
SECRET = "TOPSECRET-pw"


class Slower(ScriptedBackend):
    """The same device after a 'regression': model L50 runs 20% slower."""

    def run_window(self, model, n, warmup):
        res = super().run_window(model, n, warmup)
        if model.key == "L50":
            res.latencies_ms = res.latencies_ms * 1.2
        return res


def _scripted_run(st, backend):
    plan = make_plan("virtual", "scripted", FAST)
    rid = create_run(st, backend, plan)
    run_experiment(st, backend, plan, models(), rid, progress=False)
    return rid


def _with_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)  # trust auth: ignored


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _all_text(url: str) -> str:
    """Every row of every table of the database, as text."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as con:
        names = [r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert {"runs", "windows", "run_events", "models", "schema_version", "traces"} <= set(names)
        return "".join(str(con.execute(f'SELECT string_agg(t::text, \'|\') FROM "{n}" t').fetchone()[0])
                       for n in names)


@pytest.fixture()
def sqlite_runs(tmp_path):
    db = tmp_path / "h.db"
    with Store(db) as st:
        a = _scripted_run(st, ScriptedBackend(noise=0.01, seed=1))
        b = _scripted_run(st, ScriptedBackend(noise=0.01, seed=2))
        c = _scripted_run(st, Slower(noise=0.01, seed=3))
    return db, a, b, c


def test_show_history_compare_are_the_same_from_sqlite_and_postgresql(sqlite_runs, pg_url, tmp_path, capsys,
                                                                     monkeypatch):
    db, a, b, c = sqlite_runs
    monkeypatch.chdir(tmp_path)  # a server store's local files (plots, reports) go to ./results
    exp = tmp_path / "exp"
    pg = _with_password(pg_url)
    code, out, err = _cli(capsys, "export-results", "--db", str(db), "--out", str(exp), "--traces", "--json")
    assert code == 0, err
    assert json.loads(out)["traces"] > 0
    code, out, err = _cli(capsys, "import-results", str(exp), "--db", pg, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["runs"] == [a, b, c] and got["windows"] == 3 * 25 and SECRET not in out
    assert got["db"] == pg.replace(SECRET, "***")
    for argv in (["show", a], ["show", c, "--json"], ["compare", a, b], ["compare", a, c, "--json"],
                 ["history", "--device", "scripted", "--metric", "time", "--model-key", "50", "--no-plot"],
                 ["history", "--device", "scripted", "--metric", "energy", "--json", "--no-plot"]):
        lite = _cli(capsys, *argv, "--db", str(db))
        server = _cli(capsys, *argv, "--db", pg)
        assert lite[0] in (0, 1) and lite == server, argv
        assert lite[1].strip()
    code, out, _ = _cli(capsys, "runs", "--db", pg, "--json")
    runs = json.loads(out)
    assert code == 0 and [r["run_id"] for r in runs["runs"]] == [a, b, c] and runs["db"] == got["db"]
    # the report reads the imported traces from the server
    code, out, err = _cli(capsys, "report", a, "--db", pg, "--json")
    assert code == 0, err
    assert Path(json.loads(out)["files"]["power_trace.png"]).is_file()
    # append-only: importing the same runs again is refused, and nothing of it is written
    code, out, err = _cli(capsys, "import-results", str(exp), "--db", pg)
    assert code == 1 and "already stored" in err and len(err.strip().splitlines()) == 1
    with Store(pg, readonly=True) as st:
        assert len(st.list_runs()) == 3 and len(st.windows(a)) == 25
    # and back again: PostgreSQL -> export -> a new SQLite file shows the same
    back = tmp_path / "back"
    assert _cli(capsys, "export-results", "--db", pg, "--out", str(back), "--format", "csv", "--traces")[0] == 0
    assert _cli(capsys, "import-results", str(back), "--db", str(tmp_path / "again.db"))[0] == 0
    assert _cli(capsys, "show", c, "--db", str(db), "--json") == \
        _cli(capsys, "show", c, "--db", str(tmp_path / "again.db"), "--json")
    # the password is in no output above and nowhere in the database
    assert SECRET not in _all_text(pg_url)


def test_harness_db_names_the_store_and_errors_never_show_the_password(sqlite_runs, pg_url, capsys, monkeypatch,
                                                                        tmp_path):
    db, a, _, _ = sqlite_runs
    monkeypatch.setenv("HARNESS_DB", str(db))
    code, out, _ = _cli(capsys, "show", a, "--json")
    assert code == 0 and json.loads(out)["run_id"] == a
    monkeypatch.setenv("HARNESS_DB", _with_password(pg_url))
    code, out, err = _cli(capsys, "runs")
    assert code == 2 and "no results" in err and SECRET not in out + err and "***" in err
    code, out, err = _cli(capsys, "show", "nope", "--db", _with_password(pg_url).replace("127.0.0.1", "127.0.0.2"))
    assert code != 0 and SECRET not in out + err and len(err.strip().splitlines()) == 1
    code, out, err = _cli(capsys, "runs", "--db", "mysql://u:" + SECRET + "@h/db")
    assert code == 2 and SECRET not in out + err and "unsupported" in err


def test_virtual_lab_run_on_postgresql_stores_every_planned_window_once(base_pte, pg_url, tmp_path):
    from device.files import file_hash
    from harness.backends import VirtualLabBackend
    from harness.runloop import PreparedModel

    h = file_hash(base_pte)
    pms = [PreparedModel("L0", 0, (0, 1, 2, 3, 4), "paper", 100, 0.0, "m0", h, str(base_pte)),
           PreparedModel("L50", 50, (0, 1, 2, 3, 4), "paper", 50, 50.0, "m50", h, str(base_pte))]
    plan = make_plan("virtual", "virtual", {"window_s": 0.3, "idle_s": 0.3, "min_reps": 2, "max_reps": 2,
                                            "min_inferences_per_model": 4, "min_inference_s_per_model": 0.2,
                                            "warmup_inferences": 1})
    with Store(pg_url) as st:
        with VirtualLabBackend("virtual-nexus4", plan, tmp_path / "lab") as be:
            run_id = create_run(st, be, plan)
            out = run_experiment(st, be, plan, pms, run_id, progress=False)
        assert out.status == "complete"
        windows = st.windows(run_id)
        assert [w.seq for w in windows] == list(range(2 * 2 * 2 + 1))  # idle, inf, ..., idle: each once
        assert all(w.valid for w in windows), [w.reason for w in windows if not w.valid]
        inf = [w for w in windows if w.kind == "inference"]
        assert all(w.energy_j and w.energy_j > 0 and w.trace_hash for w in inf)
        assert set(st.traces.get(inf[0].trace_hash)) >= {"t_s"}
        assert st.run_status(run_id) == "complete"


@pytest.mark.slow
def test_harness_run_virtual_with_a_postgresql_db_in_a_fresh_process(pg_url, tmp_path):
    """``harness run --device virtual --db postgresql://...``: builds and exports first (minutes)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "HARNESS_PROGRESS": "0", "HARNESS_LOCK_DIR": str(tmp_path / "l"),
           "HARNESS_CACHE_DIR": str(tmp_path / "c")}
    url = _with_password(pg_url)
    argv = [sys.executable, "-m", "harness.cli", "run", "--device", "virtual", "--levels", "50", "--window-s", "0.3",
            "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2", "--db", url, "--json"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    assert res["db"] == url.replace(SECRET, "***")
    assert Path(res["report"]).parts[0] == "results" and (tmp_path / res["report"]).is_file()  # local: ./results
    with Store(pg_url, readonly=True) as st:
        assert [w.seq for w in st.windows(res["run_id"])] == list(range(2 * 2 * 2 + 1))
    assert SECRET not in _all_text(pg_url)

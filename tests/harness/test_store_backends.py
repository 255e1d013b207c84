"""What holds on both stores (SQLite and PostgreSQL): a crash between windows loses nothing committed and a
resume neither loses nor duplicates; the sweep's cell store; URLs, HARNESS_DB and credentials."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import ArtifactError, InputError
from harness.store import DuplicateError, RunRecord, Store, StoreError, WindowRecord
from harness.store_path import DEFAULT_DB, check_db_path, redact, resolve_db
from harness.sweep import store as sw

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from sqlalchemy import event
    from harness.store import Store, WindowRecord

    def win(seq):
        return WindowRecord(run_id="r1", seq=seq, round_idx=0, kind="inference", model_key="L10",
                            status="valid", n_inferences=1, time_ms=float(seq))

    with Store(sys.argv[1]) as st:
        for seq in range(3):
            st.add_window(win(seq))

        def die(conn, cursor, sql, *rest):  # killed inside window 3's transaction, after its INSERT
            if sql.startswith("INSERT INTO windows"):
                os.kill(os.getpid(), signal.SIGKILL)

        event.listen(st._con, "after_cursor_execute", die)
        st.add_window(win(3))
""")


def _win(seq):
    return WindowRecord(run_id="r1", seq=seq, round_idx=0, kind="inference", model_key="L10", status="valid",
                        n_inferences=1, time_ms=float(seq))


def test_a_crash_between_windows_loses_nothing_committed_and_resume_completes(store_db):
    with Store(store_db) as st:
        st.create_run(RunRecord(run_id="r1", device="virtual", device_fingerprint="f", fingerprint_json="{}",
                                virtual=True, measures_energy=True, instrument="vmonsoon", plan_json="{}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, store_db], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Store(store_db) as st:
        assert st.window_seqs("r1") == {0, 1, 2}  # the three committed windows; the killed one is not there
        for seq in range(5):  # the resume: what is stored is skipped, the rest written once
            if seq not in st.window_seqs("r1"):
                st.add_window(_win(seq))
        with pytest.raises(DuplicateError):
            st.add_window(_win(2))
        assert [w.seq for w in st.windows("r1")] == [0, 1, 2, 3, 4]
        assert [w.time_ms for w in st.windows("r1")] == [0.0, 1.0, 2.0, 3.0, 4.0]


# --------------------------------------------------------------------------- the sweep's cell store


def _rec(ctx, subset, level, correct=7, n=10):
    return sw.JobRecord(ctx, tuple(subset), level, correct, n, 1000, 38.9, 12.5, 0.25, 0.125)


def test_cell_store_round_trip_append_only_and_epochs(store_db):
    st = sw.CellStore(store_db)
    try:
        st.put([_rec("a", (0, 1), 30.0), _rec("a", (0, 1), 0.0, 9), _rec("b", (2, 3), 30.0)])
        with pytest.raises(DuplicateError, match="already stored"):
            st.put([_rec("a", (4, 5), 30.0), _rec("a", (0, 1), 30.0, correct=3)])
        assert st.schema_version() == sw.SCHEMA_VERSION
    finally:
        st.close()
    st = sw.CellStore(store_db)
    try:
        got = st.load("a")
        assert set(got) == {((0, 1), 30.0), ((0, 1), 0.0)} and got[((0, 1), 30.0)].correct == 7
        assert got[((0, 1), 30.0)] == _rec("a", (0, 1), 30.0)
        assert st.forget("a") == 2 and st.load("a") == {} and len(st.load("b")) == 1
        st.put([_rec("a", (0, 1), 30.0, correct=3)])
        assert st.load("a")[((0, 1), 30.0)].correct == 3
    finally:
        st.close()


def test_cell_store_migrates_v1_and_refuses_newer(store_db):
    st = sw.CellStore(store_db, migrations=sw.MIGRATIONS[:1])
    st.close()
    st = sw.CellStore(store_db)  # version 1 -> 2 in one transaction
    try:
        assert st.schema_version() == sw.SCHEMA_VERSION
        st.put([_rec("a", (0, 1), 30.0)])
        from sqlalchemy import text

        from harness.store_schema import transaction

        transaction(st.db, "t", [(text(f"INSERT INTO {sw.VERSION_TABLE} (version, applied_utc) VALUES (:v, 'x')"),
                                  {"v": sw.SCHEMA_VERSION + 1})])
    finally:
        st.close()
    with pytest.raises(ArtifactError, match="newer"):
        sw.CellStore(store_db)


def test_cell_store_and_results_store_share_one_database(store_db):
    with Store(store_db) as st:
        st.create_run(RunRecord(run_id="r1", device="virtual", device_fingerprint="f", fingerprint_json="{}",
                                virtual=True, measures_energy=True, instrument="vmonsoon", plan_json="{}"))
    cells = sw.CellStore(store_db)
    cells.put([_rec("a", (0, 1), 30.0)])
    cells.close()
    with Store(store_db, readonly=True) as st:
        assert st.get_run("r1").run_id == "r1"


def test_cell_store_of_an_older_harness_with_user_version_gets_the_version_table(tmp_path):
    """A SQLite cell store whose version lived only in ``PRAGMA user_version`` (and ``meta``)."""
    p = tmp_path / "s.sqlite"
    st = sw.CellStore(p)
    st.put([_rec("a", (0, 1), 30.0)])
    st.close()
    db = sqlite3.connect(p)
    db.execute(f"DROP TABLE {sw.VERSION_TABLE}")  # as the harness before this one left it
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == sw.SCHEMA_VERSION
    db.close()
    st = sw.CellStore(p)
    try:
        assert st.load("a") == {((0, 1), 30.0): _rec("a", (0, 1), 30.0)}
    finally:
        st.close()
    db = sqlite3.connect(p)
    assert db.execute(f"SELECT MAX(version) FROM {sw.VERSION_TABLE}").fetchone()[0] == sw.SCHEMA_VERSION
    db.close()


# --------------------------------------------------------------------------- URLs, HARNESS_DB, credentials


@pytest.mark.parametrize("text,want", [
    ("postgresql://lab:s3cr%40t@db.example:5432/harness", "postgresql://lab:***@db.example:5432/harness"),
    ("postgresql://lab@db/harness?sslmode=require", "postgresql://lab@db/harness?sslmode=require"),
    ("postgresql://db/h?user=lab&password=hunter2&sslmode=verify-full",
     "postgresql://db/h?user=lab&password=***&sslmode=verify-full"),
    ("error at postgresql://u:pw@h/db: refused", "error at postgresql://u:***@h/db: refused"),
    ("results/harness.db", "results/harness.db"),
])
def test_redact_masks_every_password(text, want):
    assert redact(text) == want


def test_resolve_db_paths_urls_and_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_DB", raising=False)
    assert resolve_db(None).path == DEFAULT_DB
    monkeypatch.setenv("HARNESS_DB", str(tmp_path / "env.db"))
    assert resolve_db(None).path == tmp_path / "env.db"
    assert resolve_db(str(tmp_path / "flag.db")).path == tmp_path / "flag.db"  # the flag wins
    assert resolve_db(f"sqlite:///{tmp_path}/x.db").path == tmp_path / "x.db"
    loc = resolve_db("postgres://lab:pw@db:5433/harness")
    assert loc.path is None and loc.url.startswith("postgresql+psycopg://lab:pw@db:5433/harness")
    assert loc.display == "postgres://lab:***@db:5433/harness" and str(loc) == loc.display
    assert loc.work_dir == DEFAULT_DB.parent
    for bad, msg in (("mysql://u@h/db", "unsupported"), ("postgresql://u:pw@h", "name the database"),
                     ("", "give a file name")):
        with pytest.raises(InputError, match=msg) as err:
            check_db_path(bad)
        assert "pw" not in str(err.value)


def test_an_unreachable_server_is_one_line_without_the_password():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(StoreError) as err:
        Store(f"postgresql://lab:TOPSECRET@127.0.0.1:{port}/harness", timeout_s=2)
    msg = str(err.value)
    assert "TOPSECRET" not in msg and "lab:***@127.0.0.1" in msg and "\n" not in msg


def test_a_password_in_the_url_works_and_is_shown_nowhere(pg_url):
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(password="TOPSECRET").render_as_string(hide_password=False)  # trust: ignored
    with Store(url) as st:
        st.create_run(RunRecord(run_id="r1", device="virtual", device_fingerprint="f", fingerprint_json="{}",
                                virtual=True, measures_energy=True, instrument="vmonsoon", plan_json="{}"))
        assert "TOPSECRET" not in st.where and "***" in st.where
        assert "TOPSECRET" not in repr(st.location) and "TOPSECRET" not in str(st.location)
        with pytest.raises(InputError) as err:
            st.get_run("nope")
        assert "TOPSECRET" not in str(err.value)


def test_a_lab_host_role_with_insert_and_select_only_records_runs_but_cannot_change_them(pg_url):
    """docs/lab.md: the owner migrates; each lab host's role may only INSERT and SELECT."""
    import psycopg
    from sqlalchemy.engine import make_url

    with Store(pg_url) as st:  # the owner: creates the schema
        st.create_run(RunRecord(run_id="r1", device="virtual", device_fingerprint="f", fingerprint_json="{}",
                                virtual=True, measures_energy=True, instrument="vmonsoon", plan_json="{}"))
    sw.CellStore(pg_url).close()
    role = f"host_{os.getpid()}"
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as con:
        con.execute(f"DROP ROLE IF EXISTS {role}")
        con.execute(f"CREATE ROLE {role} LOGIN")
        con.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}")
    host_url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    try:
        with Store(host_url) as st:
            st.add_window(_win(0))
            st.add_event("r1", "started", "")
            assert st.window_seqs("r1") == {0}
            with pytest.raises(StoreError, match="not allowed"):
                st._tx(["UPDATE windows SET time_ms = 0"])
            with pytest.raises(StoreError, match="not allowed"):
                st._tx(["DELETE FROM run_events"])
        cells = sw.CellStore(host_url)
        cells.put([_rec("a", (0, 1), 30.0)])
        cells.close()
        from harness.store import MIGRATIONS, SCHEMA_VERSION

        with pytest.raises(StoreError, match="not allowed"):  # a schema change is the owner's
            Store(host_url, migrations=(*MIGRATIONS, (SCHEMA_VERSION + 1, ("CREATE TABLE x (a TEXT)",))))
        with Store(host_url, readonly=True) as st:
            assert [w.time_ms for w in st.windows("r1")] == [0.0] and st.schema_version() == SCHEMA_VERSION
    finally:
        with psycopg.connect(plain, autocommit=True) as con:
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE IF EXISTS {role}")

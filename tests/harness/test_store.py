"""The results store on SQLite and on PostgreSQL (``store_db``: tests/pgserver.py): the same records, the same
migrations, append-only writes, one transaction per window, interrupts held until a write is whole."""

import os
import signal
import sqlite3

import numpy as np
import pytest
from sqlalchemy import event, insert, inspect, text

from harness.errors import ArtifactError, InputError
from harness.store import (
    EVENTS,
    MIGRATIONS,
    SCHEMA_VERSION,
    DuplicateError,
    ModelRecord,
    RunRecord,
    Store,
    StoreError,
    WindowRecord,
    fingerprint_id,
)


def _run(run_id="r1", device="virtual"):
    fp, fp_json = fingerprint_id({"model": "virtual", "serial": "v1"})
    return RunRecord(run_id=run_id, device=device, device_fingerprint=fp, fingerprint_json=fp_json,
                     virtual=True, measures_energy=True, instrument="vmonsoon", plan_json="{}")


def _win(seq, run_id="r1", **kw):
    base = dict(run_id=run_id, seq=seq, round_idx=0, kind="inference", model_key="L10", status="valid",
                n_inferences=10, time_ms=5.0, energy_j=0.1, busy_s=0.05, duration_s=0.06)
    base.update(kw)
    return WindowRecord(**base)


def test_round_trip_and_status(store_db):
    with Store(store_db) as st:
        st.create_run(_run())
        st.add_model(ModelRecord("r1", "L10", 10, "0,1,2,3,4", "mean", 123, 14.3, "mh", "ah", "a.pte"))
        st.add_model(ModelRecord("r1", "L0", 0, "", "base", 2**40, 0.0, "bh", "bah", "b.pte", 91.25))
        w0 = _win(0, time_ms=1 / 3, temperature_c=None, t_start_mono_s=123456.000001)
        st.add_window(w0)
        st.add_window(_win(1, status="invalid", reason="phone lost"))
        st.add_event("r1", "complete", "")
        got = st.windows("r1")
        assert [w.seq for w in got] == [0, 1]
        assert got[0] == w0  # every field back as written: doubles, NULLs, text
        assert got[1].reason == "phone lost" and not got[1].valid and got[0].valid
        assert st.run_status("r1") == "complete"
        assert [e for e, _, _ in st.events("r1")] == ["created", "complete"]
        runs = st.list_runs()
        assert runs[0].valid_windows == 1 and runs[0].invalid_windows == 1 and runs[0].n_models == 2
        assert st.get_run("r1") == _run().__class__(**{**st.get_run("r1").__dict__})
        assert st.get_run("r1").virtual is True and st.get_run("r1").measures_energy is True
        assert st.get_run("r").run_id == "r1"  # unique prefix
        assert [m.model_key for m in st.models("r1")] == ["L0", "L10"]
        assert st.models("r1")[0].flops == 2**40 and st.models("r1")[0].accuracy_pct == 91.25
        assert st.list_runs(device="virtual") and not st.list_runs(device="other")
        assert st.schema_version() == SCHEMA_VERSION


def test_append_only_no_duplicate_window_nothing_written(store_db):
    with Store(store_db) as st:
        st.create_run(_run())
        st.add_window(_win(3))
        with pytest.raises(DuplicateError):
            st.add_window(_win(3, time_ms=99.0))
        assert [w.time_ms for w in st.windows("r1")] == [5.0]
        with pytest.raises(DuplicateError):  # run and its event are one transaction: neither is written again
            st.create_run(_run())
        assert [e for e, _, _ in st.events("r1")] == ["created"]
        with pytest.raises(DuplicateError):  # all or nothing: the new event is not kept either
            st._tx([insert(EVENTS).values(run_id="r1", seq=5, event="x", detail="", t_utc="t"),
                    insert(EVENTS).values(run_id="r1", seq=0, event="dup", detail="", t_utc="t")])
        assert [e for e, _, _ in st.events("r1")] == ["created"]
        assert not st._con.in_transaction()


def test_model_readd_same_is_noop_and_changed_hash_refused(store_db):
    m = ModelRecord("r1", "L10", 10, "0,1", "mean", 1, 14.3, "mh", "ah", "a.pte")
    with Store(store_db) as st:
        st.create_run(_run())
        st.add_model(m)
        st.add_model(m)
        assert len(st.models("r1")) == 1
        with pytest.raises(ArtifactError, match="hash"):
            st.add_model(ModelRecord("r1", "L10", 10, "0,1", "mean", 1, 14.3, "OTHER", "ah", "a.pte"))


def test_unknown_run_lists_recent(store_db):
    with Store(store_db) as st:
        st.create_run(_run("20260101-000000-abcdef"))
        st.create_run(_run("20260101-000000-abc_ef"))
        with pytest.raises(InputError, match="20260101-000000-abcdef"):
            st.get_run("nope")
        with pytest.raises(InputError, match="ambiguous"):
            st.get_run("20260101")


def test_migration_from_v1_and_newer_refused(store_db):
    with Store(store_db, migrations=MIGRATIONS[:1]) as st:
        assert st.schema_version() == 1
        st.create_run(_run())
    with Store(store_db) as st:  # migrates to the latest, data kept
        assert st.schema_version() == SCHEMA_VERSION
        assert st.get_run("r1").device == "virtual"
        with st._con.begin():
            insp = inspect(st._con)
            assert "windows_by_model" in {i["name"] for i in insp.get_indexes("windows")}
            assert insp.has_table("traces")
        assert [v for v, in st._exec("SELECT version FROM schema_version ORDER BY version")] == \
            [v for v, _ in MIGRATIONS]
        st._tx([(text("INSERT INTO schema_version (version, applied_utc) VALUES (:v, 'x')"),
                 {"v": SCHEMA_VERSION + 1})])
    with pytest.raises(ArtifactError, match="newer"):
        Store(store_db)
    with pytest.raises(ArtifactError, match="newer"):
        Store(store_db, readonly=True)


def test_readonly_store_reads_and_never_writes(store_db):
    with pytest.raises(InputError, match="no results"):
        Store(store_db, readonly=True)
    with Store(store_db) as st:
        st.create_run(_run())
    with Store(store_db, readonly=True) as st:
        assert st.get_run("r1").run_id == "r1"
        with pytest.raises(StoreError):
            st.add_window(_win(0))
    with Store(store_db) as st:
        assert st.windows("r1") == []


def test_two_writers_append_events_without_losing_one(store_db):
    with Store(store_db) as a, Store(store_db) as b:
        a.create_run(_run())
        for i in range(3):
            a.add_event("r1", "started", f"a{i}")
            b.add_event("r1", "resumed", f"b{i}")
        assert len(a.events("r1")) == 7 and b.events("r1") == a.events("r1")


def test_traces_content_addressed_and_verified(store_db, tmp_path):
    with Store(store_db) as st:
        arrays = {"t_s": np.arange(5, dtype=np.float64), "current_a": np.full(5, 0.25, np.float32)}
        h1 = st.traces.put(arrays)
        h2 = st.traces.put(dict(arrays))
        assert h1 == h2 and len(h1) == 64
        back = st.traces.get(h1)
        np.testing.assert_array_equal(back["current_a"], arrays["current_a"])
        other = st.traces.put({"t_s": np.arange(6, dtype=np.float64)})
        if st.path is not None:  # SQLite: files beside the database
            p = st.traces.path(h1)
            assert p.parent.parent == tmp_path / "traces"
            p.write_bytes(st.traces.path(other).read_bytes())  # swap content
        else:  # a server: rows of the traces table
            st._tx([(text("UPDATE traces SET data = (SELECT data FROM traces WHERE trace_hash = :o) "
                          "WHERE trace_hash = :h"), {"o": other, "h": h1})])
        with pytest.raises(ArtifactError, match="hash"):
            st.traces.get(h1)
        with pytest.raises(ArtifactError, match="not found"):
            st.traces.get("0" * 64)


# --------------------------------------------------------------------------- SQLite files


def test_corrupt_database(tmp_path):
    db = tmp_path / "h.db"
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ArtifactError, match="corrupt|not a SQLite"):
        Store(db)


def test_locked_database(tmp_path):
    db = tmp_path / "h.db"
    with Store(db) as st:
        st.create_run(_run())
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            with Store(db, timeout_s=0.1) as st:
                st.add_window(_win(0))
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_missing_db_when_not_creating(tmp_path):
    with pytest.raises(InputError, match="no results database"):
        Store(tmp_path / "none.db", create=False)


# --------------------------------------------------------------------------- interrupts inside transactions


def _python_call() -> None:
    pass


def _signal(sig=signal.SIGINT):
    os.kill(os.getpid(), sig)
    _python_call()  # a Python call runs a pending handler now: the interrupt lands right here


class _CommitSignal(sqlite3.Connection):
    """A SQLite connection that sends SIGINT to this process just before or just after its COMMIT."""

    when = "none"
    armed = False  # set by the INSERT of the window: only that transaction's COMMIT gets the signal
    sent = 0

    def commit(self):
        _commit_with_signal(super().commit, _CommitSignal.when)


def _commit_with_signal(commit, when):
    armed, _CommitSignal.armed = _CommitSignal.armed, False
    if armed and when == "before":
        _CommitSignal.sent += 1
        _signal()
    commit()
    if armed and when == "after":
        _CommitSignal.sent += 1
        _signal()


def _pg_commit_signal(st, when):
    """The same on PostgreSQL: the store's connection is re-made as a psycopg connection of that kind."""
    import psycopg

    class Conn(psycopg.Connection):
        def commit(self):
            _commit_with_signal(super().commit, when)

    st._con.close()
    event.listen(st._engine, "do_connect", lambda dialect, rec, cargs, cparams: Conn.connect(*cargs, **cparams))
    st._con = st._engine.connect()


@pytest.mark.parametrize("statement,when", [("COMMIT", "after"), ("COMMIT", "before"), ("INSERT", "after")])
def test_ctrl_c_inside_a_transaction_is_held_until_the_write_is_whole(store_db, statement, when, monkeypatch):
    import harness.store_schema as schema

    _CommitSignal.when, _CommitSignal.sent, _CommitSignal.armed = "none", 0, False

    def connect(path, timeout_s):
        con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, factory=_CommitSignal)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    monkeypatch.setattr(schema, "connect", connect)
    with Store(store_db) as st:
        st.create_run(_run())
        if statement == "COMMIT":
            if st.dialect == "sqlite":
                _CommitSignal.when = when
            else:
                _pg_commit_signal(st, when)

            def arm(conn, cursor, sql, params, context, executemany):
                if sql.startswith("INSERT INTO windows"):
                    _CommitSignal.armed = True

            event.listen(st._con, "after_cursor_execute", arm)
        else:
            def after(conn, cursor, sql, params, context, executemany):
                if sql.startswith("INSERT INTO windows"):
                    _CommitSignal.sent += 1
                    _signal()

            event.listen(st._con, "after_cursor_execute", after)
        with pytest.raises(KeyboardInterrupt):  # delivered after the commit; never a StoreError
            st.add_window(_win(0))
        assert _CommitSignal.sent == 1
        _CommitSignal.when = "none"
        assert not st._con.in_transaction()
        assert [w.seq for w in st.windows("r1")] == [0]  # stored, once
        if st.dialect == "sqlite":
            assert st._exec("PRAGMA integrity_check")[0][0] == "ok"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_sigterm_inside_add_event_keeps_the_event(store_db):
    from harness.errors import Terminated
    from harness.signals import install_stop_handlers, restore_handlers, saved_handlers

    saved = saved_handlers()
    install_stop_handlers()
    try:
        with Store(store_db) as st:
            st.create_run(_run())
            sent = []

            def after(conn, cursor, sql, params, context, executemany):
                if "max(run_events.seq)" in sql.lower() and not sent:  # before the transaction begins
                    sent.append(1)
                    _signal(signal.SIGTERM)

            event.listen(st._con, "after_cursor_execute", after)
            with pytest.raises(Terminated):
                st.add_event("r1", "interrupted", "Ctrl-C")
            assert sent
            assert st.events("r1")[-1][:2] == ("interrupted", "Ctrl-C")
    finally:
        restore_handlers(saved)


def test_split_modules_keep_the_store_names():
    import harness.store as store

    for name in store.__all__:
        assert getattr(store, name) is not None
    from harness.store_records import WindowRecord as W
    from harness.store_traces import TraceStore as T

    assert store.WindowRecord is W and store.TraceStore is T

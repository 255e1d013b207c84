import os
import signal
import sqlite3

import numpy as np
import pytest

from harness.errors import ArtifactError, InputError
from harness.store import (
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


def test_round_trip_and_status(tmp_path):
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run())
        st.add_model(ModelRecord("r1", "L10", 10, "0,1,2,3,4", "mean", 123, 14.3, "mh", "ah", "a.pte"))
        st.add_window(_win(0))
        st.add_window(_win(1, status="invalid", reason="phone lost"))
        st.add_event("r1", "complete", "")
        got = st.windows("r1")
        assert [w.seq for w in got] == [0, 1]
        assert got[1].reason == "phone lost" and not got[1].valid and got[0].valid
        assert st.run_status("r1") == "complete"
        runs = st.list_runs()
        assert runs[0].valid_windows == 1 and runs[0].invalid_windows == 1 and runs[0].n_models == 1
        assert st.get_run("r1").virtual is True
        assert st.get_run("r").run_id == "r1"  # unique prefix
        assert st.schema_version() == SCHEMA_VERSION


def test_append_only_no_duplicate_window(tmp_path):
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run())
        st.add_window(_win(3))
        with pytest.raises(DuplicateError):
            st.add_window(_win(3, time_ms=99.0))
        assert [w.time_ms for w in st.windows("r1")] == [5.0]


def test_model_readd_same_is_noop_and_changed_hash_refused(tmp_path):
    m = ModelRecord("r1", "L10", 10, "0,1", "mean", 1, 14.3, "mh", "ah", "a.pte")
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run())
        st.add_model(m)
        st.add_model(m)
        assert len(st.models("r1")) == 1
        with pytest.raises(ArtifactError, match="hash"):
            st.add_model(ModelRecord("r1", "L10", 10, "0,1", "mean", 1, 14.3, "OTHER", "ah", "a.pte"))


def test_unknown_run_lists_recent(tmp_path):
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run("20260101-000000-abcdef"))
        with pytest.raises(InputError, match="20260101-000000-abcdef"):
            st.get_run("nope")


def test_migration_from_v1_and_newer_refused(tmp_path):
    db = tmp_path / "h.db"
    with Store(db, migrations=MIGRATIONS[:1]) as st:
        assert st.schema_version() == 1
        st.create_run(_run())
    with Store(db) as st:  # migrates to the latest, data kept
        assert st.schema_version() == SCHEMA_VERSION
        assert st.get_run("r1").device == "virtual"
        idx = st._exec("SELECT name FROM sqlite_master WHERE type='index' AND name='windows_by_model'")
        assert idx
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_version (version, applied_utc) VALUES (?, ?)", (SCHEMA_VERSION + 1, "x"))
    con.commit()
    con.close()
    with pytest.raises(ArtifactError, match="newer"):
        Store(db)


def test_corrupt_database(tmp_path):
    db = tmp_path / "h.db"
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ArtifactError, match="corrupt"):
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


def test_traces_content_addressed_and_verified(tmp_path):
    with Store(tmp_path / "h.db") as st:
        arrays = {"t_s": np.arange(5, dtype=np.float64), "current_a": np.full(5, 0.25, np.float32)}
        h1 = st.traces.put(arrays)
        h2 = st.traces.put(dict(arrays))
        assert h1 == h2 and len(h1) == 64
        back = st.traces.get(h1)
        np.testing.assert_array_equal(back["current_a"], arrays["current_a"])
        p = st.traces.path(h1)
        assert p.parent.parent == tmp_path / "traces"
        other = st.traces.put({"t_s": np.arange(6, dtype=np.float64)})
        p.write_bytes(st.traces.path(other).read_bytes())  # swap content
        with pytest.raises(ArtifactError, match="hash"):
            st.traces.get(h1)


# --------------------------------------------------------------------------- interrupts inside transactions


def _python_call() -> None:
    pass


class _SignalAt:
    """The store's real SQLite connection, with a real signal sent to this process at one statement.

    ``when="after"`` sends it once the statement has run (the reported case: Ctrl-C right after COMMIT turned
    into "cannot rollback - no transaction is active"); ``"before"`` sends it just before.
    """

    def __init__(self, con, statement, sig=signal.SIGINT, when="after"):
        self._con, self.statement, self.sig, self.when, self.sent = con, statement, sig, when, 0

    def execute(self, sql, params=()):
        if sql.startswith(self.statement) and self.when == "before":
            self.sent += 1
            os.kill(os.getpid(), self.sig)
        cur = self._con.execute(sql, params)
        if sql.startswith(self.statement) and self.when == "after":
            self.sent += 1
            os.kill(os.getpid(), self.sig)
            _python_call()  # a Python call runs a pending handler now: the interrupt lands right here
        return cur

    def __getattr__(self, name):
        return getattr(self._con, name)


@pytest.mark.parametrize("statement,when", [("COMMIT", "after"), ("COMMIT", "before"), ("INSERT", "after")])
def test_ctrl_c_inside_a_transaction_is_held_until_the_write_is_whole(tmp_path, statement, when):
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run())
        real = st._con
        st._con = _SignalAt(real, statement, when=when)
        with pytest.raises(KeyboardInterrupt):  # delivered after the commit; never a StoreError
            st.add_window(_win(0))
        assert st._con.sent == 1
        st._con = real
        assert not real.in_transaction
        assert [w.seq for w in st.windows("r1")] == [0]  # stored, once
        assert real.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_sigterm_inside_add_event_keeps_the_event(tmp_path):
    from harness.errors import Terminated
    from harness.signals import install_sigterm, restore_handlers, saved_handlers

    saved = saved_handlers()
    install_sigterm()
    try:
        with Store(tmp_path / "h.db") as st:
            st.create_run(_run())
            real = st._con
            st._con = _SignalAt(real, "SELECT MAX(seq)", sig=signal.SIGTERM)  # before the transaction begins
            with pytest.raises(Terminated):
                st.add_event("r1", "interrupted", "Ctrl-C")
            st._con = real
            assert st.events("r1")[-1][:2] == ("interrupted", "Ctrl-C")
    finally:
        restore_handlers(saved)


def test_a_failed_statement_rolls_back_and_a_finished_commit_is_not_rolled_back(tmp_path):
    with Store(tmp_path / "h.db") as st:
        st.create_run(_run())
        with pytest.raises(DuplicateError):
            st._tx([("INSERT INTO run_events (run_id, seq, event, detail, t_utc) VALUES (?, ?, ?, ?, ?)",
                     ("r1", 5, "x", "", "t")),
                    ("INSERT INTO run_events (run_id, seq, event, detail, t_utc) VALUES (?, ?, ?, ?, ?)",
                     ("r1", 0, "dup", "", "t"))])
        assert [e for e, _, _ in st.events("r1")] == ["created"]  # all or nothing
        assert not st._con.in_transaction


def test_split_modules_keep_the_store_names():
    import harness.store as store

    for name in store.__all__:
        assert getattr(store, name) is not None
    from harness.store_records import WindowRecord as W
    from harness.store_traces import TraceStore as T

    assert store.WindowRecord is W and store.TraceStore is T

"""Bad input (issue 11, point 5): one line on stderr, exit 2 (or a documented code), no traceback, nothing written.

Every case runs the real command line (``harness.cli.main``) against real files in a temporary
directory and compares the directory before and after: no database rows, no cache exports, no lab
files, no stray temporary files.  Nothing here starts a build, an export or a lab.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

from harness.cli import main

RUN_ID = "20250101-000000-abcdef"


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its size and (for files under 1 MiB) its bytes.

    SQLite's WAL index files (``-wal``, ``-shm``) are left out: any reader of a WAL database, even a
    read-only one, may create them; they hold no data of ours.
    """
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        if p.name.endswith((".db-wal", ".db-shm")):
            continue
        if p.is_file():
            size = p.stat().st_size
            out[str(p.relative_to(root))] = (size, p.read_bytes() if size < (1 << 20) else None)
        else:
            out[str(p.relative_to(root)) + "/"] = (0, None)
    return out


def one_line_error(capsys, code: int, expect: int = 2, match: str = "") -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == expect, err
    assert len(lines) == 1, err
    assert lines[0].startswith("harness: error: ") and "Traceback" not in err
    assert match in lines[0], lines[0]
    return lines[0]


def make_store(db: Path, complete: bool = True) -> None:
    """A harness results database holding one run (complete, or interrupted)."""
    from harness.store import RunRecord, Store

    with Store(db) as st:
        st.create_run(RunRecord(run_id=RUN_ID, device="host", device_fingerprint="fp", fingerprint_json="{}",
                                virtual=False, measures_energy=False, instrument="none",
                                plan_json='{"device": "host", "kind": "host", "levels": [10]}'))
        st.add_event(RUN_ID, "complete" if complete else "interrupted")


def _immutable(path: Path, on: bool) -> bool:
    """Make ``path`` read-only for everyone, root included (``chattr +i``); False where that is impossible."""
    if os.geteuid() != 0:
        path.chmod(0o555 if on else 0o755) if path.is_dir() else path.chmod(0o444 if on else 0o644)
        return True
    if shutil.which("chattr") is None:
        return False
    r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def readonly():
    """``readonly(path)`` makes a file or directory immutable until the test ends (skips where impossible)."""
    done: list[Path] = []

    def make(path: Path) -> None:
        if not _immutable(path, True):
            pytest.skip("cannot make a file immutable here (needs chattr as root, or a non-root user)")
        done.append(path)

    yield make
    for p in reversed(done):
        _immutable(p, False)


# --------------------------------------------------------------------------- harness run: the plan


RUN_FILES = {
    "window_s_str": 'window_s = "abc"\n',
    "levels_str": 'levels = "10,20"\n',
    "levels_int": "levels = 10\n",
    "levels_float": "levels = [10.7, 20]\n",
    "target_str": 'target_ci_pct = "5"\n',
    "min_reps_str": 'min_reps = "2"\n',
    "classes_nested": "classes = [[0, 1]]\n",
    "seed_str": 'seed = "abc"\n',
    "cooldown_str": 'cooldown_temp_c = "hot"\n',
    "seed_negative": "seed = -1\n",
    "window_huge": "window_s = 1e6\n",
    "idle_inf": "idle_s = inf\n",
    "target_nan": "target_ci_pct = nan\n",
    "device_empty": 'device = ""\n',
    "run_not_table": "run = 3\n",
    "unknown_key": "levls = [10]\n",
    "not_toml": "levels = [10,\n",
}


@pytest.mark.parametrize("name", sorted(RUN_FILES))
def test_run_config_wrong_types(tmp_path, capsys, name):
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN_FILES[name])
    before = snapshot(tmp_path)
    code = main(["run", "--db", str(tmp_path / "r" / "h.db"), "--config", str(cfg)])
    one_line_error(capsys, code, match="--config" if name != "device_empty" else "device")
    assert snapshot(tmp_path) == before


RUN_FLAGS = {
    "seed_negative": (["--seed", "-1"], "--seed"),
    "device_empty": (["--device", ""], "--device: give a device name"),
    "device_blank": (["--device", "  "], "--device: give a device name"),
    "levels_huge_range": (["--levels", "1-300000000"], "out of range"),
    "levels_long_list": (["--levels", ",".join(["10"] * 2000)], "more than"),
    "levels_many_digits": (["--levels", "9" * 5000], "not a whole number"),
    "window_huge": (["--window-s", "1e6"], "--window-s"),
    "window_nan": (["--window-s", "nan"], "not a finite number"),
    "idle_inf": (["--idle-s", "inf"], "not a finite number"),
    "idle_negative": (["--idle-s", "-1"], "--idle-s"),
    "target_nan": (["--target-ci-pct", "nan"], "not a finite number"),
    "target_zero": (["--target-ci-pct", "0"], "--target-ci-pct"),
    "threads_huge": (["--threads", "10000"], "threads"),
    "threads_zero": (["--threads", "0"], "--threads"),
    "max_reps_huge": (["--max-reps", "1000000"], "--max-reps"),
    "method_bogus": (["--method", "bogus"], "unknown method 'bogus'"),
    "stats_missing": (["--stats", "missing.npz"], "--stats 'missing.npz': no such file"),
    "model_missing": (["--model", "missing.npz"], "--model 'missing.npz': no such file"),
    "real_without_serial": (["--device", "nexus4"], "--serial"),
}


@pytest.mark.parametrize("name", sorted(RUN_FLAGS))
def test_run_bad_flags_write_nothing(tmp_path, capsys, monkeypatch, name):
    argv, msg = RUN_FLAGS[name]
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code = main(["run", "--db", str(tmp_path / "r" / "h.db"), *argv])
    one_line_error(capsys, code, match=msg)
    assert snapshot(tmp_path) == before


def test_run_model_of_wrong_kind(tmp_path, capsys):
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"not a zip")
    before = snapshot(tmp_path)
    code = main(["run", "--db", str(tmp_path / "r" / "h.db"), "--model", str(bad)])
    one_line_error(capsys, code, match="weights file")
    assert snapshot(tmp_path) == before


def test_resume_of_complete_run_writes_nothing(tmp_path, capsys):
    db = tmp_path / "h.db"
    make_store(db)
    before = snapshot(tmp_path)
    code = main(["run", "--db", str(db), "--resume", RUN_ID])
    one_line_error(capsys, code, match="already complete")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- --db


@pytest.fixture
def foreign_db(tmp_path) -> Path:
    db = tmp_path / "notes.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes (body) VALUES ('keep me')")
    con.commit()
    con.close()
    return db


@pytest.mark.parametrize("argv", [["runs"], ["show", RUN_ID], ["history", "--device", "x"], ["run"],
                                  ["run", "--resume", RUN_ID], ["report", RUN_ID]])
def test_foreign_sqlite_is_refused_untouched(tmp_path, capsys, foreign_db, argv):
    before = snapshot(tmp_path)
    code = main([*argv, "--db", str(foreign_db)])
    one_line_error(capsys, code, match="another application's SQLite database")
    assert snapshot(tmp_path) == before
    con = sqlite3.connect(f"file:{foreign_db}?mode=ro", uri=True)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]
    con.close()


@pytest.mark.parametrize("argv", [["runs"], ["run"], ["show", RUN_ID]])
@pytest.mark.parametrize("where", ["directory", "under_file", "not_sqlite"])
def test_db_path_that_cannot_be_a_database(tmp_path, capsys, argv, where):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x" * 100)
    db = {"directory": tmp_path / "adir", "under_file": tmp_path / "afile" / "h.db",
          "not_sqlite": tmp_path / "afile"}[where]
    before = snapshot(tmp_path)
    code = main([*argv, "--db", str(db)])
    one_line_error(capsys, code)
    assert snapshot(tmp_path) == before


def test_readonly_database_is_readable(tmp_path, capsys, readonly):
    results = tmp_path / "results"
    db = results / "harness.db"
    make_store(db)
    assert not (results / "harness.db-wal").exists()  # closed cleanly: no WAL index left to read through
    before = snapshot(tmp_path)
    readonly(db)
    readonly(results)
    assert main(["runs", "--db", str(db)]) == 0
    assert RUN_ID in capsys.readouterr().out
    assert main(["show", RUN_ID, "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == RUN_ID
    # a command that must write says so in one line (exit 2: the directory is the user's to fix)
    code = main(["run", "--db", str(db), "--device", "host"])
    one_line_error(capsys, code, match="cannot write")
    assert snapshot(tmp_path) == before


def test_immutable_results_tree_fails_cleanly(tmp_path, capsys, readonly):
    """Every file and directory of a results tree immutable: readers work, ``run`` says why it cannot."""
    results = tmp_path / "results"
    db = results / "harness.db"
    make_store(db, complete=False)
    for sub in ("cache", "traces", "virtual-lab"):
        (results / sub).mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    for p in sorted(results.rglob("*"), reverse=True):
        readonly(p)
    readonly(results)
    assert main(["runs", "--db", str(db)]) == 0
    capsys.readouterr()
    for argv in (["run", "--device", "host"], ["run", "--resume", RUN_ID]):
        code = main([*argv, "--db", str(db)])
        one_line_error(capsys, code, match="cannot write")
    assert snapshot(tmp_path) == before


def test_unwritable_traces_dir_is_one_store_error(tmp_path, readonly):
    import numpy as np

    from harness.store import StoreError, TraceStore

    traces = tmp_path / "traces"
    traces.mkdir()
    readonly(traces)
    with pytest.raises(StoreError, match="cannot write") as info:
        TraceStore(traces).put({"a": np.arange(3)})
    assert len(str(info.value).splitlines()) == 1


# --------------------------------------------------------------------------- outputs: -o


@pytest.mark.parametrize("argv", [
    ["build", "--classes", "0,1", "--level", "30", "-o", "{adir}"],
    ["build", "--classes", "0,1", "--level", "30", "-o", "{afile}/x.pt"],
    ["export", "--classes", "0,1", "--level", "30", "-o", "{adir}"],
    ["export", "--classes", "0,1", "--level", "30", "-o", "/proc/x.pte"],
    ["export", "--classes", "0,1", "--level", "30", "-o", "{afile}/x.pte"],
    ["stats", "-o", "{adir}"],
])
def test_unwritable_outputs(tmp_path, capsys, argv):
    (tmp_path / "adir.pte").mkdir()
    (tmp_path / "afile").write_text("x")
    fill = {"adir": str(tmp_path / "adir.pte"), "afile": str(tmp_path / "afile")}
    before = snapshot(tmp_path)
    code = main([a.format(**fill) for a in argv])
    one_line_error(capsys, code)
    assert snapshot(tmp_path) == before  # no stray .x.tmpPID
    assert not list(Path("/proc").glob(".x.pte*"))


@pytest.mark.parametrize("argv,msg", [
    (["bench", "x.pte", "--iterations", "2000000000"], "--iterations"),
    (["bench", "x.pte", "--threads", "100000"], "--threads"),
    (["bench", "x.pte", "--warmup", "-1"], "--warmup"),
    (["build", "--classes", "0,1", "--level", "nan"], "--level"),
    (["export", "--classes", "0,1", "--level", "inf", "-o", "x.pte"], "--level"),
    (["compare", "a", "b", "--alpha", "nan"], "--alpha"),
    (["compare", "a", "b", "--threshold", "inf"], "--threshold"),
    (["stats", "-o", "x.npz", "--per-class", "0"], "--per-class"),
    (["accuracy", "--classes", "0,1", "--level", "30", "--per-class", "-5"], "--per-class"),
    (["virtual-phone", "--port", "70000"], "--port"),
    (["virtual-phone", "--duration-s", "nan"], "--duration-s"),
])
def test_numeric_flags_are_bounded(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    one_line_error(capsys, code, match=msg)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- trace files


def _ptrc(header: bytes) -> bytes:
    return b"PWRTRC01" + struct.pack("<I", len(header)) + header


TRACES = {
    "ptrc_no_rate": _ptrc(b"{}"),
    "ptrc_list_header": _ptrc(b"[1, 2]"),
    "ptrc_rate_zero": _ptrc(b'{"rate_hz": 0}'),
    "ptrc_rate_text": _ptrc(b'{"rate_hz": "fast"}'),
    "ptrc_rate_nan": _ptrc(b'{"rate_hz": NaN}'),
    "ptrc_instrument_int": _ptrc(b'{"rate_hz": 5000, "instrument": 3}'),
    "ptrc_schema_text": _ptrc(b'{"rate_hz": 5000, "schema_version": "x"}'),
    "ptrc_not_json": _ptrc(b'{"rate_hz": '),
    "ptrc_deep_json": _ptrc(b"[" * 100_000),
    "ptrc_huge_claim": b"PWRTRC01" + struct.pack("<I", 2**32 - 1) + b"{}",
    "ptrc_truncated": b"PWRTRC01" + struct.pack("<I", 100) + b"{}",
    "ptrc_trailer_list": _ptrc(b'{"rate_hz": 5000}') + b"END1" + struct.pack("<I", 2) + b"[]",
    "ptrc_negative_index": _ptrc(b'{"rate_hz": 5000}') + struct.pack("<4sqIIf", b"BLK1", -5, 0, 0, 0.0),
    "csv_wide_header": b"Time(ms)," + b"a," * 2_000_000 + b"\n1,2\n",
    "csv_many_columns": b"Time(ms)," + b"a," * 1000 + b"\n",
    "csv_long_line": b"Time(s),Main(mA),Main Voltage(V)\n" + b"x" * 5_000_000 + b",1,4\n0.0002,1,4\n",
    "csv_one_long_line": b"y" * 5_000_000,
    "csv_inf_time": b"Time(s),Main(mA)\n0,1\ninf,2\n",
    "csv_binary": bytes(range(256)) * 10,
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_crafted_traces_are_one_data_error(tmp_path, name):
    from device.errors import DataError
    from device.tracefile import open_trace

    p = tmp_path / name
    p.write_bytes(TRACES[name])
    with pytest.raises(DataError) as info:
        open_trace(p)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 400, msg[:500]


def test_crafted_trace_through_the_cli(tmp_path, capsys):
    p = tmp_path / "t.ptrc"
    p.write_bytes(TRACES["ptrc_rate_zero"])
    code = main(["energy", str(p), "--window", "0:1"])
    one_line_error(capsys, code, match="rate_hz")


def test_nan_rate_for_a_csv_is_refused(tmp_path):
    from device.errors import DataError
    from device.tracefile import read_monsoon_csv

    p = tmp_path / "t.csv"
    p.write_bytes(b"Time(s),Main(mA)\n0,1\n0.0002,2\n")
    for rate in (float("nan"), float("inf"), 0.0, -5.0):
        with pytest.raises(DataError, match="rate must be"):
            read_monsoon_csv(p, rate)

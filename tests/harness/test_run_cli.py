"""``harness run`` input checking: bad input is one clear line, exit 2, nothing written."""

import pytest

from harness.cli import main


@pytest.mark.parametrize("argv,msg", [
    (["--levels", "10,,20"], "empty item"),
    (["--levels", "abc"], "not a whole number"),
    (["--levels", "120"], "out of range"),
    (["--levels", "10,10"], "repeats"),
    (["--classes", "3"], "at least two"),
    (["--device", "nexus5x"], "unknown device or profile 'nexus5x'; known: host, virtual"),
    (["--device", "host", "--monitor", "gauge"], "for real phones"),
    (["--resume", "abc", "--levels", "10"], "drop --levels"),
    (["--config", "/nonexistent.toml"], "no such file"),
    (["--min-reps", "5", "--max-reps", "2"], "min_reps"),
])
def test_bad_input_exit_2_nothing_written(tmp_path, capsys, argv, msg):
    db = tmp_path / "r" / "h.db"
    assert main(["run", "--db", str(db), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not db.parent.exists()


def test_resume_unknown_run(tmp_path, capsys):
    from harness.store import Store

    db = tmp_path / "h.db"
    with Store(db):
        pass
    assert main(["run", "--db", str(db), "--resume", "20990101-000000-000000"]) == 2
    assert "not found" in capsys.readouterr().err


def test_corrupt_db_is_clear(tmp_path, capsys):
    db = tmp_path / "h.db"
    db.write_bytes(b"garbage" * 200)
    assert main(["runs", "--db", str(db)]) == 2
    assert "corrupt" in capsys.readouterr().err

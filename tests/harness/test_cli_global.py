"""Global options (-v/-q/--json/--db before or after the command), logging levels, one output spelling."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import GLOBAL_OPTIONS, _global_values, build_parser, main
from harness.store import DEFAULT_DB, Store

REPO = Path(__file__).resolve().parents[2]


def _parse(argv):
    args = build_parser().parse_args(argv)
    return args, _global_values(args)


def test_every_command_takes_the_global_options_after_its_name():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(sub.choices) > 10
    for name, p in sub.choices.items():
        missing = [f for f in GLOBAL_OPTIONS if f not in p._option_string_actions]
        assert not missing, (name, missing)


@pytest.mark.parametrize("argv", [
    ["-v", "--json", "--db", "X.db", "runs"],
    ["runs", "-v", "--json", "--db", "X.db"],
    ["--json", "runs", "--db", "X.db", "-v"],
    ["--db", "X.db", "runs", "--json", "-v"],
])
def test_global_options_before_or_after_the_command(argv):
    args, verbosity = _parse(argv)
    assert (args.command, args.json, args.db, verbosity) == ("runs", True, "X.db", 1)


def test_verbosity_adds_up_across_the_command_and_quiet_lowers_it(monkeypatch):
    monkeypatch.delenv("HARNESS_DB", raising=False)
    assert _parse(["-v", "runs", "-v"])[1] == 2
    assert _parse(["-vvv", "runs"])[1] == 2  # capped at debug
    assert _parse(["runs", "-q"])[1] == -1
    args, verbosity = _parse(["runs"])
    assert (args.json, args.db, verbosity) == (False, str(DEFAULT_DB), 0)
    monkeypatch.setenv("HARNESS_DB", "/elsewhere/h.db")
    assert _parse(["runs"])[0].db == "/elsewhere/h.db"
    assert _parse(["runs", "--db", "given.db"])[0].db == "given.db"  # the flag wins


def test_the_same_json_wherever_the_flags_go(tmp_path, capsys):
    db = tmp_path / "h.db"
    with Store(db):
        pass
    outs = []
    for argv in (["runs", "--json", "--db", str(db)], ["--json", "--db", str(db), "runs"],
                 ["--db", str(db), "runs", "--json"]):
        assert main(argv) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] == outs[2]


def test_old_output_spellings_still_work_with_a_warning(caplog):
    for old in ("--out", "-o", "--output"):
        args, _ = _parse(["report", "RUN", old, "D"])
        assert args.out == "D"
    assert _parse(["history", "--device", "x", "--plot", "p.png"])[0].plot == "p.png"
    assert _parse(["history", "--device", "x", "-o", "p.png"])[0].plot == "p.png"
    assert _parse(["sweep", "--out", "S"])[0].out == "S" == _parse(["sweep", "-o", "S"])[0].out
    assert _parse(["export-results", "--output", "E"])[0].out == "E"
    with caplog.at_level(logging.WARNING, logger="harness"):
        main(["report", "RUN", "--out", "D", "--db", "/nonexistent/h.db"])
    assert "--out is deprecated; use -o/--output" in caplog.text


def test_history_model_is_model_key_and_the_old_flag_says_so(capsys):
    assert _parse(["history", "--device", "x", "--model-key", "L30", "--model-key", "50"])[0].model == ["L30", "50"]
    assert main(["history", "--device", "x", "--model", "L30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model-key" in err and "harness run" in err


SCRIPT = """
import logging, sys
from harness.logsetup import configure_logging
configure_logging(int(sys.argv[1]))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.figure(); plt.plot([1, 2]); plt.savefig(sys.argv[2])
logging.getLogger("harness.x").debug("our-debug")
logging.getLogger("device.y").info("our-info")
logging.getLogger("harness.x").warning("our-warning")
logging.getLogger("somelib").warning("lib-warning")
logging.getLogger("somelib").error("lib-error")
logging.getLogger("torchao").warning("Failed to load torchao kernel")
"""


@pytest.mark.parametrize("verbosity, shown, hidden", [
    (2, {"our-debug", "our-info", "our-warning", "lib-warning", "lib-error", "Failed to load"}, set()),
    (0, {"our-warning", "lib-error"}, {"our-debug", "our-info", "lib-warning", "Failed to load"}),
    (-1, {"lib-error"}, {"our-warning", "our-info", "lib-warning"}),
])
def test_log_levels_are_set_on_our_loggers_only(tmp_path, verbosity, shown, hidden):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(verbosity), str(tmp_path / "f.png")],
                         env={**os.environ, "PYTHONPATH": str(REPO), "MPLCONFIGDIR": str(tmp_path / "mpl")},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert all(s in res.stderr for s in shown), res.stderr
    assert not any(h in res.stderr for h in hidden), res.stderr
    assert "matplotlib" not in res.stderr and "PIL" not in res.stderr  # -vv is our debug, not theirs


def test_vv_on_the_command_line_is_our_debug_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_CACHE_DIR": str(tmp_path / "c"),
           "ANDROID_ADB_SERVER_PORT": "1"}
    env.pop("ANDROID_SERIAL", None)
    res = subprocess.run([sys.executable, "-m", "harness.cli", "devices", "--no-usb", "-vv", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and json.loads(res.stdout)["devices"] == []
    for line in res.stderr.splitlines():
        level, _, rest = line.partition(" ")
        if level in ("DEBUG", "INFO", "WARNING"):
            assert rest.split(":")[0].split(".")[0] in ("harness", "device", "specialist"), line


def test_building_the_parser_and_a_usage_refusal_do_not_import_torch():
    code = ("import sys\nfrom harness.cli import build_parser, main\nbuild_parser()\n"
            "rc = main(['build', '--classes', '0,1', '--level', 'abc'])\n"
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert "--level" in out.stderr


def test_registry_choices_are_read_when_the_flag_is_used(capsys):
    assert main(["build", "--classes", "0,1", "--level", "10", "--compensation", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'lsq'" in err and "'merge'" in err

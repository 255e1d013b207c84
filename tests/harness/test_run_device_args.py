"""``harness run``: device arguments (profile, serial, monitor) are refused before any build, export or write.

Each case would otherwise build and export six models first; here it is one line, exit 2, nothing written,
within seconds.
"""

import time

import pytest

from harness.backends import check_device_args, resolve_device
from harness.cli import main
from harness.errors import UsageError
from harness.plan import make_plan

PROFILE = """schema_version = 1
name = "{name}"
description = "test phone"
work_dir = "/data/local/tmp/harness"
[android]
abi = "arm64-v8a"
api_level = 30
release = "11"
[battery]
nominal_v = 3.85
capacity_mah = 3000
[monsoon]
voltage_v = {voltage}
[cpu]
count = 4
big_cores = [2, 3]
[thermal]
zones = ["thermal_zone0"]
[runner]
remote_path = "/data/local/tmp/executor_runner"
binary = "{binary}"
"""


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """User profiles: ``labphone`` with an existing runner binary, ``norunner`` naming a missing one, and
    ``hot`` with a Monsoon voltage no Monsoon gives."""
    d = tmp_path / "profiles"
    d.mkdir()
    runner = tmp_path / "executor_runner"
    runner.write_bytes(b"\x7fELF")
    for name, binary, voltage in (("labphone", runner, 3.85), ("norunner", tmp_path / "missing", 3.85),
                                  ("hot", runner, 20.0)):
        (d / f"{name}.toml").write_text(PROFILE.format(name=name, binary=binary, voltage=voltage))
    monkeypatch.setenv("HARNESS_PROFILES", str(d))
    # no phone attached: no virtual phones, no adb server, no ANDROID_SERIAL of the user's
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "1")
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    monkeypatch.delenv("ADB_SERVER_SOCKET", raising=False)
    return d


@pytest.mark.parametrize("argv,msg", [
    (["--device", "nexus4"], "--device nexus4: no phone attached"),
    (["--device", "labphone"], "give --serial (USB serial or HOST:PORT) or set ANDROID_SERIAL"),
    (["--device", "labphone", "--serial", "10.0.0.2:99999"], "bad device address '10.0.0.2:99999'"),
    (["--device", "labphone", "--serial", "X1", "--monitor-serial", "abc"], "--monitor-serial must be"),
    (["--device", "labphone", "--serial", "X1", "--monitor", "gauge", "--monitor-serial", "7"],
     "--monitor-serial is for --monitor monsoon"),
    (["--device", "nexus4", "--serial", "X1"], "profile nexus4 names no executor_runner binary"),
    (["--device", "norunner", "--serial", "X1"], "executor_runner"),
    (["--device", "hot", "--serial", "X1"], "hot.toml: field 'monsoon.voltage_v'"),
    (["--device", "virtual", "--serial", "X1"], "for real phones"),
])
def test_bad_device_arguments_exit_2_fast_nothing_written(tmp_path, capsys, monkeypatch, profiles, argv, msg):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HARNESS_LOCK_DIR", str(tmp_path / "locks"))
    t0 = time.monotonic()
    assert main(["run", "--db", str(work / "r" / "h.db"), *argv]) == 2
    assert time.monotonic() - t0 < 20  # no build, no export (those take minutes)
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert list(work.iterdir()) == [] and not (tmp_path / "locks").exists()


def test_a_plan_from_toml_is_checked_too(profiles):
    plan = make_plan("virtual", "virtual", {"serial": "X1"})
    with pytest.raises(UsageError, match="for real phones"):
        check_device_args(resolve_device("virtual"), plan)


def test_good_device_arguments_pass(profiles):
    choice = resolve_device("labphone")
    assert choice.kind == "real"
    for over in ({"serial": "X1"}, {"serial": "127.0.0.1:5555", "monitor_serial": "12345"},
                 {"serial": "X1", "monitor": "gauge"}):
        check_device_args(choice, make_plan("real", "labphone", over))
    for name in ("host", "virtual"):
        c = resolve_device(name)
        check_device_args(c, make_plan(c.kind, c.name, {}))

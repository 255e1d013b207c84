"""``harness run --device virtual --connect 127.0.0.1:PORT``: measure a phone started by ``harness virtual-phone``.

The phone runs in its own process (``python -m harness.cli virtual-phone``), announced in the registry
under ``HARNESS_CACHE_DIR``; its fault flags therefore reach ``harness run`` from the command line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from vphone_helpers import PhoneProcess  # noqa: E402

from device.adb import ensure_adb_key  # noqa: E402
from harness.cli import main  # noqa: E402

FAST = ["--levels", "50", "--window-s", "0.3", "--idle-s", "0.3", "--min-reps", "2", "--max-reps", "2"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _external(tmp_path: Path, *flags: str) -> PhoneProcess:
    key = ensure_adb_key(tmp_path / "own-key" / "adbkey")  # not the lab's key: new keys must be accepted
    return PhoneProcess(tmp_path, key, "--accept-new-keys", *flags)


@pytest.mark.parametrize("argv, text", [
    (["--device", "virtual", "--connect", "127.0.0.1:1"], "no virtual phone is running there"),
    (["--device", "virtual", "--connect", "10.0.0.7:5555"], "expected 127.0.0.1:PORT"),
    (["--device", "host", "--connect", "127.0.0.1:5555"], "--connect/--key are for virtual phones"),
])
def test_connect_is_checked_before_anything_is_written(cache, capsys, argv, text):
    db = cache / "db" / "h.sqlite"
    assert main(["run", *argv, *FAST, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (cache / "db").exists()


def test_the_lab_measures_the_external_phone_and_leaves_it_running(cache):
    from harness.backends import make_backend, resolve_device
    from harness.plan import make_plan

    phone = _external(cache)
    try:
        choice = resolve_device("virtual")
        plan = make_plan(choice.kind, choice.name, {"device": choice.name, "levels": (50,)})
        backend = make_backend(choice, plan, cache / "work", connect=phone.address)
        with backend:
            assert backend.phone is None  # nothing started in this process
            assert backend.fingerprint()["ro.serialno"] == phone.info["serial"]
            idle = backend.idle_window(0.3)
            assert idle.valid and idle.energy_j > 0
        assert phone.proc.poll() is None  # closing the lab does not stop someone else's phone
    finally:
        phone.stop()


def test_a_fault_flag_of_the_external_phone_reaches_the_lab(cache):
    from device.errors import DeviceError
    from harness.backends import make_backend, resolve_device
    from harness.plan import make_plan

    phone = _external(cache, "--fault-refuse-auth")
    try:
        choice = resolve_device("virtual")
        plan = make_plan(choice.kind, choice.name, {"device": choice.name})
        backend = make_backend(choice, plan, cache / "work", connect=phone.address)
        with pytest.raises(DeviceError, match="refused our ADB key"):
            backend.open()
        assert phone.proc.poll() is None
    finally:
        phone.stop()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HARNESS_SLOW") != "1", reason="slow (builds and exports first): HARNESS_SLOW=1")
def test_a_fault_flag_of_the_external_phone_reaches_harness_run(cache, capsys):
    phone = _external(cache, "--fault-refuse-auth")
    try:
        code = main(["run", "--device", "virtual", "--connect", phone.address, *FAST, "--db",
                     str(cache / "db" / "h.sqlite")])
    finally:
        phone.stop()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err  # a device error (errors.EXIT_CODES)
    assert "refused our ADB key" in err.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HARNESS_SLOW") != "1", reason="slow: set HARNESS_SLOW=1")
def test_harness_run_end_to_end_against_an_external_phone(cache, capsys):
    phone = _external(cache)
    try:
        code = main(["run", "--device", "virtual", "--connect", phone.address, *FAST, "--no-report",
                     "--db", str(cache / "db" / "h.sqlite"), "--json"])
        res = json.loads(capsys.readouterr().out)
        assert code == 0 and res["virtual"] and res["status"] in ("complete", "stopped")
        rows = (phone.root / "busy_timeline.tsv").read_text().splitlines()[2:]
        assert any(int(r.split()[1]) > 0 for r in rows)  # the runner ran on the external phone
    finally:
        phone.stop()

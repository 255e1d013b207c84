"""Options dataclasses of every package from TOML files (harness.options): types and keys checked."""

from __future__ import annotations

import pytest

from device.adb import AdbOptions
from device.monsoon import MonsoonOptions
from device.power_model import PowerModelProfile
from device.preflight import PreflightOptions
from harness.errors import DataError, UsageError
from harness.options import load_options, options_from_mapping
from specialist.evaluate import EvalOptions
from specialist.export import ExportOptions


def test_adb_options_from_toml(tmp_path):
    p = tmp_path / "lab.toml"
    p.write_text("[adb]\nkey_path = '/keys/adbkey'\nretries = 5\nauth_timeout_s = 60\n")
    o = load_options(AdbOptions, p, "adb", "adb options")
    assert o == AdbOptions(key_path="/keys/adbkey", retries=5, auth_timeout_s=60.0)
    assert isinstance(o.auth_timeout_s, float)
    p.write_text("[adb]\nretries = 'many'\n")
    with pytest.raises(DataError, match=r"lab.toml: field 'retries': expected a whole number, got 'many'"):
        load_options(AdbOptions, p, "adb", "adb options")


def test_preflight_options_from_toml(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[preflight]\nwait_cool = false\nmax_temp_c = 35\n")
    assert load_options(PreflightOptions, p, "preflight", "preflight") == PreflightOptions(wait_cool=False,
                                                                                          max_temp_c=35.0)
    p.write_text("[preflight]\nmax_temp_c = 'hot'\n")
    with pytest.raises(DataError, match=r"run.toml: field 'max_temp_c': expected a number or none, got 'hot'"):
        load_options(PreflightOptions, p, "preflight", "preflight")
    p.write_text("[preflight]\ncolour = 1\n")
    with pytest.raises(DataError, match=r"unknown key 'colour'"):
        load_options(PreflightOptions, p, "preflight", "preflight")


def test_power_and_monsoon_from_toml(tmp_path):
    p = tmp_path / "phone.toml"
    p.write_text('[power]\nname = "x"\nidle_power_w = 1.5\n[monsoon]\nvoltage_v = 3.8\nserial = 123\n')
    assert load_options(PowerModelProfile, p, "power", "power profile").idle_power_w == 1.5
    assert load_options(MonsoonOptions, p, "monsoon", "monsoon options").voltage_v == 3.8
    p.write_text("[power]\nidle_pwr = 1.5\n")
    with pytest.raises(DataError, match="unknown key 'idle_pwr'"):
        load_options(PowerModelProfile, p, "power", "power profile")
    # the dataclass's own validation (a device-package error) becomes the harness's one-line error
    with pytest.raises(DataError, match="monsoon voltage 20.0 V is outside"):
        options_from_mapping(MonsoonOptions, {"voltage_v": 20}, "monsoon options")


def test_specialist_options_from_toml(tmp_path):
    p = tmp_path / "e.toml"
    p.write_text('[eval]\nengine = "torch"\nchunk_images = 64\n[export]\nbackend = "portable"\n')
    assert load_options(EvalOptions, p, "eval", "eval options") == EvalOptions(engine="torch", chunk_images=64)
    assert load_options(ExportOptions, p, "export", "export options").backend == "portable"
    p.write_text('[eval]\nengines = "torch"\n')
    with pytest.raises(UsageError, match="unknown key 'engines'"):
        load_options(EvalOptions, p, "eval", "eval options", UsageError)


@pytest.mark.parametrize("text, match", [
    ("[eval]\nchunk_images = true\n", "expected a whole number, got True"),
    ("[eval]\nchunk_images = 1.5\n", "expected a whole number, got 1.5"),
    ("[eval]\nengine = 3\n", "expected a string, got 3"),
    ("[eval\n", "cannot read TOML"),
    ("eval = 3\n", "must be a table"),
])
def test_wrong_types_are_one_line(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as ei:
        load_options(EvalOptions, p, "eval", "eval options")
    assert "\n" not in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_options(EvalOptions, tmp_path / "none.toml", "eval", "eval options")

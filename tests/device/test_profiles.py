"""Device profiles: shipped TOML files, user files, and errors that name the file and the field."""

from __future__ import annotations

import pytest

from device.errors import DataError, InputError
from device.profiles import SHIPPED_DIR, known_profiles, load_profile, load_profile_file, match_profile


def test_shipped_profiles():
    names = known_profiles()
    assert {"nexus4", "pixel6", "virtual-nexus4", "virtual-pixel6"} <= set(names)
    n4 = load_profile("nexus4")
    assert (n4.abi, n4.api_level, n4.battery_nominal_v, n4.toybox) == ("armeabi-v7a", 22, 3.8, False)
    assert n4.monsoon_voltage_v == 3.8 and n4.big_cores == (0, 1, 2, 3) and not n4.is_64bit
    assert n4.runner.remote_path == "/data/local/tmp/executor_runner" and not n4.runner.builtin
    p6 = load_profile("pixel6")
    assert p6.abi == "arm64-v8a" and p6.is_64bit and p6.big_cores == (6, 7)
    v = load_profile("virtual-nexus4")
    assert v.virtual and v.runner.builtin and v.power["busy_thread_a"] > v.power["idle_a"] > 0
    assert "battery_unplug" in v.prepare and v.thermal_zones


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError, match="known: .*nexus4.*virtual-nexus4"):
        load_profile("nexus5")


def _write(tmp_path, text, name="phone.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = (SHIPPED_DIR / "nexus4.toml").read_text()


@pytest.mark.parametrize("old, new, field", [
    ('abi = "armeabi-v7a"', 'abi = "mips"', "android.abi"),
    ("api_level = 22", 'api_level = "22"', "android.api_level"),
    ("nominal_v = 3.8", "nominal_v = 38", "battery.nominal_v"),
    ("big_cores = [0, 1, 2, 3]", "big_cores = [0, 9]", "cpu.big_cores"),
    ('steps = ["battery_unplug",', 'steps = ["dance",', "prepare.steps"),
    ("voltage_v = 3.8 ", "voltage_v = true ", "monsoon.voltage_v"),
    ("schema_version = 1", "schema_version = 7", "schema_version"),
    ('governor = "performance"', 'governor = "x; reboot"', "cpu.governor"),
    ('zones = ["thermal_zone0",', 'zones = ["../../etc",', "thermal.zones"),
])
def test_malformed_profile_names_file_and_field(tmp_path, old, new, field):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(DataError) as ei:
        load_profile_file(p)
    assert str(p) in str(ei.value) and f"'{field}'" in str(ei.value)


def test_missing_field_and_bad_toml(tmp_path):
    p = _write(tmp_path, GOOD.replace('abi = "armeabi-v7a"\n', "", 1))
    with pytest.raises(DataError, match=r"'android\.abi': missing"):
        load_profile_file(p)
    p = _write(tmp_path, "name = [", "broken.toml")
    with pytest.raises(DataError, match="broken.toml: not valid TOML"):
        load_profile_file(p)


def test_user_profiles_dir_and_override(tmp_path, monkeypatch):
    _write(tmp_path, GOOD.replace('name = "nexus4"', 'name = "lab-n4"'), "lab-n4.toml")
    _write(tmp_path, GOOD.replace("max_start_c = 40.0", "max_start_c = 33.0"), "nexus4.toml")
    monkeypatch.setenv("HARNESS_PROFILES", str(tmp_path))
    assert "lab-n4" in known_profiles()
    assert load_profile("lab-n4").name == "lab-n4"
    assert load_profile("nexus4").max_start_temp_c == 33.0  # user file wins over the shipped one
    assert load_profile(str(tmp_path / "lab-n4.toml")).name == "lab-n4"
    _write(tmp_path, GOOD, "mismatch.toml")
    with pytest.raises(DataError, match="mismatch.toml: field 'name'"):
        load_profile("mismatch")


def test_match_profile_by_device_name():
    assert match_profile({"ro.product.device": "mako"}).name == "nexus4"
    assert match_profile({"ro.product.model": "Pixel 6"}).name == "pixel6"
    assert match_profile({"ro.product.device": "unknown"}) is None

"""``device.lab_power.power_model_for``: a device profile's ``[power]`` table as the virtual Monsoon's model."""

from __future__ import annotations

import dataclasses

import pytest

from device.errors import DataError
from device.lab_power import power_model_for
from device.profiles import load_profile


def test_short_form_in_amperes_at_the_monsoon_voltage():
    pm = power_model_for(load_profile("virtual-nexus4"))
    assert pm.supply_voltage_v == 3.8 and pm.cores == 4
    assert pm.idle_power_w == pytest.approx(0.07 * 3.8) and pm.active_power_per_core_w == pytest.approx(0.28 * 3.8)


def test_full_form_and_mixed_fields():
    prof = load_profile("virtual-nexus4")
    full = dataclasses.replace(prof, power={"idle_power_w": 0.5, "active_power_per_core_w": 1.0, "cores": 2})
    pm = power_model_for(full)
    assert (pm.idle_power_w, pm.active_power_per_core_w, pm.cores) == (0.5, 1.0, 2)
    assert pm.supply_voltage_v == 4.2  # the model's default: a full table says everything itself
    mixed = dataclasses.replace(prof, power={"idle_a": 0.1, "noise_current_a": 0.0})
    pm = power_model_for(mixed)
    assert pm.idle_power_w == pytest.approx(0.38) and pm.noise_current_a == 0.0 and pm.supply_voltage_v == 3.8


@pytest.mark.parametrize("power,needle", [
    ({"idle_a": "x"}, "'idle_a': expected a number"),
    ({"cores": 2.5}, "'cores': expected a whole number"),
    ({"bogus": 1.0}, "unknown key 'bogus'"),
    ({"idle_power_w": -1.0}, "out-of-range"),
    ({"idle_a": float("nan")}, "finite"),
])
def test_bad_tables_are_one_data_error(power, needle):
    prof = dataclasses.replace(load_profile("virtual-nexus4"), power=power)
    with pytest.raises(DataError, match=needle):
        power_model_for(prof)

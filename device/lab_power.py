"""Device knowledge for the virtual lab: a device profile's power model (``device.power_model.PowerModelProfile``).

A profile's ``[power]`` table is either a full ``PowerModelProfile`` (every key one of its fields) or the
short form of the shipped profiles (``idle_a`` and ``busy_thread_a``, amperes at the Monsoon's voltage),
to which any ``PowerModelProfile`` field may be added.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from device.errors import DataError
from device.power_model import PowerModelProfile

#: The short form's keys (amperes at the profile's ``monsoon_voltage_v``).
SHORT_KEYS = ("idle_a", "busy_thread_a")


def _field_value(profile_name: str, key: str, kind: type, value: Any) -> Any:
    """``value`` as the field's type; one DataError naming the profile and key otherwise."""
    what = f"device profile {profile_name} [power]: field {key!r}"
    if kind is str:
        if not isinstance(value, str):
            raise DataError(f"{what}: expected text, got {value!r:.60}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{what}: expected a number, got {value!r:.60}")
    if kind is int:
        if float(value) != int(value):
            raise DataError(f"{what}: expected a whole number, got {value!r:.60}")
        return int(value)
    if not math.isfinite(float(value)):
        raise DataError(f"{what}: expected a finite number, got {value!r:.60}")
    return float(value)


def power_model_for(profile: Any) -> PowerModelProfile:
    """The virtual Monsoon's power model for a device profile (its ``[power]`` table; defaults otherwise)."""
    power = dict(getattr(profile, "power", {}) or {})
    name = str(getattr(profile, "name", "profile"))
    fields = {f.name: f for f in dataclasses.fields(PowerModelProfile) if f.init}
    types = {"str": str, "int": int, "float": float}
    unknown = sorted(set(power) - set(fields) - set(SHORT_KEYS))
    if unknown:
        raise DataError(f"device profile {name} [power]: unknown key {unknown[0]!r}; known: "
                        f"{', '.join(sorted([*fields, *SHORT_KEYS]))}")
    kw: dict[str, Any] = {}
    if not (power and set(power) <= set(fields)):  # the short form, on the profile's defaults
        v = float(getattr(profile, "monsoon_voltage_v", 0) or PowerModelProfile().supply_voltage_v)
        kw = {"name": name, "supply_voltage_v": v, "cores": int(getattr(profile, "cpu_count", 4) or 4)}
        if "idle_a" in power:
            kw["idle_power_w"] = _field_value(name, "idle_a", float, power["idle_a"]) * v
        if "busy_thread_a" in power:
            kw["active_power_per_core_w"] = _field_value(name, "busy_thread_a", float, power["busy_thread_a"]) * v
    for key, value in power.items():
        if key in fields:
            kw[key] = _field_value(name, key, types.get(str(fields[key].type), float), value)
    try:
        return PowerModelProfile(**kw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"device profile {name} [power]: {exc}") from None

"""Device profiles: what a phone is and how to prepare it, as TOML files.

Shipped profiles live in ``device/profiles/*.toml``; user profiles are read from ``$HARNESS_PROFILES``
(a directory, or several separated by ``os.pathsep``) and ``~/.config/harness/devices``; a user file
with the same name overrides a shipped one.  ``load_profile`` also accepts a path to a ``.toml`` file.

A malformed file raises :class:`~harness.errors.DataError` naming the file and the field; an unknown
name raises :class:`~harness.errors.InputError` listing the known ones.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.errors import DataError, InputError

SCHEMA_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"
ABIS = ("armeabi-v7a", "arm64-v8a", "x86", "x86_64")
PREPARE_STEPS = ("battery_unplug", "screen_off", "airplane_on", "governor_pin", "cool_down")


@dataclass(frozen=True)
class RunnerSpec:
    """Which ``executor_runner`` a phone uses.

    ``builtin`` runners exist on the (virtual) phone already; otherwise ``binary`` is a host path
    (empty in the shipped real-phone profiles: set it in a user profile) pushed to ``remote_path``.
    """

    remote_path: str = "/data/local/tmp/executor_runner"
    binary: str = ""
    builtin: bool = False


@dataclass(frozen=True)
class DeviceProfile:
    """One phone model: ABI, Android level, power, CPU, thermal and preparation settings."""

    name: str
    description: str
    abi: str
    api_level: int
    android_release: str
    battery_nominal_v: float
    monsoon_voltage_v: float
    cpu_count: int
    big_cores: tuple[int, ...]
    thermal_zones: tuple[str, ...]
    max_start_temp_c: float = 40.0
    cool_down_timeout_s: float = 300.0
    governor: str | None = "performance"
    pin_freq_khz: int | None = None
    prepare: tuple[str, ...] = PREPARE_STEPS
    runner: RunnerSpec = field(default_factory=RunnerSpec)
    toybox: bool = True
    virtual: bool = False
    match_devices: tuple[str, ...] = ()
    work_dir: str = "/data/local/tmp/harness"
    power: dict[str, float] = field(default_factory=dict)
    props: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def is_64bit(self) -> bool:
        return self.abi in ("arm64-v8a", "x86_64")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "name": self.name, "description": self.description, "abi": self.abi, "api_level": self.api_level,
            "android_release": self.android_release, "battery_nominal_v": self.battery_nominal_v,
            "monsoon_voltage_v": self.monsoon_voltage_v, "big_cores": list(self.big_cores),
            "thermal_zones": list(self.thermal_zones), "runner_remote_path": self.runner.remote_path,
            "runner_builtin": self.runner.builtin, "virtual": self.virtual, "source": self.source,
        }


class _Fields:
    """Typed access to a TOML table with errors that name the file and the dotted field."""

    def __init__(self, data: dict, path: str, prefix: str = ""):
        self.data, self.path, self.prefix = data, path, prefix

    def _err(self, key: str, msg: str) -> DataError:
        return DataError(f"{self.path}: field '{self.prefix}{key}': {msg}")

    def table(self, key: str) -> _Fields:
        v = self.data.get(key, {})
        if not isinstance(v, dict):
            raise self._err(key, "expected a table")
        return _Fields(v, self.path, f"{self.prefix}{key}.")

    def get(self, key: str, kind: type | tuple, default: Any = ..., check=None, what: str = "") -> Any:
        if key not in self.data:
            if default is ...:
                raise self._err(key, "missing")
            return default
        v = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            raise self._err(key, f"expected {what or kinds[0].__name__}, got {v!r}")
        if float in kinds and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kinds):
            raise self._err(key, f"expected {what or kinds[0].__name__}, got {v!r}")
        if check is not None and not check(v):
            raise self._err(key, f"invalid value {v!r}" + (f" (expected {what})" if what else ""))
        return v

    def int_list(self, key: str, default: tuple = ()) -> tuple[int, ...]:
        v = self.get(key, list, list(default), what="a list of integers")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            raise self._err(key, f"expected a list of non-negative integers, got {v!r}")
        return tuple(v)

    def str_list(self, key: str, default: tuple = ()) -> tuple[str, ...]:
        v = self.get(key, list, list(default), what="a list of strings")
        if not all(isinstance(i, str) and i for i in v):
            raise self._err(key, f"expected a list of non-empty strings, got {v!r}")
        return tuple(v)


def _zones(thermal: _Fields) -> tuple[str, ...]:
    zones = thermal.str_list("zones")
    bad = [z for z in zones if not re.fullmatch(r"[A-Za-z0-9_.-]+", z)]
    if bad:
        raise DataError(f"{thermal.path}: field 'thermal.zones': {bad} are not sysfs names like thermal_zone0")
    return zones


def parse_profile(data: dict, source: str) -> DeviceProfile:
    """Validate a parsed TOML document into a :class:`DeviceProfile`."""
    f = _Fields(data, source)
    version = f.get("schema_version", int, SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise DataError(f"{source}: field 'schema_version': {version} is newer than this harness ({SCHEMA_VERSION})")
    android, battery, monsoon = f.table("android"), f.table("battery"), f.table("monsoon")
    cpu, thermal, runner, prep = f.table("cpu"), f.table("thermal"), f.table("runner"), f.table("prepare")
    power_t, props_t = f.table("power"), f.table("props")
    cpu_count = cpu.get("count", int, check=lambda v: 1 <= v <= 64, what="1..64")
    big = cpu.int_list("big_cores")
    if any(c >= cpu_count for c in big):
        raise DataError(f"{source}: field 'cpu.big_cores': core numbers must be below cpu.count={cpu_count}")
    steps = prep.str_list("steps", PREPARE_STEPS)
    bad = [s for s in steps if s not in PREPARE_STEPS]
    if bad:
        raise DataError(f"{source}: field 'prepare.steps': unknown step(s) {bad}; known: {', '.join(PREPARE_STEPS)}")
    power = {}
    for k in power_t.data:
        power[k] = power_t.get(k, float, what="a number")
    props = {}
    for k in props_t.data:
        props[k] = props_t.get(k, str)
    return DeviceProfile(
        name=f.get("name", str, check=lambda v: bool(v.strip()), what="a non-empty name"),
        description=f.get("description", str, ""),
        abi=android.get("abi", str, check=lambda v: v in ABIS, what=" or ".join(ABIS)),
        api_level=android.get("api_level", int, check=lambda v: 14 <= v <= 99, what="14..99"),
        android_release=android.get("release", str, ""),
        toybox=android.get("toybox", bool, True),
        battery_nominal_v=battery.get("nominal_v", float, check=lambda v: 1.0 <= v <= 5.0, what="1..5 volts"),
        monsoon_voltage_v=monsoon.get("voltage_v", float, check=lambda v: 0.8 <= v <= 13.5, what="0.8..13.5 volts"),
        cpu_count=cpu_count,
        big_cores=big,
        governor=cpu.get("governor", str, "performance", check=lambda v: re.fullmatch(r"[a-z0-9_]*", v) is not None,
                         what="a governor name like performance") or None,
        pin_freq_khz=cpu.get("pin_freq_khz", int, None, check=lambda v: v > 0, what="a positive frequency"),
        thermal_zones=_zones(thermal),
        max_start_temp_c=thermal.get("max_start_c", float, 40.0, check=lambda v: 0 < v < 120, what="0..120 C"),
        cool_down_timeout_s=thermal.get("cool_down_timeout_s", float, 300.0, check=lambda v: v >= 0, what=">= 0"),
        prepare=steps,
        runner=RunnerSpec(
            remote_path=runner.get("remote_path", str, "/data/local/tmp/executor_runner",
                                   check=lambda v: v.startswith("/"), what="an absolute device path"),
            binary=runner.get("binary", str, ""),
            builtin=runner.get("builtin", bool, False),
        ),
        virtual=f.get("virtual", bool, False),
        match_devices=f.str_list("match_devices"),
        work_dir=f.get("work_dir", str, "/data/local/tmp/harness", check=lambda v: v.startswith("/"),
                       what="an absolute device path"),
        power=power,
        props=props,
        source=source,
    )


def load_profile_file(path: Path | str) -> DeviceProfile:
    """Load one profile file; errors name the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: profile file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read profile: {exc}") from None
    return parse_profile(data, str(path))


def profile_dirs() -> list[Path]:
    """Directories searched for profiles, lowest priority first."""
    dirs = [SHIPPED_DIR, Path.home() / ".config" / "harness" / "devices"]
    env = os.environ.get("HARNESS_PROFILES", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    return dirs


def _profile_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for d in profile_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                files[p.stem] = p
    return files


def known_profiles() -> list[str]:
    """Names of all profiles (shipped and user)."""
    return sorted(_profile_files())


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (``nexus4``) or by path to a ``.toml`` file."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load_profile_file(name_or_path)
    files = _profile_files()
    if name_or_path not in files:
        raise InputError(f"unknown device profile {name_or_path!r}; known: {', '.join(sorted(files))}")
    prof = load_profile_file(files[name_or_path])
    if prof.name != name_or_path:
        raise DataError(f"{files[name_or_path]}: field 'name': {prof.name!r} differs from the file name")
    return prof


def all_profiles() -> list[DeviceProfile]:
    """Every loadable profile (a malformed one raises)."""
    return [load_profile(n) for n in known_profiles()]


def match_profile(props: dict[str, str]) -> DeviceProfile | None:
    """The profile whose ``match_devices`` names this phone's ``ro.product.device`` (or model)."""
    keys = {props.get("ro.product.device", ""), props.get("ro.product.model", ""), props.get("ro.product.name", "")}
    keys.discard("")
    for prof in all_profiles():
        if keys & set(prof.match_devices):
            return prof
    return None

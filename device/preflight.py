"""Preflight: put a phone in its measurement state, check it, and fingerprint it.

Checks, each failure one clear message: the runner binary fits the phone (ABI, 32/64-bit, API level,
PIE; ExecuTorch's Android runner is arm64, so a Nexus 4 needs a custom 32-bit build), charging off
(``dumpsys battery unplug``, or ``set usb 0``/``set ac 0`` on Android < 6), screen off, airplane mode
(skipped over ADB-over-Wi-Fi, which it would cut), CPU governor/frequency pinned where root allows, and
temperature below the profile's threshold (waiting, with a timeout).  :func:`fingerprint` records what
a measurement ran on: build, kernel, governors, frequencies, temperatures, runner and model hashes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.base import Device, quote_argv
from device.errors import DeviceError, DevicePackageError
from device.files import file_hash
from device.profiles import DeviceProfile

log = logging.getLogger(__name__)

ELF_MACHINES = {40: "armeabi-v7a", 183: "arm64-v8a", 3: "x86", 62: "x86_64"}
ABI_BITS = {"armeabi-v7a": 32, "armeabi": 32, "x86": 32, "arm64-v8a": 64, "x86_64": 64}


@dataclass(frozen=True)
class PreflightOptions:
    """How preflight behaves (loadable from TOML as a table of the same names)."""

    apply: bool = True               # change the phone's state (else only check)
    wait_cool: bool = True           # wait for the phone to cool below the threshold
    max_temp_c: float | None = None  # override the profile's max_start_temp_c
    cool_timeout_s: float | None = None
    cool_poll_s: float = 2.0


@dataclass(frozen=True)
class Check:
    """One preflight check: ``ok``, or a message saying what is wrong (``fatal`` ones stop a run)."""

    name: str
    ok: bool
    message: str
    fatal: bool = True


@dataclass(frozen=True)
class PreflightReport:
    """All checks and the fingerprint of the phone as it will be measured."""

    checks: tuple[Check, ...]
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok or not c.fatal for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.fatal]

    def raise_for_failures(self, device: str) -> None:
        """:class:`DeviceError` listing every fatal failure."""
        if not self.ok:
            raise DeviceError(device, "preflight failed: " + "; ".join(f"{c.name}: {c.message}" for c in self.failures))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.__dict__ for c in self.checks], "fingerprint": self.fingerprint}


# ---------------------------------------------------------------- runner binaries


@dataclass(frozen=True)
class ElfInfo:
    """What the ELF header and notes of a binary say."""

    bits: int
    abi: str
    pie: bool
    api_level: int | None


def inspect_elf(path: Path) -> ElfInfo:
    """ABI, bitness, PIE and the NDK's ``.note.android.ident`` API level of an executable."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF executable")
    bits = {1: 32, 2: 64}.get(data[4])
    if bits is None or data[5] != 1:
        raise ValueError(f"{path}: unsupported ELF class/endianness")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if bits == 32:
        (phoff,) = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
    else:
        (phoff,) = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
    api = None
    for k in range(phnum):
        base = phoff + k * phentsize
        if base + phentsize > len(data):
            break
        if struct.unpack_from("<I", data, base)[0] != 4:  # PT_NOTE
            continue
        if bits == 32:
            off, size = struct.unpack_from("<I", data, base + 4)[0], struct.unpack_from("<I", data, base + 16)[0]
        else:
            off, size = struct.unpack_from("<Q", data, base + 8)[0], struct.unpack_from("<Q", data, base + 32)[0]
        pos, end = off, min(off + size, len(data))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            desc_at = pos + 12 + ((namesz + 3) & ~3)
            if name == b"Android" and ntype == 1 and descsz >= 4:
                api = struct.unpack_from("<I", data, desc_at)[0]
            pos = desc_at + ((descsz + 3) & ~3)
    abi = ELF_MACHINES.get(e_machine, f"machine-{e_machine}")
    return ElfInfo(bits=bits, abi=abi, pie=(e_type == 3), api_level=api)


def runner_problems(profile: DeviceProfile, phone_abis: Sequence[str], phone_api: int,
                    runner_path: Path | None) -> list[str]:
    """Why this runner binary cannot run on this phone (empty when it can)."""
    if profile.runner.builtin:
        return []
    if runner_path is None:
        path_text = profile.runner.binary
        if not path_text:
            return [f"profile {profile.name} names no runner binary: set [runner] binary = PATH in a user profile "
                    f"(an {profile.abi} build of ExecuTorch's executor_runner; see docs/devices.md for the NDK build)"]
        runner_path = Path(path_text).expanduser()
    if not runner_path.is_file():
        return [f"runner binary {runner_path} does not exist"]
    try:
        elf = inspect_elf(runner_path)
    except (ValueError, struct.error) as exc:
        return [str(exc)]
    problems = []
    if elf.abi not in phone_abis:
        if elf.bits == 64 and all(ABI_BITS.get(a, 0) == 32 for a in phone_abis):
            problems.append(
                f"runner {runner_path.name} is a 64-bit {elf.abi} build but the phone is 32-bit only "
                f"({', '.join(phone_abis)}): ExecuTorch's Android runner is arm64; build a 32-bit executor_runner "
                f"with the NDK (-DANDROID_ABI=armeabi-v7a -DANDROID_PLATFORM=android-{phone_api}), see docs/devices.md")
        else:
            problems.append(f"runner {runner_path.name} is built for {elf.abi}; the phone runs {', '.join(phone_abis)}")
    if elf.api_level is not None and elf.api_level > phone_api:
        problems.append(f"runner {runner_path.name} needs Android API {elf.api_level} but the phone has API "
                        f"{phone_api}: rebuild with -DANDROID_PLATFORM=android-{phone_api}")
    if not elf.pie and phone_api >= 21:
        problems.append(f"runner {runner_path.name} is not position-independent; Android 5+ runs only PIE executables")
    return problems


# ---------------------------------------------------------------- phone state helpers


def _sh(device: Device, text: str, timeout_s: float = 30.0):
    return device.shell(text, timeout_s=timeout_s, check=False)


def _battery_powered(text: str) -> dict[str, bool]:
    found = {}
    for key in ("AC", "USB", "Wireless"):
        m = re.search(rf"{key} powered:\s*(true|false)", text)
        if m:
            found[key] = m.group(1) == "true"
    return found


def _battery_fields(text: str) -> dict[str, int]:
    out = {}
    for key in ("level", "voltage", "temperature", "status"):
        m = re.search(rf"^\s*{key}:\s*(-?\d+)", text, re.MULTILINE)
        if m:
            out[key] = int(m.group(1))
    return out


def _screen_on(device: Device) -> bool | None:
    text = _sh(device, "dumpsys power").output
    m = re.search(r"mWakefulness=(\w+)", text)
    if m:
        return m.group(1) == "Awake"
    m = re.search(r"Display Power: state=(\w+)", text)
    return (m.group(1) == "ON") if m else None


def _root_prefix(device: Device) -> str | None:
    """'' when the shell is root, 'su -c' style wrapper marker 'su' when su works, None without root."""
    if "uid=0(" in _sh(device, "id").output:
        return ""
    if "uid=0(" in _sh(device, "su -c id").output:
        return "su"
    return None


def _as_root(prefix: str, text: str) -> str:
    return text if prefix == "" else quote_argv(["su", "-c", text])


def _read(device: Device, path: str) -> str | None:
    res = device.run(["cat", path], check=False, timeout_s=30)
    return res.output.strip() if res.ok else None


def read_temperatures_c(device: Device, zones: Sequence[str]) -> dict[str, float]:
    """Temperatures of the thermal zones in degrees C (millidegree files are converted)."""
    temps = {}
    for z in zones:
        raw = _read(device, f"/sys/class/thermal/{z}/temp")
        try:
            v = float(raw) if raw is not None else None
        except ValueError:
            v = None
        if v is not None:
            temps[z] = v / 1000.0 if abs(v) >= 200 else v
    return temps


def _online_cpus(device: Device, count: int) -> list[int]:
    text = _read(device, "/sys/devices/system/cpu/online") or f"0-{count - 1}"
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            cpus += range(int(a), int(b) + 1)
        elif part.strip().isdigit():
            cpus.append(int(part))
    return [c for c in cpus if c < count] or list(range(count))


def _over_wifi(device: Device) -> bool:
    if getattr(device, "kind", "") != "tcp":
        return False
    host = getattr(device, "host", "")
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host not in ("localhost",)


# ---------------------------------------------------------------- the checks


def preflight(device: Device, profile: DeviceProfile, runner_path: Path | None = None,
              model_paths: Sequence[Path] = (), options: PreflightOptions | None = None) -> PreflightReport:
    """Prepare the phone as the profile says, check every condition, and fingerprint it."""
    opts = options or PreflightOptions()
    checks: list[Check] = []
    props = device.properties()
    api = int(props.get("ro.build.version.sdk", "0") or 0)
    abis = [a for a in (props.get("ro.product.cpu.abilist") or props.get("ro.product.cpu.abi", "")).split(",") if a]

    # ABI / API / runner
    problems = []
    if profile.abi not in abis:
        problems.append(f"the phone reports ABI {', '.join(abis) or '?'} but profile {profile.name} says "
                        f"{profile.abi}: wrong profile?")
    problems += runner_problems(profile, abis, api, runner_path)
    checks.append(Check("abi_api", not problems, "; ".join(problems) or
                        f"{abis[0] if abis else '?'} / API {api}: runner fits"))
    if api != profile.api_level:
        checks.append(Check("api_level", False, f"phone has API {api}, profile {profile.name} says "
                            f"{profile.api_level}", fatal=False))

    steps = set(profile.prepare)
    # charging off
    if "battery_unplug" in steps:
        if opts.apply:
            if api >= 23:
                _sh(device, "dumpsys battery unplug")
            else:
                _sh(device, "dumpsys battery set usb 0; dumpsys battery set ac 0; dumpsys battery set wireless 0")
        powered = _battery_powered(_sh(device, "dumpsys battery").output)
        on = [k for k, v in powered.items() if v]
        how = "dumpsys battery unplug" if api >= 23 else "dumpsys battery set usb 0 / set ac 0"
        checks.append(Check("charging_off", bool(powered) and not on,
                            f"still charging ({', '.join(on)} powered) after '{how}'" if on else
                            ("cannot read 'dumpsys battery'" if not powered else "charging off")))

    # screen off
    if "screen_off" in steps:
        if opts.apply and _screen_on(device):
            _sh(device, "input keyevent 223" if api >= 20 else "input keyevent 26")
            if _screen_on(device):  # KEYCODE_SLEEP unsupported: toggle power
                _sh(device, "input keyevent 26")
        state = _screen_on(device)
        checks.append(Check("screen_off", state is False, "screen off" if state is False else
                            ("screen still on after 'input keyevent'" if state else "cannot read 'dumpsys power'")))

    # airplane mode
    if "airplane_on" in steps:
        if _over_wifi(device):
            checks.append(Check("airplane_on", False, "skipped: airplane mode would cut ADB over Wi-Fi",
                                fatal=False))
        else:
            if opts.apply:
                _sh(device, "settings put global airplane_mode_on 1")
                if api >= 30:
                    _sh(device, "cmd connectivity airplane-mode enable")
                else:
                    _sh(device, "am broadcast -a android.intent.action.AIRPLANE_MODE --ez state true")
            value = _sh(device, "settings get global airplane_mode_on").output.strip()
            checks.append(Check("airplane_on", value == "1", "airplane mode on" if value == "1" else
                                f"airplane mode is off (settings says {value!r})"))

    # governor / frequency
    if "governor_pin" in steps and profile.governor:
        checks.append(_pin_governor(device, profile, opts))

    # temperature
    if "cool_down" in steps and profile.thermal_zones:
        checks.append(_cool_down(device, profile, opts))

    fp = fingerprint(device, profile, runner_path, model_paths, props=props)
    return PreflightReport(tuple(checks), fp)


def _pin_governor(device: Device, profile: DeviceProfile, opts: PreflightOptions) -> Check:
    root = _root_prefix(device)
    cpus = _online_cpus(device, profile.cpu_count)
    base = "/sys/devices/system/cpu/cpu{}/cpufreq/"
    if root is None:
        govs = {_read(device, base.format(c) + "scaling_governor") for c in cpus}
        return Check("governor_pinned", False, f"no root: governor left as {', '.join(sorted(g or '?' for g in govs))} "
                     "(recorded in the fingerprint)", fatal=False)
    wrong = []
    for c in cpus:
        d = base.format(c)
        if opts.apply:
            gov, q = shlex.quote(profile.governor), shlex.quote
            _sh(device, _as_root(root, f"echo {gov} > {q(d + 'scaling_governor')}"))
            if profile.pin_freq_khz:
                f = int(profile.pin_freq_khz)
                _sh(device, _as_root(root, f"echo {f} > {q(d + 'scaling_max_freq')}; "
                                           f"echo {f} > {q(d + 'scaling_min_freq')}"))
        gov = _read(device, d + "scaling_governor")
        if gov != profile.governor:
            wrong.append(f"cpu{c} governor {gov!r}")
        if profile.pin_freq_khz:
            lo, hi = _read(device, d + "scaling_min_freq"), _read(device, d + "scaling_max_freq")
            if lo != str(profile.pin_freq_khz) or hi != str(profile.pin_freq_khz):
                wrong.append(f"cpu{c} frequency {lo}..{hi} kHz")
    msg = (f"{profile.governor}" + (f" at {profile.pin_freq_khz} kHz" if profile.pin_freq_khz else "")
           + f" on cpus {','.join(map(str, cpus))}")
    return Check("governor_pinned", not wrong, msg if not wrong else
                 f"could not pin {msg}: {'; '.join(wrong)}")


def _cool_down(device: Device, profile: DeviceProfile, opts: PreflightOptions) -> Check:
    limit = opts.max_temp_c if opts.max_temp_c is not None else profile.max_start_temp_c
    timeout = opts.cool_timeout_s if opts.cool_timeout_s is not None else profile.cool_down_timeout_s
    t0 = time.monotonic()
    while True:
        temps = read_temperatures_c(device, profile.thermal_zones)
        if not temps:
            return Check("temperature", False, f"cannot read any of the thermal zones {', '.join(profile.thermal_zones)}")
        zone, hottest = max(temps.items(), key=lambda kv: kv[1])
        waited = time.monotonic() - t0
        if hottest <= limit:
            return Check("temperature", True, f"{hottest:.1f} C <= {limit:g} C" + (f" after {waited:.0f} s" if waited > 1 else ""))
        if not opts.wait_cool or waited >= timeout:
            return Check("temperature", False, f"{hottest:.1f} C ({zone}) above {limit:g} C after waiting {waited:.0f} s")
        time.sleep(min(opts.cool_poll_s, max(0.05, timeout - waited)))


def fingerprint(device: Device, profile: DeviceProfile, runner_path: Path | None = None,
                model_paths: Sequence[Path] = (), props: dict[str, str] | None = None) -> dict[str, Any]:
    """What a measurement runs on: build, kernel, CPU state, temperatures, battery, runner/model hashes."""
    props = props if props is not None else device.properties()
    cpus = list(range(profile.cpu_count))
    base = "/sys/devices/system/cpu/cpu{}/cpufreq/"
    governors, freqs = [], []
    for c in cpus:
        governors.append(_read(device, base.format(c) + "scaling_governor"))
        f = _read(device, base.format(c) + "scaling_cur_freq")
        freqs.append(int(f) if f and f.isdigit() else None)
    battery_text = _sh(device, "dumpsys battery").output
    kernel = _read(device, "/proc/version") or ""
    runner: dict[str, Any]
    if profile.runner.builtin:
        runner = {"builtin": True, "remote_path": profile.runner.remote_path, "sha256": None}
    else:
        rp = runner_path or (Path(profile.runner.binary).expanduser() if profile.runner.binary else None)
        runner = {"builtin": False, "path": str(rp) if rp else None,
                  "sha256": file_hash(rp) if rp and rp.is_file() else None}
    try:
        temps = read_temperatures_c(device, profile.thermal_zones)
    except DevicePackageError:
        temps = {}
    return {
        "schema_version": 1,
        "time_unix_s": time.time(),
        "device": device.name,
        "profile": profile.name,
        "virtual": profile.virtual,
        "serial": props.get("ro.serialno", ""),
        "model": props.get("ro.product.model", ""),
        "build_fingerprint": props.get("ro.build.fingerprint", ""),
        "api_level": int(props.get("ro.build.version.sdk", "0") or 0),
        "abi": props.get("ro.product.cpu.abi", ""),
        "kernel": kernel,
        "governors": governors,
        "cur_freq_khz": freqs,
        "temperatures_c": temps,
        "battery": {**_battery_fields(battery_text), **{f"{k.lower()}_powered": v for k, v in _battery_powered(battery_text).items()}},
        "runner": runner,
        "models_sha256": {Path(p).name: file_hash(Path(p)) for p in model_paths},
    }

"""The virtual phone's state: profile, properties, battery/screen/settings, sandbox, keys, faults."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.profiles import DeviceProfile
from device.virtual_phone.protocol import ProtocolError, decode_android_pubkey
from device.virtual_phone.sandbox import Sandbox
from device.virtual_phone.timeline import FILE_NAME, BusyTimeline

log = logging.getLogger(__name__)

#: background jobs (``cmd &``) one phone runs at once; more answer "can't fork"
MAX_BACKGROUND_JOBS = 32
RUNNER_MARKER = b"#!virtual executor_runner (built into the harness virtual phone)\n"
KEYS_FILE = "adb_keys"
IDLE_TEMP_MC = 31000


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject (for tests).

    ``drop_after_bytes``: close the link once a connection has received this many bytes (mid-push);
    ``drop_mid_run_s``: close every link this long after ``executor_runner`` starts (the run goes on);
    ``delay_s``: wait before every packet the phone sends; ``refuse_auth``: refuse every key;
    ``drops``: how many times the drop faults fire before the phone behaves again;
    ``corrupt_push``: flip one byte of every file received over sync (bad flash, same size).
    """

    drop_after_bytes: int | None = None
    drop_mid_run_s: float | None = None
    delay_s: float = 0.0
    refuse_auth: bool = False
    drops: int = 1
    corrupt_push: bool = False


class PhoneState:
    """Everything the shell and the ADB services of one virtual phone share."""

    def __init__(self, profile: DeviceProfile, root: Path, accept_new_keys: bool = False,
                 serial: str | None = None):
        self.profile = profile
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.accept_new_keys = accept_new_keys
        self.serial = serial or f"virtual-{os.getpid()}"
        self.props = self._default_props()
        self.root_user = self.props.get("service.adb.root") == "1"
        self.sandbox = Sandbox(self.root / "fs", self.root_user)
        self.timeline = BusyTimeline(self.root / FILE_NAME)
        self.faults = FaultConfig()
        self.drops_done = 0
        self.lock = threading.RLock()
        self.jobs = threading.BoundedSemaphore(MAX_BACKGROUND_JOBS)
        self.boot_time_mono_s = time.monotonic()
        self.rebooting_until_mono_s = 0.0
        self.on_drop_all = None  # set by the server: closes every live connection
        self._reset_runtime_state()
        self._seed_files()

    # ------------------------------------------------------------ properties and state
    def _default_props(self) -> dict[str, str]:
        p = self.profile
        abilist = {"armeabi-v7a": "armeabi-v7a,armeabi", "arm64-v8a": "arm64-v8a,armeabi-v7a,armeabi",
                   "x86": "x86", "x86_64": "x86_64,x86"}[p.abi]
        props = {
            "ro.build.version.sdk": str(p.api_level),
            "ro.build.version.release": p.android_release or "5.1.1",
            "ro.product.cpu.abi": p.abi,
            "ro.product.cpu.abilist": abilist,
            "ro.product.model": "Virtual Phone",
            "ro.product.device": "virtual",
            "ro.product.name": "virtual",
            "ro.product.manufacturer": "harness",
            "ro.build.type": "userdebug",
            "ro.build.fingerprint": f"harness/virtual/virtual:{p.android_release}/VIRTUAL/1:userdebug/test-keys",
            "ro.hardware": "virtual",
            "ro.debuggable": "1",
            "ro.serialno": self.serial,
            "sys.boot_completed": "1",
            "init.svc.adbd": "running",
        }
        props.update(p.props)
        props["ro.serialno"] = self.serial
        return props

    def _reset_runtime_state(self) -> None:
        self.battery = {"ac": False, "usb": True, "wireless": False, "unplugged": False,
                        "level": 85, "voltage_mv": 4123, "temperature_dc": 280}
        self.screen_on = True
        self.settings = getattr(self, "settings", None) or {
            ("global", "airplane_mode_on"): "0",
            ("global", "stay_on_while_plugged_in"): "0",
            ("system", "screen_brightness"): "102",
            ("system", "screen_off_timeout"): "60000",
        }

    def _seed_files(self) -> None:
        sb, p = self.sandbox, self.profile
        for d in ("/data/local/tmp", "/sdcard", "/system/bin", "/dev"):
            sb.host_path(d).mkdir(parents=True, exist_ok=True)
        for k, zone in enumerate(p.thermal_zones):
            sb.write_text(f"/sys/class/thermal/{zone}/temp", f"{IDLE_TEMP_MC}\n")
            sb.write_text(f"/sys/class/thermal/{zone}/type", f"tsens_tz_sensor{k}\n")
        max_khz = p.pin_freq_khz or 1512000
        freqs = sorted({max_khz // 4, max_khz // 2, (3 * max_khz) // 4, max_khz})
        for c in range(p.cpu_count):
            base = f"/sys/devices/system/cpu/cpu{c}/cpufreq"
            for name, value in (("scaling_governor", "interactive"), ("scaling_cur_freq", freqs[1]),
                                ("scaling_min_freq", freqs[0]), ("scaling_max_freq", max_khz),
                                ("cpuinfo_max_freq", max_khz), ("cpuinfo_min_freq", freqs[0]),
                                ("scaling_available_frequencies", " ".join(map(str, freqs))),
                                ("scaling_available_governors", "interactive ondemand userspace powersave performance")):
                sb.write_text(f"{base}/{name}", f"{value}\n")
        sb.write_text("/sys/devices/system/cpu/online", f"0-{p.cpu_count - 1}\n")
        sb.write_text("/sys/devices/system/cpu/possible", f"0-{p.cpu_count - 1}\n")
        sb.write_text("/proc/version", "Linux version 3.4.0-virtual (harness@virtual) (gcc version 4.8) "
                      "#1 SMP PREEMPT Sun Nov 22 00:00:00 UTC 2026\n")
        sb.write_text("/proc/cpuinfo", "".join(f"processor\t: {c}\nBogoMIPS\t: 13.53\n\n" for c in range(p.cpu_count)))
        sb.write_text("/sys/class/power_supply/battery/present", "1\n")
        sb.write_text("/sys/class/power_supply/battery/technology", "Li-ion\n")
        self.sync_power_supply_files()
        if p.runner.builtin:
            host = sb.host_path(p.runner.remote_path)
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(RUNNER_MARKER)
            host.chmod(0o755)

    def sync_power_supply_files(self) -> None:
        """Rewrite the power-supply sysfs files from the battery state."""
        b, sb = self.battery, self.sandbox
        charging = (b["ac"] or b["usb"] or b["wireless"]) and not b["unplugged"]
        sb.write_text("/sys/class/power_supply/battery/status", "Charging\n" if charging else "Discharging\n")
        sb.write_text("/sys/class/power_supply/battery/capacity", f"{b['level']}\n")
        sb.write_text("/sys/class/power_supply/battery/voltage_now", f"{b['voltage_mv'] * 1000}\n")
        sb.write_text("/sys/class/power_supply/battery/current_now", f"{-350000 if charging else 120000}\n")
        sb.write_text("/sys/class/power_supply/battery/temp", f"{b['temperature_dc']}\n")
        sb.write_text("/sys/class/power_supply/usb/online", f"{int(b['usb'] and not b['unplugged'])}\n")

    def file_written(self, path: str) -> None:
        """React to a shell write: cpufreq knobs move ``scaling_cur_freq`` as a kernel would."""
        folder, _, name = path.rpartition("/")
        if not folder.endswith("/cpufreq") or name not in ("scaling_governor", "scaling_min_freq", "scaling_max_freq"):
            return
        sb = self.sandbox
        try:
            gov = sb.host_path(f"{folder}/scaling_governor").read_text().strip()
            lo = int(sb.host_path(f"{folder}/scaling_min_freq").read_text().strip())
            hi = int(sb.host_path(f"{folder}/scaling_max_freq").read_text().strip())
        except (OSError, ValueError):
            return
        cur = hi if gov == "performance" else (lo if gov == "powersave" else max(lo, min(hi, (lo + hi) // 2)))
        sb.write_text(f"{folder}/scaling_cur_freq", f"{cur}\n")

    def uptime_s(self) -> float:
        return time.monotonic() - self.boot_time_mono_s

    def reboot(self, duration_s: float = 1.0) -> None:
        """Drop every link, be unreachable for ``duration_s``, and come back with fresh runtime state."""
        with self.lock:
            self.rebooting_until_mono_s = time.monotonic() + duration_s
            self.boot_time_mono_s = self.rebooting_until_mono_s
            self._reset_runtime_state()
            self.sync_power_supply_files()
        if self.on_drop_all:
            self.on_drop_all()

    # ------------------------------------------------------------ faults
    def take_drop(self) -> bool:
        """Consume one allowed drop; False once ``faults.drops`` drops happened."""
        with self.lock:
            if self.drops_done >= self.faults.drops:
                return False
            self.drops_done += 1
            return True

    def set_faults(self, faults: FaultConfig) -> None:
        """Install a new fault configuration and reset the drop counter."""
        with self.lock:
            self.faults = faults
            self.drops_done = 0

    # ------------------------------------------------------------ keys (like /data/misc/adb/adb_keys)
    @property
    def keys_path(self) -> Path:
        return self.root / KEYS_FILE

    def known_keys(self) -> list[tuple[int, int]]:
        """Public keys accepted so far."""
        if not self.keys_path.exists():
            return []
        keys = []
        for line in self.keys_path.read_text().splitlines():
            if line.strip():
                try:
                    keys.append(decode_android_pubkey(line))
                except ProtocolError:
                    log.warning("ignoring a malformed line in %s", self.keys_path)
        return keys

    def remember_key(self, pubkey_line: str) -> None:
        """Append an accepted key (``base64 user@host``) to the keys file (mode 0600)."""
        decode_android_pubkey(pubkey_line)
        line = pubkey_line.strip().strip("\x00").strip()
        with self.lock:
            existing = self.keys_path.read_text().splitlines() if self.keys_path.exists() else []
            if line.split()[0] in {ln.split()[0] for ln in existing if ln.strip()}:
                return
            fd = os.open(self.keys_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line + "\n")

    def authorize_key_file(self, pub_path: Path) -> None:
        """Pre-authorise a host key (``adbkey.pub``), as if its dialog had been accepted."""
        self.remember_key(Path(pub_path).read_text())


def pubkey_line_ok(line: str) -> bool:
    """True when ``line`` is a decodable ``adbkey.pub`` line."""
    try:
        base64.b64decode(line.split()[0], validate=True)
        decode_android_pubkey(line)
        return True
    except (ProtocolError, ValueError, IndexError):
        return False

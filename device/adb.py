"""Phones over ADB, on the ``adb-shell`` package (the only module that imports it).

``connect("192.168.1.7:5555")`` (TCP, as after ``adb tcpip 5555``) or ``connect("0123456789ABCDEF")``
(USB serial) returns an :class:`AdbDevice`.  Keys: ``~/.android/adbkey`` (created with mode 0600 when
missing) or ``key_path``.  Transport errors are retried a bounded number of times with a reconnect;
``adb-shell`` has only shell protocol v1, so :meth:`AdbDevice.shell` appends an exit-status sentinel.
"""

from __future__ import annotations

import base64
import logging
import os
import select
import shlex
import socket
import stat as stat_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from adb_shell import exceptions as adb_exc
from adb_shell.adb_device import AdbDevice as _AdbShellDevice
from adb_shell.auth.keygen import encode_pubkey, keygen, write_public_keyfile
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.transport.tcp_transport import TcpTransport

from device.base import Device, RemoteStat, ShellResult
from device.errors import CommandError, DeviceError, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_KEY_PATH = Path.home() / ".android" / "adbkey"
SENTINEL = "__HARNESS_EXIT_STATUS__"
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, adb_exc.TcpTimeoutException, adb_exc.AdbConnectionError, adb_exc.InvalidChecksumError,
    adb_exc.InvalidCommandError, adb_exc.InvalidResponseError, adb_exc.UsbReadFailedError,
    adb_exc.UsbWriteFailedError, adb_exc.AdbTimeoutError,
)
USB_BUSY_HINT = ("the USB device is busy: a running adb server holds it. Stop it with `adb kill-server` "
                 "(and keep it stopped while the harness runs), or use ADB over Wi-Fi")


@dataclass(frozen=True)
class AdbOptions:
    """How to reach a phone: keys, timeouts, retries.  Loadable from a TOML table."""

    key_path: str = ""
    connect_timeout_s: float = 10.0
    auth_timeout_s: float = 30.0
    transport_timeout_s: float = 10.0
    retries: int = 3
    retry_backoff_s: float = 0.5


def ensure_adb_key(path: Path | str | None = None) -> Path:
    """The private key path, creating the key pair (mode 0600) when missing."""
    key = Path(path).expanduser() if path else DEFAULT_KEY_PATH
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        old = os.umask(0o077)
        try:
            keygen(str(key))
        finally:
            os.umask(old)
        os.chmod(key, 0o600)
        log.info("created ADB key %s", key)
    else:
        mode = stat_mod.S_IMODE(key.stat().st_mode)
        if mode & 0o077:
            log.warning("ADB key %s is readable by others (mode %o); setting 0600", key, mode)
            os.chmod(key, 0o600)
    pub = Path(str(key) + ".pub")
    if not pub.exists():
        write_public_keyfile(str(key), str(pub))
    return key


def vendor_key_paths(env: dict[str, str] | None = None) -> list[Path]:
    """Private keys named by ``$ADB_VENDOR_KEYS``, as adb reads it: colon-separated files, or directories
    whose ``*.adbkey`` files are all used.  A missing entry is one clear :class:`InputError`."""
    env = os.environ if env is None else env
    out: list[Path] = []
    for part in env.get("ADB_VENDOR_KEYS", "").split(":"):
        if not part.strip():
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.name.endswith(".adbkey") and p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise InputError(f"ADB_VENDOR_KEYS: {part!r} is neither a key file nor a directory")
    return out


def _load_signer(path: Path) -> PythonRSASigner:
    """A signer for a vendor key; its public half is derived in memory when ``KEY.pub`` is absent."""
    try:
        pub_path = Path(f"{path}.pub")
        if pub_path.is_file():
            return PythonRSASigner.FromRSAKeyPath(str(path))
        pub = base64.b64encode(encode_pubkey(str(path))).decode() + " harness@vendor-key"
        return PythonRSASigner(pub, path.read_text())
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise InputError(f"ADB_VENDOR_KEYS: cannot read the ADB key {path}: {exc}") from None


class _Transport(TcpTransport):
    """adb-shell's TCP transport with TCP_NODELAY, complete writes and EOF detection.

    Without TCP_NODELAY a header+payload write waits on the peer's delayed ACK (~40-90 ms per round trip).
    """

    def connect(self, transport_timeout_s):
        super().connect(transport_timeout_s)
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bulk_read(self, numbytes, transport_timeout_s):
        data = super().bulk_read(numbytes, transport_timeout_s)
        if not data:
            raise ConnectionResetError("the device closed the connection")
        return data

    def bulk_write(self, data, transport_timeout_s):
        view = memoryview(data)
        deadline = time.monotonic() + (transport_timeout_s or 3600)
        while view:
            left = deadline - time.monotonic()
            _, writable, _ = select.select([], [self._connection], [], max(left, 0))
            if not writable:
                raise adb_exc.TcpTimeoutException(f"sending to {self._host}:{self._port} timed out")
            n = self._connection.send(view)
            view = view[n:]
        return len(data)


def parse_shell_output(name: str, command: str, raw: bytes, duration_s: float, check: bool) -> ShellResult:
    """The :class:`ShellResult` of a command run as ``sh -c CMD; echo SENTINEL$?`` (shell protocol v1)."""
    text = bytes(raw).decode("utf-8", "replace").replace("\r\n", "\n")
    output, sep, status = text.rpartition(SENTINEL)
    if not sep:
        raise DeviceError(name, f"command {command!r}: no exit status (link dropped?); output: {text[-200:]!r}")
    try:
        code = int(status.strip())
    except ValueError:
        raise DeviceError(name, f"command {command!r}: unreadable exit status {status!r}") from None
    result = ShellResult(command, output, code, duration_s)
    if check and code != 0:
        raise CommandError(name, command, output, code)
    return result


def describe_device(dev: Device, transport: str) -> dict[str, Any]:
    """Model, ABI, Android level and serial of a connected phone, for listings."""
    props = dev.properties()
    return {"address": dev.name, "transport": transport, "state": "device",
            "model": props.get("ro.product.model", ""), "device": props.get("ro.product.device", ""),
            "serial": props.get("ro.serialno", ""), "abi": props.get("ro.product.cpu.abi", ""),
            "api_level": int(props.get("ro.build.version.sdk", "0") or 0),
            "release": props.get("ro.build.version.release", "")}


def parse_address(address: str) -> tuple[str, str, int]:
    """``("tcp", host, port)`` for ``host:port``, ``("usb", serial, 0)`` otherwise."""
    address = address.strip()
    if not address:
        raise InputError("empty device address; give host:port (ADB over TCP) or a USB serial")
    if ":" in address:
        host, _, port = address.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise InputError(f"bad device address {address!r}; expected host:port, e.g. 192.168.1.7:5555")
        return "tcp", host.strip("[]"), int(port)
    return "usb", address, 0


class AdbDevice(Device):
    """A phone over ADB (TCP or USB) through ``adb-shell``."""

    def __init__(self, address: str, options: AdbOptions | None = None):
        self.options = options or AdbOptions()
        self.kind, self.host, self.port = parse_address(address)
        self.name = address
        self._key = ensure_adb_key(self.options.key_path or None)
        self._signers = [PythonRSASigner.FromRSAKeyPath(str(self._key))]
        for extra in vendor_key_paths():
            if extra.resolve() != self._key.resolve():
                self._signers.append(_load_signer(extra))
        self._dev: _AdbShellDevice | None = None

    # ------------------------------------------------------------ connection
    def _new_device(self) -> _AdbShellDevice:
        if self.kind == "tcp":
            return _AdbShellDevice(_Transport(self.host, self.port),
                                   default_transport_timeout_s=self.options.transport_timeout_s)
        from adb_shell.adb_device import AdbDeviceUsb

        return AdbDeviceUsb(serial=self.host, default_transport_timeout_s=self.options.transport_timeout_s)

    def connect(self) -> AdbDevice:
        """(Re)connect with bounded retries; clear errors for refused keys and a busy USB device."""
        self._drop()
        last: BaseException | None = None
        for attempt in range(1, self.options.retries + 2):
            pubkey_sent = []
            dev = None
            try:
                dev = self._new_device()
                dev.connect(rsa_keys=self._signers, transport_timeout_s=self.options.connect_timeout_s,
                            auth_timeout_s=self.options.auth_timeout_s,
                            read_timeout_s=self.options.connect_timeout_s,
                            auth_callback=lambda _d, sent=pubkey_sent: sent.append(True))
                self._dev = dev
                return self
            except adb_exc.DeviceAuthError as exc:
                raise DeviceError(self.name, f"ADB authentication failed: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - classified below
                if dev is not None:
                    try:
                        dev.close()
                    except Exception:  # noqa: BLE001
                        pass
                text = f"{type(exc).__name__}: {exc}"
                if "BUSY" in text.upper() or "claim" in text.lower():
                    raise DeviceError(self.name, USB_BUSY_HINT) from None
                if isinstance(exc, adb_exc.UsbDeviceNotFoundError):
                    raise DeviceError(self.name, "no USB device with this serial (check the cable, the udev "
                                      "rule and `lsusb`)") from None
                if pubkey_sent:
                    raise DeviceError(self.name, f"the phone refused our ADB key {self._key}.pub (unauthorized): "
                                      "accept the 'Allow USB debugging' dialog on the phone, or start the "
                                      "virtual phone with --accept-new-keys") from None
                if not isinstance(exc, _TRANSPORT_ERRORS):
                    raise
                last = exc
                log.info("%s: connect attempt %d failed: %s", self.name, attempt, text)
                if attempt <= self.options.retries:
                    time.sleep(self.options.retry_backoff_s * attempt)
        raise DeviceError(self.name, f"cannot connect after {self.options.retries + 1} attempts: "
                          f"{type(last).__name__}: {last}")

    def _drop(self) -> None:
        if self._dev is not None:
            try:
                self._dev.close()
            except Exception:  # noqa: BLE001 - closing a dead link
                pass
            self._dev = None

    def close(self) -> None:
        self._drop()

    def _call(self, what: str, fn: Callable[[_AdbShellDevice], T], retry: bool = True,
              timeout_s: float | None = None) -> T:
        """Run ``fn`` on a live link; on transport errors reconnect and retry (bounded).

        With ``timeout_s``, a read that times out after that long is final (the command is slow,
        not the link): it raises "timed out" without retrying.
        """
        attempts = self.options.retries + 1 if retry else 1
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            if self._dev is None:
                self.connect()
            t0 = time.monotonic()
            try:
                return fn(self._dev)  # type: ignore[arg-type]
            except _TRANSPORT_ERRORS as exc:
                last = exc
                self._drop()
                timed_out = isinstance(exc, adb_exc.TcpTimeoutException | adb_exc.AdbTimeoutError)
                if timeout_s is not None and timed_out and time.monotonic() - t0 >= 0.9 * timeout_s:
                    raise DeviceError(self.name, f"{what} timed out after {timeout_s:g} s") from None
                log.info("%s: %s failed (attempt %d/%d): %s: %s", self.name, what, attempt, attempts,
                         type(exc).__name__, exc)
                if attempt < attempts:
                    time.sleep(self.options.retry_backoff_s * attempt)
        raise DeviceError(self.name, f"{what} failed after {attempts} attempt(s): {type(last).__name__}: {last}")

    # ------------------------------------------------------------ Device
    def shell(self, command: str, timeout_s: float = 60.0, check: bool = True, retry: bool = True) -> ShellResult:
        wrapped = f"sh -c {shlex.quote(command)}; echo {SENTINEL}$?"
        t0 = time.monotonic()
        raw = self._call(f"command {command!r}", lambda d: d.shell(
            wrapped, transport_timeout_s=timeout_s, read_timeout_s=timeout_s, timeout_s=timeout_s, decode=False),
            retry=retry, timeout_s=timeout_s)
        return parse_shell_output(self.name, command, raw, time.monotonic() - t0, check)

    def push(self, local: Path | str, remote: str, mode: int = 0o644, timeout_s: float = 120.0) -> None:
        local = Path(local)
        if not local.is_file():
            raise InputError(f"cannot push {local}: not a file")
        try:
            self._call(f"push {local.name} -> {remote}", lambda d: d.push(
                str(local), remote, st_mode=stat_mod.S_IFREG | mode, mtime=int(local.stat().st_mtime),
                transport_timeout_s=self.options.transport_timeout_s, read_timeout_s=timeout_s))
        except (adb_exc.PushFailedError, adb_exc.AdbCommandFailureException) as exc:
            raise DeviceError(self.name, f"push {local.name} -> {remote}: {exc}") from None

    def pull(self, remote: str, local: Path | str, timeout_s: float = 120.0) -> None:
        local = Path(local)
        tmp = local.with_name(f".{local.name}.pull{os.getpid()}")

        def do(d: _AdbShellDevice) -> None:
            d.pull(remote, str(tmp), transport_timeout_s=self.options.transport_timeout_s, read_timeout_s=timeout_s)

        try:
            self._call(f"pull {remote}", do)
            os.replace(tmp, local)
        except adb_exc.AdbCommandFailureException as exc:
            raise DeviceError(self.name, f"pull {remote}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def stat(self, remote: str) -> RemoteStat:
        mode, size, mtime = self._call(f"stat {remote}", lambda d: d.stat(
            remote, transport_timeout_s=self.options.transport_timeout_s))
        return RemoteStat(int(mode), int(size), int(mtime))

    def reboot_and_wait(self, timeout_s: float = 180.0) -> float:
        t0 = time.monotonic()
        try:
            self._call("reboot", lambda d: d.reboot(transport_timeout_s=self.options.transport_timeout_s,
                                                    read_timeout_s=5, timeout_s=5), retry=False)
        except DeviceError:
            pass  # the link often dies before the reply
        self._drop()
        time.sleep(0.2)
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            try:
                self.connect()
                if self.getprop("sys.boot_completed") == "1":
                    return time.monotonic() - t0
            except DeviceError:
                pass
            time.sleep(0.5)
        raise DeviceError(self.name, f"did not come back within {timeout_s:g} s after reboot")

    def describe(self) -> dict[str, Any]:
        """Model, ABI, Android level and serial, for listings."""
        return describe_device(self, self.kind)


def connect(address: str, options: AdbOptions | None = None) -> AdbDevice:
    """A connected :class:`AdbDevice` for ``host:port`` or a USB serial."""
    return AdbDevice(address, options).connect()


def usb_adb_serials() -> list[dict[str, str]]:
    """ADB-capable USB devices (interface class ff/42/01) with their serials, via ``libusb``.

    Devices whose serial cannot be read (no udev permission) are listed with ``state: no permissions``.
    """
    try:
        import usb1
    except ImportError:  # pragma: no cover
        return []
    found = []
    try:
        with usb1.USBContext() as ctx:
            for dev in ctx.getDeviceIterator(skip_on_error=True):
                try:
                    is_adb = any(s.getClass() == 0xFF and s.getSubClass() == 0x42 and s.getProtocol() == 0x01
                                 for cfg in dev for iface in cfg for s in iface)
                except usb1.USBError:
                    continue
                if not is_adb:
                    continue
                vid_pid = f"{dev.getVendorID():04x}:{dev.getProductID():04x}"
                try:
                    serial = dev.getSerialNumber() or ""
                    state = "device"
                except usb1.USBError:
                    serial, state = "", "no permissions (see the udev rule in docs/devices.md)"
                found.append({"address": serial or vid_pid, "transport": "usb", "state": state, "usb_id": vid_pid})
    except usb1.USBError as exc:
        log.info("cannot scan USB: %s", exc)
    return found


def start_virtual(root: Path | str, profile: str = "virtual-nexus4", options: AdbOptions | None = None,
                  port: int = 0):
    """Start a virtual phone on a free 127.0.0.1 port that knows this harness's key, and connect to it.

    Returns ``(phone, device)``; stop with ``device.close(); phone.stop()`` (what ``harness run --device
    virtual`` does around a run).
    """
    from device.virtual_phone import VirtualPhone

    options = options or AdbOptions()
    key = ensure_adb_key(options.key_path or None)
    phone = VirtualPhone(root, profile=profile, port=port, authorized_keys=(f"{key}.pub",)).start()
    try:
        return phone, connect(phone.address, options)
    except BaseException:
        phone.stop()
        raise

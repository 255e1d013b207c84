"""The errors of the ``device`` package (phones, hosts, power monitors, the virtual lab).

The package owns them; ``harness.errors`` maps each family to an exit code in one table.  Device
errors carry the device; command errors carry the command, its output and its exit code (as
Mobly's ``AdbError``).
"""

from __future__ import annotations


class DevicePackageError(Exception):
    """Root of every error the ``device`` package raises on purpose."""


class InputError(DevicePackageError):
    """Bad input handed to the package: names, flags, files (the user can fix it)."""


class UsageError(InputError):
    """Options that cannot be used together or are out of range."""


class DataError(InputError):
    """A file (trace, profile, power model) that is missing, corrupt or of the wrong kind."""


class DeviceError(DevicePackageError):
    """A device (phone, host, monitor) failed."""

    def __init__(self, device: str, message: str):
        super().__init__(f"{device}: {message}")
        self.device = device


class CommandError(DeviceError):
    """A command on a device exited non-zero or could not be run."""

    def __init__(self, device: str, command: str, output: str, exit_code: int | None):
        tail = output.strip().splitlines()[-1] if output.strip() else ""
        msg = f"command {command!r} exited {exit_code}" + (f": {tail}" if tail else "")
        super().__init__(device, msg)
        self.command = command
        self.output = output
        self.exit_code_device = exit_code


class MeasurementError(DevicePackageError):
    """A measurement that cannot be trusted (monitor lost, window misuse)."""


def short_repr(value: object, limit: int = 80) -> str:
    """``value`` quoted for a one-line error, cut to ``limit`` characters (a 50 MB line is not echoed whole)."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit] + "...") if len(text) > limit else repr(text)

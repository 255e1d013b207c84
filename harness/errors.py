"""The one root exception of the project and its few families.

Exit codes: :class:`InputError` (bad flags, bad files, bad names) exits 2; any other
:class:`HarnessError` exits 1.  Device errors carry the device; command errors carry the
command, its output and its exit code (as Mobly's ``AdbError``).
"""

from __future__ import annotations


class HarnessError(Exception):
    """Root of every error the project raises on purpose."""

    exit_code = 1


class InputError(HarnessError):
    """Bad user input: flags, names, files.  Exit code 2."""

    exit_code = 2


class UsageError(InputError):
    """Bad command-line usage (unparsable or conflicting flags)."""


class DataError(InputError):
    """A data set, weights file or artifact that is missing, corrupt or of the wrong kind."""


class ArtifactError(DataError):
    """A saved file (stats artifact, specialist, manifest, results) that cannot be used."""


class DeviceError(HarnessError):
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


class MeasurementError(HarnessError):
    """A measurement that cannot be trusted (integrity gate failed, window misuse)."""

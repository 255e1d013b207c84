"""The harness's own exceptions, and the one table that maps every error of the project to an exit code.

Each package owns its errors: ``device.errors`` (phones, monitors, the virtual lab), ``specialist.errors``
(statistics, builds, export) and this module (the experiment, the store, the CLI).  :func:`exit_code_for`
is the single place where any of them becomes an exit code: input errors (bad flags, bad files, bad
names) exit 2, every other project error exits 1, Ctrl-C (SIGINT) 130 and SIGTERM 143 (128 + the signal
number, what a shell reports for a process the signal ended, so a supervisor sees the same code whether or not
the harness handled it; both stop a run the same way, see harness/signals.py).  A command whose exit code is
itself a result has its own rows, tried first (:data:`COMMAND_EXIT_CODES`): ``harness compare`` exits 0 when
nothing regressed and 1 when something did, so any error there (a locked database, a missing run) exits 3.
"""

from __future__ import annotations

from device import errors as device_errors
from specialist import errors as specialist_errors


class HarnessError(Exception):
    """Root of every error the ``harness`` package raises on purpose."""


class InputError(HarnessError):
    """Bad user input: flags, names, files.  Exit code 2."""


class UsageError(InputError):
    """Bad command-line usage (unparsable or conflicting flags)."""


class DataError(InputError):
    """A data set, weights file or artifact that is missing, corrupt or of the wrong kind."""


class ArtifactError(DataError):
    """A saved file (stats artifact, specialist, manifest, results) that cannot be used."""


class Terminated(KeyboardInterrupt):  # noqa: N818 (named after the signal, like KeyboardInterrupt)
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt (harness/signals.py).  Exit code 143."""


class MeasurementError(HarnessError):
    """A measurement that cannot be trusted (integrity gate failed, window misuse)."""


#: Every error the project raises on purpose (the CLI turns these into one line and an exit code).
PROJECT_ERRORS: tuple[type[Exception], ...] = (
    HarnessError,
    device_errors.DevicePackageError,
    specialist_errors.SpecialistError,
)

#: Errors the user fixes by changing input, in any package.
INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, device_errors.InputError, specialist_errors.InputError)

#: Bad files in any package.
DATA_ERRORS: tuple[type[Exception], ...] = (DataError, device_errors.DataError, specialist_errors.DataError)

#: Untrustworthy measurements or failed checks, in any package.
MEASUREMENT_ERRORS: tuple[type[Exception], ...] = (
    MeasurementError,
    device_errors.MeasurementError,
    specialist_errors.MeasurementError,
)

#: The exit-code table, first match wins.
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int], ...] = (
    (INPUT_ERRORS, 2),
    (PROJECT_ERRORS, 1),
    ((Terminated,), 143),
    ((KeyboardInterrupt,), 130),
)


#: Per command, rows tried before :data:`EXIT_CODES`: where exit 1 is a result ("regressed"), errors need their own
#: code.  Usage errors (bad flags) stay 2 everywhere.
COMMAND_EXIT_CODES: dict[str, tuple[tuple[tuple[type[BaseException], ...], int], ...]] = {
    "compare": (((UsageError,), 2), (PROJECT_ERRORS, 3)),
}


def exit_code_for(exc: BaseException, command: str | None = None) -> int:
    """The process exit code for ``exc`` raised by ``command`` (1 for anything the tables do not name)."""
    for classes, code in COMMAND_EXIT_CODES.get(command or "", ()) + EXIT_CODES:
        if isinstance(exc, classes):
            return code
    return 1

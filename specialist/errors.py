"""The errors of the ``specialist`` package (statistics, builds, surgery, export).

The package owns them; ``harness.errors`` maps each family to an exit code in one table.
"""

from __future__ import annotations


class SpecialistError(Exception):
    """Root of every error the ``specialist`` package raises on purpose."""


class InputError(SpecialistError):
    """Bad input handed to the package: classes, levels, methods, files (the user can fix it)."""


class UsageError(InputError):
    """Options that cannot be used together or are out of range."""


class DataError(InputError):
    """A data set, weights file or artifact that is missing, corrupt or of the wrong kind."""


class ArtifactError(DataError):
    """A saved file (stats artifact, specialist, manifest) that cannot be used."""


class MeasurementError(SpecialistError):
    """A check on a built or exported model failed (e.g. outputs differ from PyTorch)."""

"""Logging of the ``harness`` command: levels on our loggers only, library noise off the terminal.

``-v``/``-q`` set the level of the project's loggers (``harness``, ``device``, ``specialist``): -1 errors
only, 0 warnings, 1 info, 2 debug.  Libraries keep their own levels, and their records reach the terminal
only from ERROR up (from WARNING up with ``-v``), so ``-vv`` is our debug lines, not matplotlib's or PIL's.
Worker processes (``harness.pool``) send their stderr to a file unless ``-v`` (:func:`verbose`).
"""

from __future__ import annotations

import logging

#: The project's top-level loggers (one per package).
OUR_LOGGERS = ("harness", "device", "specialist")
#: Library loggers that warn on every run about things a user cannot change (torchao's optional CUDA kernels,
#: torch's pytree deprecations); quiet unless ``-v``.  torch gives its loggers handlers of their own, so the
#: terminal filter below does not reach them.
NOISY_LIBRARY_LOGGERS = ("torchao", "torch.utils._pytree")
FORMAT = "%(levelname)s %(name)s: %(message)s"
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def is_ours(name: str) -> bool:
    """Whether logger ``name`` belongs to the project."""
    return any(name == p or name.startswith(p + ".") for p in OUR_LOGGERS)


class LibraryFilter(logging.Filter):
    """Pass every record of ours; a library's only from ``library_level`` up."""

    def __init__(self, library_level: int):
        super().__init__()
        self.library_level = library_level

    def filter(self, record: logging.LogRecord) -> bool:
        return is_ours(record.name) or record.levelno >= self.library_level


_HANDLER: logging.Handler | None = None


def configure_logging(verbosity: int) -> None:
    """Levels for ``verbosity`` (-1..2) on our loggers; one stderr handler on the root logger (added once,
    and only when nobody configured logging before: an embedding program's handlers are left alone)."""
    global _HANDLER
    level = _LEVELS[max(-1, min(verbosity, 2))]
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in NOISY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= 1 else logging.ERROR)
    root = logging.getLogger()
    library_level = logging.WARNING if verbosity >= 1 else logging.ERROR
    if _HANDLER is None and not root.handlers:
        _HANDLER = logging.StreamHandler()
        _HANDLER.setFormatter(logging.Formatter(FORMAT))
        _HANDLER.addFilter(LibraryFilter(library_level))
        root.addHandler(_HANDLER)
        root.setLevel(logging.WARNING)
    elif _HANDLER is not None:
        for f in _HANDLER.filters:
            if isinstance(f, LibraryFilter):
                f.library_level = library_level


def verbose() -> bool:
    """True when the user asked for ``-v`` (our loggers at INFO or below)."""
    return logging.getLogger("harness").isEnabledFor(logging.INFO)


def save_log_levels() -> dict[str, int]:
    """Our loggers' levels (to restore after an in-process ``main``)."""
    return {name: logging.getLogger(name).level for name in OUR_LOGGERS + NOISY_LIBRARY_LOGGERS}


def restore_log_levels(saved: dict[str, int]) -> None:
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)

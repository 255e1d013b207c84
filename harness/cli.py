"""The ``harness`` command line.

Sub-commands live one module each in :mod:`harness.commands`; a module defines
``register(subparsers)`` which adds its parser and sets ``func`` (``args -> int``).
Modules are discovered, so adding a command never edits this file.
"""

from __future__ import annotations

import os

# Small dense solves dominate the builder: multithreaded OpenBLAS only spins on a busy 2-core machine
# (measured ~30x slower).  Must be set before numpy is imported; a user's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402

from harness import __version__  # noqa: E402
from harness.cliutil import one_line  # noqa: E402
from harness.errors import PROJECT_ERRORS, Terminated, UsageError, exit_code_for  # noqa: E402
from harness.signals import (  # noqa: E402
    ignore_stop_signals,
    install_sigterm,
    interrupt_name,
    restore_handlers,
    saved_handlers,
)

log = logging.getLogger("harness")


class _Parser(argparse.ArgumentParser):
    """argparse that raises one-line :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(one_line(f"{self.prog}: {message} (see '{self.prog} --help')"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    import harness.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"harness.commands.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    SIGTERM is handled like Ctrl-C while it runs (harness/signals.py): a run records its ``interrupted``
    event and stops in order; the exit code is 130 for Ctrl-C and 143 for SIGTERM (harness/errors.py).
    Once an interrupt is being reported, further ones are ignored; the handlers are restored on return,
    except in a process that is exiting after an interrupt (``argv`` None: the console script).
    """
    whole_process = argv is None  # the process's own command line: it exits when this returns
    argv = list(sys.argv[1:] if argv is None else argv)
    saved = saved_handlers()
    install_sigterm()
    interrupted = False
    try:
        try:
            code = _main(argv)
        except KeyboardInterrupt as exc:  # one that came before _main's handler could ignore the next ones
            ignore_stop_signals()
            code = exit_code_for(exc)
        interrupted = code in (exit_code_for(KeyboardInterrupt()), exit_code_for(Terminated()))
        return code
    finally:
        if whole_process and interrupted:  # a stopping process ignores Ctrl-C until it is gone (atexit too)
            ignore_stop_signals()
        else:
            restore_handlers(saved)


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING - 10 * min(args.verbose, 2),
            format="%(levelname)s %(name)s: %(message)s",
        )
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        code = args.func(args)
        return int(code or 0)
    except PROJECT_ERRORS as exc:
        print(f"harness: error: {one_line(str(exc))}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        ignore_stop_signals()  # already stopping: pressing Ctrl-C again changes nothing now
        print(f"harness: interrupted ({interrupt_name(exc)})", file=sys.stderr)
        return exit_code_for(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

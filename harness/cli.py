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
from harness.logsetup import configure_logging, restore_log_levels, save_log_levels  # noqa: E402
from harness.signals import (  # noqa: E402
    ignore_stop_signals,
    install_stop_handlers,
    interrupt_name,
    restore_handlers,
    saved_handlers,
)
from harness.store import DEFAULT_DB  # noqa: E402

log = logging.getLogger("harness")


class _Parser(argparse.ArgumentParser):
    """argparse that raises one-line :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(one_line(f"{self.prog}: {message} (see '{self.prog} --help')"))


#: Options every command takes, before or after its name (``harness -v run`` = ``harness run -v``).
GLOBAL_OPTIONS = ("-v", "-q", "--json", "--db")


def _add_global_options(parser: argparse.ArgumentParser, after: bool) -> None:
    """``-v/-q/--json/--db`` on the top parser (``after`` False) or on a command's parser.

    On a command's parser they default to ``SUPPRESS`` (argparse copies a command's values over the top
    parser's, so a default there would undo ``harness --json show``); ``-v``/``-q`` given after the command
    count into their own attributes and are added to the ones before it (:func:`_global_values`).
    A command's own ``--json``/``--db`` (``add_json_flag``, ``add_db_flag``) keeps its help text.
    """
    have = parser._option_string_actions  # noqa: SLF001 - the one way to ask argparse which flags exist
    sup = argparse.SUPPRESS
    for flag, dest, help_text in (("-v", "verbose", "more logging: -v info, -vv debug (our loggers only)"),
                                  ("-q", "quiet", "less logging: errors only")):
        if flag not in have:
            parser.add_argument(flag, f"--{dest}", action="count", dest=f"{dest}_after" if after else dest,
                                default=sup if after else 0, help=help_text)
    if "--json" in have:
        have["--json"].default = sup
    else:
        parser.add_argument("--json", action="store_true", default=sup if after else False,
                            help="print one JSON object on stdout (commands that have one)")
    if "--db" in have:
        have["--db"].default = sup
    else:
        parser.add_argument("--db", default=sup if after else None, metavar="PATH|URL",
                            help=f"results database (default $HARNESS_DB or {DEFAULT_DB})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__.splitlines()[0] if __doc__ else None,
                     epilog="-v, -q, --json and --db may also come after the command.")
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    _add_global_options(parser, after=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    import harness.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"harness.commands.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    for command_parser in sub.choices.values():
        _add_global_options(command_parser, after=True)
    return parser


def _global_values(args: argparse.Namespace) -> int:
    """Merge the global options given after the command into ``args``; returns the verbosity
    (-1 quiet, 0 default, 1 info, 2 debug)."""
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    quiet = args.quiet + getattr(args, "quiet_after", 0)
    if args.db is None and not getattr(args, "db_default_own", False):
        args.db = os.environ.get("HARNESS_DB", "").strip() or str(DEFAULT_DB)
    return max(-1, min(verbose - quiet, 2))


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
    install_stop_handlers()
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
    saved = save_log_levels()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        configure_logging(_global_values(args))
        for flag, new in getattr(args, "deprecated_flags", None) or []:
            log.warning("%s is deprecated; use %s", flag, new)
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
    finally:
        restore_log_levels(saved)  # main() called in-process (tests) leaves logging as it found it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The commands the virtual phone's shell knows (toolbox on old profiles, toybox on new ones).

Importing this module registers every command (``cmd_basic``, ``cmd_files``, ``cmd_android``,
``cmd_runner``); :func:`lookup` finds one by name.  Each is ``fn(shell, argv, stdin, out) -> status`` and
touches only the sandbox and the phone state.
"""

from __future__ import annotations

from device.virtual_phone import cmd_android, cmd_basic, cmd_files, cmd_runner
from device.virtual_phone.cmdbase import Command, lookup

MODULES = (cmd_basic, cmd_files, cmd_android, cmd_runner)

__all__ = ["Command", "lookup", "MODULES"]

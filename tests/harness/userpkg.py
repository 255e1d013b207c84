"""Test helpers for graph-model CLI tests: a user's own model package on ``sys.path``, and one CLI call."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from harness.cli import main


@contextlib.contextmanager
def user_package(root: Path, name: str, source: str) -> Iterator[ModuleType]:
    """Write ``ROOT/NAME/nets.py`` from ``source``; yield the module ``NAME.nets`` while ROOT is on ``sys.path``
    (as ``--model NAME.nets:factory`` finds it)."""
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "nets.py").write_text(source)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(f"{name}.nets")
    finally:
        sys.path.remove(str(root))


def run(capsys, *argv) -> tuple[int, str, str]:
    """``harness ARGV`` in-process: exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err

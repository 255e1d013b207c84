"""Options dataclasses from TOML files and mappings, with their field types checked.

The leaf packages keep frozen, self-validating option dataclasses (``AdbOptions``, ``MonsoonOptions``,
``ExportOptions`` ...) and read no configuration themselves; this module is the one place that turns a
TOML table or a dict into one of them.  Unknown keys and values of the wrong type are one
:class:`~harness.errors.DataError` naming the file and the field (``monsoon options x.toml: field
'voltage_v': expected a number, got 'hot'``), never a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import INPUT_ERRORS, DataError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            type(None): "none"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce_value(tp: Any, value: Any) -> Any:
    """``value`` converted to the field type ``tp``; ``TypeError`` when it is not of that type.

    Ints are accepted for floats, lists for tuples; booleans are never numbers; floats must be finite.
    """
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            try:
                return coerce_value(arg, value)
            except TypeError:
                continue
        raise TypeError
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise TypeError
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = [coerce_value(args[0], v) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return options_from_mapping(tp, value, tp.__name__)
    raise TypeError


def options_from_mapping(cls: type[T], data: dict[str, Any], what: str,
                         error: type[Exception] = DataError) -> T:
    """An instance of the options dataclass ``cls`` from ``data``: unknown keys and wrong types are one ``error``."""
    if not isinstance(data, dict):
        raise error(f"{what}: expected a table of options, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{what}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        try:
            kwargs[key] = coerce_value(hints[key], value)
        except TypeError:
            raise error(f"{what}: field {key!r}: expected {_type_name(hints[key])}, got {value!r:.60}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, *INPUT_ERRORS) as exc:  # the dataclass's own validation
        raise error(f"{what}: {exc}") from None


def read_toml_table(path: str | Path, table: str | None, what: str, error: type[Exception] = DataError) -> dict:
    """The ``[table]`` of a TOML file (its top level when there is no such table); one ``error`` if unreadable."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {p}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {p}: cannot read TOML ({exc})") from None
    if table is not None and table in data:
        sub = data[table]
        if not isinstance(sub, dict):
            raise error(f"{what} {p}: [{table}] must be a table")
        return dict(sub)
    return dict(data)


def load_options(cls: type[T], path: str | Path, table: str | None, what: str,
                 error: type[Exception] = DataError) -> T:
    """The options dataclass ``cls`` from ``[table]`` of the TOML file ``path`` (or its top level)."""
    return options_from_mapping(cls, read_toml_table(path, table, what, error), f"{what} {path}", error)


__all__ = ["coerce_value", "load_options", "options_from_mapping", "read_toml_table"]

"""Running virtual phones announce themselves in ``<cache>/virtual-phones/<port>.json`` so that
``harness devices`` can list them (``<cache>`` is ``$HARNESS_CACHE_DIR`` or ``~/.cache/harness``)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from device.files import atomic_write_bytes


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "harness"))


def registry_dir() -> Path:
    return cache_dir() / "virtual-phones"


def announce(info: dict[str, Any]) -> Path:
    """Write this phone's entry; returns its path (remove it with :func:`withdraw`)."""
    path = registry_dir() / f"{info['port']}.json"
    atomic_write_bytes(path, json.dumps(info, indent=2).encode())
    return path


def withdraw(path: Path) -> None:
    Path(path).unlink(missing_ok=True)


def _alive(pid: int, port: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def live_phones() -> list[dict[str, Any]]:
    """Entries of virtual phones whose process is alive and whose port answers."""
    out = []
    d = registry_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            info = json.loads(p.read_text())
            if _alive(int(info["pid"]), int(info["port"])):
                out.append(info)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out

"""Resume keys: what a stored result depends on, hashed.

A sweep's results are stored under a *context* key per method: the base model, the statistics artifact,
the method definition, the builder's source code and the exact test images.  A changed input gives a new
key, so stale numbers are never reused; an unchanged one finds its finished jobs again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

#: ``specialist/`` modules that do not shape a specialist's weights (evaluation, files, data, export).
NOT_BUILDER = frozenset({"evaluate.py", "export.py", "manifest.py", "specialist_io.py", "accuracy.py", "data.py"})


def sha(*parts: Any) -> str:
    """sha256 over JSON renderings of ``parts`` (sorted keys; NUL between parts)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def builder_code_hash(root: str | Path | None = None) -> str:
    """sha256 of the builder's sources (every ``*.py`` of ``root``, default the ``specialist`` package, that a
    build can depend on): stored results are reused only while the code that made them is unchanged."""
    if root is None:
        import specialist

        root = Path(specialist.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(Path(root).glob("*.py")):
        if f.name in NOT_BUILDER:
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the exact test images and labels a sweep evaluates on."""
    h = hashlib.sha256()
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def context_keys(model_hash: str, data_fp: str, stats_hash: str, methods: list, code_hash: str) -> tuple[str, list[str]]:
    """The unpruned column's context (base model and data only) and one context per method."""
    none = sha("none", model_hash, data_fp)
    return none, [sha("method", model_hash, data_fp, stats_hash, m.as_dict(), code_hash) for m in methods]

"""Save and load specialists: a torch file (``torch.load(weights_only=True)``) with a versioned plan."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from specialist.build import Specialist
from specialist.errors import ArtifactError
from specialist.methods import Method
from specialist.model import weights_from_arrays, weights_to_arrays

SCHEMA_VERSION = 1
KIND = "specialist-harness/specialist"


def specialist_bytes(spec: Specialist) -> bytes:
    meta = spec.summary()
    meta.update({"kind": KIND, "schema_version": SCHEMA_VERSION, "method_options": spec.method.as_dict(),
                 "kept": spec.kept})
    payload = {"meta": json.dumps(meta, sort_keys=True),
               "arrays": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                          weights_to_arrays(spec.weights).items()}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_specialist(path: str | Path) -> Specialist:
    """Load a specialist file; refuse newer schema versions and files that are not specialists."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"specialist file {p} not found; make one with 'harness build -o {p}'")
    try:
        payload = torch.load(p, weights_only=True, map_location="cpu")
        meta = json.loads(payload["meta"])
        arrays = {k: v.numpy() for k, v in payload["arrays"].items()}
    except Exception as exc:  # torch raises many types for corrupt files
        raise ArtifactError(f"specialist file {p} is truncated, corrupt or not a specialist ({type(exc).__name__})") \
            from None
    if meta.get("kind") != KIND:
        raise ArtifactError(f"{p} is not a specialist file (kind {meta.get('kind')!r})")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ArtifactError(f"specialist file {p} has schema version {meta['schema_version']}, newer than this "
                            f"harness ({SCHEMA_VERSION}); upgrade the harness")
    w = weights_from_arrays(arrays, source=str(p))
    if meta.get("hashes", {}).get("specialist") and w.content_hash() != meta["hashes"]["specialist"]:
        raise ArtifactError(f"specialist file {p}: weights do not match their recorded hash (corrupt?)")
    opts = meta.get("method_options") or {"name": meta.get("method", "?"), "description": ""}
    return Specialist(weights=w, classes=list(meta["classes"]), level=float(meta["level"]), method=Method(**opts),
                      kept=meta.get("kept", {}), flops_base=int(meta["flops_base"]), flops=int(meta["flops"]),
                      layers=meta.get("layers", []), hashes=meta.get("hashes", {}),
                      build_ms=float(meta.get("build_ms", 0.0)))

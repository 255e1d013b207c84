"""The manifest written next to every exported ``.pte``: what the program is and what it came from.

A JSON object (``<name>.manifest.json`` beside ``<name>.pte``) with ``schema_version``, the sha256 of the
``.pte``, the content hashes of the base model, the exported weights and the statistics artifact, the
classes and their names, level, method, FLOPs, the input (shape, dtype, layout, normalisation), the
backend and quantization, the export check and the ExecuTorch version.  Newer schema versions are
refused; older ones are migrated on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from specialist.errors import ArtifactError

SCHEMA_VERSION = 1
KIND = "specialist-harness/pte-manifest"
NORMALISATION = "x = (pixel - input_mean) / input_std per RGB channel, pixel in 0..255, NCHW float32"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path_for(pte_path: str | Path) -> Path:
    """``spec.pte`` -> ``spec.manifest.json`` (same folder)."""
    p = Path(pte_path)
    return p.with_name(p.stem + ".manifest.json")


@dataclass(frozen=True)
class Manifest:
    """Everything a consumer needs to trust and feed an exported program."""

    pte_sha256: str
    pte_bytes: int
    backend: str  # xnnpack | portable
    quantize: str  # none | int8
    model_sha256: str  # NinWeights.content_hash() of the exported (possibly folded) weights
    base_model_sha256: str
    stats_sha256: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    level: float
    method: str
    compensation_fold: str  # bias | exact | none
    extra_nodes: int
    flops: int
    flops_base: int
    flops_pruned_pct: float
    channels: dict[str, int]
    input_shape: tuple[int, ...]
    input_dtype: str
    input_layout: str
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    normalisation: str
    executorch_version: str
    torch_version: str
    verify: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("classes", "class_names", "input_shape", "input_mean", "input_std"):
            d[k] = list(d[k])
        return d


def manifest_to_json(m: Manifest) -> bytes:
    return (json.dumps(m.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def _migrate(d: dict[str, Any], path: Path) -> dict[str, Any]:
    """Bring an older manifest up to :data:`SCHEMA_VERSION` (none older exists yet)."""
    v = d.get("schema_version")
    if not isinstance(v, int):
        raise ArtifactError(f"manifest {path} has no integer schema_version")
    if v > SCHEMA_VERSION:
        raise ArtifactError(f"manifest {path} has schema_version {v}, newer than this harness reads "
                            f"({SCHEMA_VERSION}); upgrade the harness")
    if v < 1:
        raise ArtifactError(f"manifest {path} has unknown schema_version {v}")
    return d


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; :class:`ArtifactError` (exit 2) with one line on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"manifest {p} not found (export writes it next to the .pte)")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"manifest {p} is not valid JSON ({exc})") from None
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise ArtifactError(f"manifest {p} is not a {KIND} file")
    d = _migrate(d, p)
    names = {f.name for f in fields(Manifest)}
    missing = [n for n in names if n not in d and n not in ("verify", "created_utc", "schema_version", "kind")]
    if missing:
        raise ArtifactError(f"manifest {p} lacks {', '.join(sorted(missing)[:4])}")
    kw = {k: d[k] for k in names if k in d}
    for k in ("classes", "class_names", "input_shape", "input_mean", "input_std"):
        kw[k] = tuple(kw[k])
    try:
        return Manifest(**kw)
    except TypeError as exc:  # pragma: no cover - guarded by the field check above
        raise ArtifactError(f"manifest {p} is malformed ({exc})") from None


def check_manifest(pte_path: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Load the manifest next to ``pte_path`` (unless given) and check it describes this very file."""
    pte = Path(pte_path)
    m = manifest if manifest is not None else load_manifest(manifest_path_for(pte))
    if not pte.is_file():
        raise ArtifactError(f"model file {pte} not found")
    got = file_sha256(pte)
    if got != m.pte_sha256:
        raise ArtifactError(f"manifest {manifest_path_for(pte)} does not match {pte}: sha256 {got[:12]}... "
                            f"!= {m.pte_sha256[:12]}... (re-export, or the file was changed or truncated)")
    return m

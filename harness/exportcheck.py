"""Export a specialist and check the program: write it, run it through the runner contract, compare.

``specialist.export`` lowers a model to ExecuTorch and computes the PyTorch reference scores without
running anything; the check that runs the ``.pte`` lives here, beside the runner (``device.runner``),
so a model needs no phone and a phone needs no model code.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from device.files import atomic_write_bytes
from harness.errors import MeasurementError
from specialist.export import ExportOptions, ExportReport, build_export, int8_accuracy
from specialist.model import NinWeights

log = logging.getLogger(__name__)


class ExportCheckError(MeasurementError):
    """The exported program does not compute what the PyTorch model computes (exit 1)."""

    def __init__(self, report: ExportReport, message: str):
        super().__init__(message)
        self.report = report

    def __reduce__(self):  # picklable, so it crosses from an export worker process intact
        return (type(self), (self.report, str(self)))


def run_pte(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Scores of a ``.pte`` on a batch (one image per execution, as the program has batch 1)."""
    from device.runner import HostProgram

    prog = HostProgram(Path(path))
    return np.concatenate([prog.run(x[i : i + 1]).reshape(1, -1) for i in range(len(x))])


def export_weights(weights: NinWeights, out_path: str | Path, options: ExportOptions | None = None,
                   classes=tuple(range(10)), data=None) -> tuple[ExportReport, NinWeights]:
    """Export, verify and atomically write ``out_path``; returns the report and the exported weights.

    Raises :class:`ExportCheckError` (nothing written) when the program does not match PyTorch.
    """
    out_path = Path(out_path)
    options = options or ExportOptions()
    built = build_export(weights, out_path, options, classes=classes, data=data)
    report = built.report
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(built.blob)
            fh.flush()
            os.fsync(fh.fileno())
        diff = float(np.abs(run_pte(tmp, built.x) - built.ref).max())
        report.max_abs_diff = diff
        report.verified = bool(diff <= built.tolerance)
        if options.quantize == "int8":
            report.accuracy = int8_accuracy(built.exported, lambda x: run_pte(tmp, x), classes, options, data)
        if not report.verified:
            report.export_s = time.perf_counter() - built.started_s
            raise ExportCheckError(report, f"exported program {out_path} differs from the PyTorch model: max abs "
                                           f"diff {diff:.3g} > {built.tolerance:g} on {len(built.x)} images; "
                                           "nothing written")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    report.export_s = time.perf_counter() - built.started_s
    log.info("exported %s (%d bytes, max abs diff %.2g)", out_path, report.pte_bytes, report.max_abs_diff)
    return report, built.exported


def write_verified(blob: bytes, out_path: str | Path, x: np.ndarray, ref: np.ndarray, atol: float) -> float:
    """Write ``blob`` to a temporary file beside ``out_path``, run it on ``x`` with the ExecuTorch runtime
    (any input shape: the program's), compare with ``ref`` and rename it into place only when the largest
    difference is at most ``atol``; returns that difference.  Raises :class:`MeasurementError` (nothing
    written) otherwise."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        diff = float(np.abs(run_pte(tmp, x) - ref).max())
        if not diff <= atol:
            raise MeasurementError(f"exported program {out_path} differs from the PyTorch model: max abs diff "
                                   f"{diff:.3g} > {atol:g} on {len(x)} inputs; nothing written")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def export_module(module, out_path: str | Path, input_shape: tuple[int, ...], x: np.ndarray,
                  backend: str = "xnnpack", atol: float = 1e-4) -> dict:
    """Lower any graph module (input shape from the model), verify it on ``x`` and write it; a JSON-ready
    report (bytes, sha256, max abs diff, seconds)."""
    import hashlib

    import torch

    from specialist.graph.export import lower_module, reference

    t0 = time.perf_counter()
    blob = lower_module(module, tuple(input_shape), backend)
    ref = reference(module, torch.as_tensor(x, dtype=torch.float32))
    diff = write_verified(blob, out_path, np.asarray(x, dtype=np.float32), ref, atol)
    return {"pte": str(out_path), "backend": backend, "pte_bytes": len(blob),
            "pte_sha256": hashlib.sha256(blob).hexdigest(), "verified": True, "max_abs_diff": diff, "atol": atol,
            "verify_images": len(x), "input_shape": list(input_shape), "export_s": round(time.perf_counter() - t0, 2)}


def export_pte(weights: NinWeights, out_path: str | Path, options: ExportOptions | None = None) -> ExportReport:
    """Export ``weights`` to ``out_path`` with the default options (XNNPACK, bias-folded); verified."""
    report, _ = export_weights(weights, out_path, options or ExportOptions())
    return report


def write_manifest_for(report: ExportReport, weights: NinWeights, **fields) -> Path:
    """Write the manifest next to ``report.pte`` (atomically) and return its path."""
    from specialist.export import manifest_for
    from specialist.manifest import manifest_path_for, manifest_to_json

    path = manifest_path_for(report.pte)
    atomic_write_bytes(path, manifest_to_json(manifest_for(report, weights, **fields)))
    report.manifest = str(path)
    return path


def save_specialist(spec, path: str | Path) -> Path:
    """Write a specialist file atomically (``specialist.specialist_io`` makes the bytes)."""
    from specialist.specialist_io import specialist_bytes

    p = Path(path)
    atomic_write_bytes(p, specialist_bytes(spec))
    return p

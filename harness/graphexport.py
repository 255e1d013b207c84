"""Export a graph model (any CNN) to a verified ExecuTorch ``.pte`` with a manifest, as NIN's exports.

:class:`GraphExportJob` is everything one export needs (the module, its description, what it is: classes,
level, method, FLOPs, hashes) and is picklable, so ``harness run`` hands it to its export worker processes
exactly as it hands over NIN weights (``harness.prepare``); :func:`export_graph` lowers it (XNNPACK or
portable kernels, float or int8), runs the program with the ExecuTorch runtime on calibration images of the
classes (seeded N(0, 1) inputs when the data or shape do not fit), writes it only when it matches PyTorch
(float: max abs diff <= 1e-4; int8: <= 0.05 x max(1, max |score|) against the quantized PyTorch reference,
as for NIN) and writes ``<name>.manifest.json`` beside it (``specialist.manifest`` schema: plan, hashes, FLOPs).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.files import atomic_write_bytes
from harness.errors import DATA_ERRORS, UsageError

log = logging.getLogger(__name__)

VERIFY_ATOL = 1e-4
ATOL_INT8 = 0.05
VERIFY_IMAGES = 8
QUANT_CALIB_IMAGES = 32


@dataclass
class GraphExportJob:
    """One graph program to export: the (pruned or base) module and what it is."""

    module: Any  # torch.nn.Module
    description: Any  # specialist.zoo.ModelDescription
    classes: tuple[int, ...]
    level: float
    method: str
    flops: int
    flops_base: int
    base_hash: str = ""
    stats_hash: str = ""
    fold: str = "none"
    extra_nodes: int = 0
    backend: str = "xnnpack"
    quantize: str = "none"
    data: str | None = None
    _hash: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        from specialist.graph.export import BACKENDS, QUANTIZE

        if self.backend not in BACKENDS:
            raise UsageError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.quantize not in QUANTIZE:
            raise UsageError(f"quantize {self.quantize!r} is not one of {', '.join(QUANTIZE)}")
        if self.quantize == "int8" and self.backend != "xnnpack":
            raise UsageError("--quantize int8 needs --backend xnnpack (the portable kernels have no int8 convolution)")

    @property
    def flops_pruned_pct(self) -> float:
        return 100.0 * (1.0 - self.flops / self.flops_base) if self.flops_base else 0.0

    def model_sha256(self) -> str:
        """:func:`specialist.graph.artifact.model_hash` of the exported module (state_dict + description)."""
        if not self._hash:
            from specialist.graph.artifact import model_hash

            self._hash = model_hash(self.module, self.description)
        return self._hash

    def content_hash(self) -> str:
        """What the program depends on: the module, the backend and the quantization (the cache key)."""
        return hashlib.sha256(f"graph|{self.model_sha256()}|{self.backend}|{self.quantize}".encode()).hexdigest()

    def export_to(self, out_path: str | Path) -> dict:
        return export_graph(self, out_path)


def verify_inputs(desc, classes, data=None, n: int = VERIFY_IMAGES, seed: int = 0) -> tuple[np.ndarray, str]:
    """Normalised calibration images of the classes when they fit the model, else seeded N(0, 1) inputs."""
    from specialist.data import load_split

    if tuple(desc.input_shape) == (3, 32, 32) and desc.num_classes >= 10:
        try:
            calib = load_split("calib", data).select(sorted(classes), per_class=max(1, -(-n // len(classes))))
            idx = np.random.default_rng(seed).permutation(len(calib))[:n]
            return desc.normalize(calib.x[np.sort(idx)]).numpy(), "calibration images"
        except DATA_ERRORS:
            pass
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *desc.input_shape)).astype("float32"), "random N(0,1)"


def export_graph(job: GraphExportJob, out_path: str | Path) -> dict:
    """Lower, verify and write ``out_path`` and its manifest; a JSON-ready report.  Raises
    :class:`~harness.errors.MeasurementError` (nothing written) when the program does not match PyTorch."""
    import torch

    from harness.exportcheck import write_verified
    from specialist.graph.export import graph_manifest, lower_module, out_channels, quantize_int8, reference
    from specialist.manifest import manifest_path_for, manifest_to_json

    t0 = time.perf_counter()
    out_path = Path(out_path)
    shape = tuple(int(d) for d in job.description.input_shape)
    x, kind = verify_inputs(job.description, job.classes, job.data)
    module = job.module.eval()  # float; int8 below
    atol = VERIFY_ATOL
    if job.quantize == "int8":
        cx, _ = verify_inputs(job.description, job.classes, job.data, n=QUANT_CALIB_IMAGES, seed=1)
        module = quantize_int8(module, shape, cx)
    with torch.no_grad():
        ref = reference(module, torch.as_tensor(x))
    if job.quantize == "int8":
        atol = ATOL_INT8 * max(1.0, float(np.abs(ref).max()))
    blob = lower_module(module, shape, job.backend)
    diff = write_verified(blob, out_path, x, ref, atol)
    pte_sha = hashlib.sha256(blob).hexdigest()
    verify = {"max_abs_diff": diff, "atol": atol, "images": len(x), "input": kind}
    manifest = graph_manifest(
        pte_sha256=pte_sha, pte_bytes=len(blob), backend=job.backend, quantize=job.quantize,
        model_sha256=job.model_sha256(), base_hash=job.base_hash, stats_hash=job.stats_hash, classes=job.classes,
        num_classes=job.description.num_classes, level=job.level, method=job.method, fold=job.fold,
        extra_nodes=job.extra_nodes, flops=job.flops, flops_base=job.flops_base,
        channels=out_channels(job.module), input_shape=shape, mean=job.description.mean,
        std=job.description.std, verify=verify)
    mpath = manifest_path_for(out_path)
    atomic_write_bytes(mpath, manifest_to_json(manifest))
    seconds = time.perf_counter() - t0
    log.info("exported %s (%d bytes, %s %s, max abs diff %.2g) in %.1f s", out_path, len(blob), job.backend,
             job.quantize, diff, seconds)
    return {"pte": str(out_path), "manifest": str(mpath), "backend": job.backend, "quantize": job.quantize,
            "pte_bytes": len(blob), "pte_sha256": pte_sha, "verified": True, "max_abs_diff": diff, "atol": atol,
            "verify_images": len(x), "verify_input": kind, "input_shape": list(shape),
            "classes": list(job.classes), "level": job.level, "method": job.method, "flops": job.flops,
            "flops_base": job.flops_base, "flops_pruned_pct": round(job.flops_pruned_pct, 3),
            "model_sha256": job.model_sha256(), "export_s": round(seconds, 2)}

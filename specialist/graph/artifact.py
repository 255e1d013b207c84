"""The versioned, hashed statistics artifact of a graph model (``harness stats --model resnet20``).

One ``.npz`` file: a JSON header (``meta``) plus float64 arrays.  The header holds ``schema_version``, the
``model_hash`` of the base model the statistics were computed on (:func:`model_hash`: its state_dict and
input description), the model spec, the calibration source and images per class, the channel groups (root,
size, prunable, consumers) and a ``content_hash`` over every array.  Arrays are keyed by consumer layer
(``mean/<layer>`` per-position mean input ``[K, C, *spatial]``, ``abs/<layer>`` mean |input| per channel,
``sq/<layer>`` E[x^2] per channel, ``gram/<layer>`` E[x x^T] over positions ``[K, C, C]``) and ``counts``
(images per class); a group's statistics are those of its consumers (the header's ``groups``).  Schema 2 adds
the per-class impacts of every group channel, keyed by the group's root layer: ``impg/<root>`` (autograd) and
``impf/<root>`` (finite difference) ``[K, size]`` (:mod:`specialist.graph.impacts`).  A schema-1 file still
loads (migration: it has no impacts, so only the methods that need none build from it; the others say to
recompute it).

Loading refuses one-line (:class:`~specialist.errors.ArtifactError`): a file that is not an artifact, a newer
schema version, a content hash that does not match (corrupt or edited), an artifact of another model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specialist.errors import ArtifactError
from specialist.graph.groups import ChannelGraph
from specialist.graph.stats import GraphStats
from specialist.zoo import ModelDescription

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: per-group impacts (impg/, impf/); version 1 files load without them
KIND = "graph-stats"
_TABLES = (("mean", "mean"), ("abs", "abs_mean"), ("sq", "sq_mean"), ("gram", "gram"))
_IMPACTS = (("impg", "impact_grad"), ("impf", "impact_fd"))  # keyed by group root, [K, size] numpy


def model_hash(module: nn.Module, desc: ModelDescription) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes, sorted) and the input description."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    h.update(json.dumps([list(desc.input_shape), list(desc.mean), list(desc.std), desc.num_classes]).encode())
    return h.hexdigest()


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def stats_to_bytes(stats: GraphStats, graph: ChannelGraph, mhash: str, desc: ModelDescription,
                   info: dict | None = None) -> bytes:
    """The artifact's bytes (see the module docstring); ``info``: extra header fields (data source, images)."""
    arrays: dict[str, np.ndarray] = {"counts": np.asarray(stats.counts, dtype=np.int64)}
    for prefix, attr in _TABLES:
        for layer, t in getattr(stats, attr).items():
            arrays[f"{prefix}/{layer}"] = t.numpy()
    for prefix, attr in _IMPACTS:
        for root, a in getattr(stats, attr).items():
            arrays[f"{prefix}/{root}"] = np.asarray(a, dtype=np.float64)
    meta = {"kind": KIND, "schema_version": SCHEMA_VERSION, "model_hash": mhash, "model": desc.name,
            "source": desc.source, "input_shape": list(desc.input_shape), "input_mean": list(desc.mean),
            "input_std": list(desc.std), "num_classes": stats.num_classes, "groups": graph.summary(),
            "content_hash": _content_hash(arrays), **(info or {})}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def read_stats(path: str | Path) -> tuple[GraphStats, dict]:
    """The statistics and header of an artifact file, its version and content hash checked."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"statistics artifact {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same one-line refusal
        raise ArtifactError(f"{path} is not a statistics artifact: {str(exc).splitlines()[0][:150]}") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ArtifactError(f"{path} is not a graph statistics artifact (the NIN artifact is for --model nin)")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema version {version}, newer than this program's {SCHEMA_VERSION}; "
                            "upgrade the harness or recompute it with 'harness stats'")
    if _content_hash(arrays) != meta.get("content_hash"):
        raise ArtifactError(f"{path}: content hash mismatch (the file is corrupt or was edited)")
    tables: dict[str, dict] = {attr: {} for _, attr in (*_TABLES, *_IMPACTS)}
    prefixes = dict(_TABLES)
    impacts = dict(_IMPACTS)
    for key, a in arrays.items():
        if "/" in key:
            prefix, layer = key.split("/", 1)
            if prefix in prefixes:
                tables[prefixes[prefix]][layer] = torch.from_numpy(np.array(a, dtype=np.float64))
            elif prefix in impacts:
                tables[impacts[prefix]][layer] = np.array(a, dtype=np.float64)
    stats = GraphStats(arrays["counts"].astype(np.int64), tables["mean"], tables["abs_mean"], tables["sq_mean"],
                       tables["gram"], tables["impact_grad"], tables["impact_fd"])
    return stats, meta


def load_stats(path: str | Path, mhash: str) -> tuple[GraphStats, dict]:
    """:func:`read_stats`, refusing an artifact computed on another model than the one hashing to ``mhash``."""
    stats, meta = read_stats(path)
    if meta.get("model_hash") != mhash:
        raise ArtifactError(f"statistics artifact {path} was computed on another model ({meta.get('model')!r}, "
                            f"hash {str(meta.get('model_hash'))[:12]}, this model {mhash[:12]}); recompute it "
                            "with 'harness stats --model ...'")
    return stats, meta

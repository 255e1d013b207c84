"""Per-layer profiles of a run: ETDump operator times beside each layer's FLOPs, and the speedup per layer.

After the measured rounds of ``harness run`` (outside every window), :func:`collect_run_profiles` runs each
model once more in the runner's profiling mode (the backend's ``etdump_profile``: the host runtime, or the
phone's ``executor_runner --etdump_path`` and an ``adb pull``), reads the ETDump (``device.etdump``), maps the
operators to the model's layers (:func:`align`) and writes ``<results>/<run_id>/profile/``: one ``<key>.etdp``
per model and ``profile.json`` (the parsed rows, the FLOPs per layer, each ETDump's SHA-256).
:func:`profile_table_data` turns that file into the table ``harness profile`` prints and the report can show:
per layer, each model's time and FLOPs beside the full model's (level 0), with the speedup.

Mapping operators to layers: the XNNPACK delegate's operator events carry no layer name, so they are matched
in execution order to the layers that do FLOPs (``specialist.flops`` for NIN, ``specialist.graph.flops`` for
any torch CNN) by kind: a k x k convolution is a ``Convolution`` operator, a 1 x 1 convolution a ``Fully
Connected`` or ``Convolution`` one, a depthwise convolution a ``DWConv`` one, a Linear a ``Fully Connected``
one.  Operators that match no layer (pooling, layout changes, an average pool XNNPACK runs as a depthwise
convolution) stay in the table as "other" rows.  Activations are fused into the operator before them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.files import atomic_write_bytes, file_hash
from harness.errors import PROJECT_ERRORS, DataError, InputError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROFILE_FILE = "profile.json"
#: Executions in a profiled pass (the median of each operator is the figure).
DEFAULT_PROFILE_RUNS = 20
#: Operator kinds that compute a layer (the others never take one).
COMPUTE_KINDS = ("conv", "depthwise", "deconv", "fc")


@dataclass(frozen=True)
class LayerFlops:
    """One layer that does FLOPs, in forward order; ``kinds``: the operator kinds that may compute it."""

    name: str
    kinds: tuple[str, ...]
    flops: int


# --------------------------------------------------------------------------- FLOPs per layer (registry)


def nin_layers(weights) -> list[LayerFlops]:
    """NIN's nine convolutions with this model's widths (``specialist.flops.layer_costs``)."""
    from specialist.flops import layer_costs
    from specialist.model import NIN_LAYERS

    kernels = {s.name: int(s.kernel) for s in NIN_LAYERS}
    return [LayerFlops(c.name, ("fc", "conv") if kernels[c.name] == 1 else ("conv",), int(c.flops_after))
            for c in layer_costs(weights.channels())]


def graph_layers(module, input_shape: tuple[int, ...]) -> list[LayerFlops]:
    """Any torch CNN: the layers ``specialist.graph.flops.flop_table`` counts, in forward order."""
    import torch

    from specialist.graph.flops import flop_table

    out = []
    for r in flop_table(module, torch.zeros((1, *tuple(input_shape)[-3:]))):
        if r.kind == "depthwise conv":
            kinds = ("depthwise", "conv")
        elif r.kind == "linear":
            kinds = ("fc",)
        elif r.kernel in ("1x1", "1"):
            kinds = ("fc", "conv")
        else:
            kinds = ("conv", "deconv")
        out.append(LayerFlops(r.layer, kinds, int(r.flops)))
    return out


def layers_for(model, input_shape: tuple[int, ...] = (3, 32, 32)) -> list[LayerFlops]:
    """FLOPs per layer of NIN weights (``NinWeights``) or of an ``nn.Module``."""
    if hasattr(model, "channels") and hasattr(model, "weights"):
        return nin_layers(model)
    return graph_layers(model, input_shape)


# --------------------------------------------------------------------------- operators -> layers


def align(operators: list[dict[str, Any]], layers: list[LayerFlops]) -> list[str | None]:
    """The layer of each operator (None: not a layer), matching compute operators to layers in order and
    by kind; an operator whose kind does not fit the next layer is left unmatched (e.g. a pooling)."""
    out: list[str | None] = []
    j = 0
    for op in operators:
        kind = op.get("kind", "")
        if kind in COMPUTE_KINDS and j < len(layers) and kind in layers[j].kinds:
            out.append(layers[j].name)
            j += 1
        else:
            out.append(None)
    if layers and j < len(layers):
        log.info("profile: %d of %d layers found among the operators (the rest fused or not delegated)",
                 j, len(layers))
    return out


def model_profile(key: str, etdump: Path, layers: list[LayerFlops] | None) -> dict[str, Any]:
    """One model's profile entry from its ETDump file (operators, layers with FLOPs and time)."""
    from device.etdump import read_etdump

    prof = read_etdump(etdump).as_dict()
    ops = prof.pop("operators")
    names = align(ops, layers or [])
    for op, name in zip(ops, names, strict=True):
        op["layer"] = name
    rows = []
    for lay in layers or []:
        mine = [o for o in ops if o["layer"] == lay.name]
        rows.append({"layer": lay.name, "flops": lay.flops, "operators": [o["name"] for o in mine],
                     "time_ms": sum(o["median_ms"] for o in mine) if mine else None})
    other = [o for o in ops if o["layer"] is None]
    # Method::execute minus its operators: the runtime's and the delegate's own time (and, on a loaded
    # machine, time the thread was not running between operators)
    unattributed = None if prof["execute_ms"] is None else max(prof["execute_ms"] - prof["operators_ms"], 0.0)
    return {"model": key, "etdump": etdump.name, "etdump_sha256": file_hash(etdump), **prof,
            "layers": rows, "other_ms": sum(o["median_ms"] for o in other), "unattributed_ms": unattributed,
            "operators": ops}


# --------------------------------------------------------------------------- collecting during a run


def run_profile_dir(db_path, run_id: str) -> Path:
    """``<results>/<run_id>/profile``: beside the run's report (``harness.report``'s output directory);
    ``db_path`` is what ``--db`` takes (a SQLite path, a server URL: its local work folder) or a ``DbLocation``."""
    from harness.store_path import resolve_db

    return resolve_db(db_path).work_dir / run_id / "profile"


def collect_run_profiles(backend, models, out_dir: str | Path, run_id: str,
                         layers: dict[str, list[LayerFlops]] | None = None,
                         runs: int = DEFAULT_PROFILE_RUNS) -> dict[str, Any]:
    """One profiled pass per model (after the measurements: never inside a window), written to ``out_dir``.

    A model the backend cannot profile (a phone runner built without the event tracer) or whose profile
    fails gets a ``note`` instead of rows; the run itself is not failed by a profile."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "run_id": run_id,
                           "device": getattr(backend, "name", ""), "runs": int(runs),
                           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": []}
    profile = getattr(backend, "etdump_profile", None)
    for m in models:
        entry: dict[str, Any] = {"model": m.key, "level": m.level_pct, "flops": int(m.flops),
                                 "artifact_hash": m.artifact_hash}
        lays = (layers or {}).get(m.key)
        try:
            got = profile(m, out / f"{m.key}.etdp", runs) if profile is not None else None
            if got is None:
                entry["note"] = "no ETDump: the runner was built without EXECUTORCH_ENABLE_EVENT_TRACER=ON"
            else:
                entry.update(model_profile(m.key, Path(got), lays))
                entry["level"], entry["flops"] = m.level_pct, int(m.flops)
            if lays is None:
                entry.setdefault("note", "FLOPs per layer unknown (a resumed run); times per operator only")
        except (*PROJECT_ERRORS, OSError) as exc:  # a profile never fails a measured run
            log.warning("profile of %s failed: %s", m.key, exc)
            entry["note"] = f"profile failed: {exc}"
        doc["models"].append(entry)
    atomic_write_bytes(out / PROFILE_FILE, (json.dumps(doc, indent=1) + "\n").encode())
    return doc


def layers_from_entries(entries, key_for) -> dict[str, list[LayerFlops]]:
    """``{model key: layers}`` from ``harness.prepare.ModelPreparation.entries`` (level, weights, ...)."""
    out = {}
    for e in entries:
        try:
            out[key_for(e[0])] = layers_for(e[1])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.info("FLOPs per layer of level %s unknown: %s", e[0], exc)
    return out


# --------------------------------------------------------------------------- reading back


def load_run_profile(db_path: str | Path, run_id: str) -> dict[str, Any]:
    """The stored ``profile.json`` of a run (``InputError`` when the run has none)."""
    p = run_profile_dir(db_path, run_id) / PROFILE_FILE
    if not p.is_file():
        raise InputError(f"run {run_id} has no per-layer profile ({p} not found); runs made before profiles "
                         "existed, or with --no-profile, have none")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{p} is unreadable ({exc})") from None
    if not isinstance(doc, dict) or int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
        raise DataError(f"{p} has schema version {doc.get('schema_version') if isinstance(doc, dict) else '?'}, "
                        f"newer than this harness reads ({SCHEMA_VERSION})")
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or not positive (a layer timed at 0 ms by ETDump's clock has no
    meaningful ratio: a speedup of 0 or infinity would be an artefact of the timer's resolution)."""
    return None if a is None or b is None or a <= 0 or b <= 0 else a / b


def profile_table_data(db_path: str | Path, run_id: str, model: str | None = None) -> dict[str, Any]:
    """The per-layer table of a run (for ``harness profile`` and the report).

    ``{"run_id", "device", "base_model", "models": [{"model", "level", "execute_ms", "load_ms", "runs",
    "note", "layers": [{"layer", "flops", "time_ms", "base_flops", "base_time_ms", "speedup",
    "time_saved_pct", "flops_saved_pct", "operators"}], "other_ms", "base_other_ms", "unattributed_ms",
    "base_unattributed_ms", "operators"}]}``;
    ``speedup`` = base time / this time (> 1: the layer got faster).  ``model`` keeps one model."""
    doc = load_run_profile(db_path, run_id)
    entries = doc.get("models", [])
    keys = [e.get("model") for e in entries]
    if model is not None and model not in keys:
        raise InputError(f"--model {model!r}: run {run_id} profiled {', '.join(map(str, keys)) or 'no models'}")
    base = next((e for e in entries if e.get("level") == 0), None)
    base_layers = {r["layer"]: r for r in (base or {}).get("layers", [])}
    models = []
    for e in entries:
        if model is not None and e.get("model") != model:
            continue
        rows = []
        for r in e.get("layers", []):
            b = base_layers.get(r["layer"], {})
            t, bt = r.get("time_ms"), b.get("time_ms")
            f, bf = r.get("flops"), b.get("flops")
            rows.append({**r, "base_time_ms": bt, "base_flops": bf,
                         "speedup": _ratio(bt, t),
                         "time_saved_pct": None if _ratio(t, bt) is None else 100.0 * (1 - t / bt),
                         "flops_saved_pct": None if _ratio(f, bf) is None else 100.0 * (1 - f / bf)})
        models.append({"model": e.get("model"), "level": e.get("level"), "flops": e.get("flops"),
                       "runs": e.get("runs"), "execute_ms": e.get("execute_ms"), "load_ms": e.get("load_ms"),
                       "base_execute_ms": (base or {}).get("execute_ms"),
                       "other_ms": e.get("other_ms"), "base_other_ms": (base or {}).get("other_ms"),
                       "unattributed_ms": e.get("unattributed_ms"),
                       "base_unattributed_ms": (base or {}).get("unattributed_ms"),
                       "note": e.get("note", ""), "etdump": e.get("etdump"), "layers": rows,
                       "operators": e.get("operators", [])})
    return {"run_id": doc.get("run_id", run_id), "device": doc.get("device", ""),
            "base_model": base.get("model") if base else None,
            "profile_dir": str(run_profile_dir(db_path, run_id)), "models": models}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_profile(data: dict[str, Any]) -> str:
    """The table as text: per model, each layer's MFLOPs and ms beside the full model's, and the speedup."""
    lines = [f"per-layer profile of run {data['run_id']} on {data['device']} (ETDump, median of each operator; "
             f"files in {data['profile_dir']})"]
    for m in data["models"]:
        lines.append("")
        head = f"{m['model']} (level {m['level']}%)"
        if m.get("execute_ms") is not None:
            head += f": {m['execute_ms']:.3f} ms per inference"
            if m.get("base_execute_ms") and m["level"] != 0:
                head += f" vs {m['base_execute_ms']:.3f} ms full (x{m['base_execute_ms'] / m['execute_ms']:.2f})"
        lines.append(head + (f"  [{m['note']}]" if m.get("note") else ""))
        if m["layers"]:
            lines.append(f"  {'layer':<24} {'MFLOPs':>9} {'full':>9} {'ms':>8} {'full ms':>8} {'speedup':>8} "
                         f"{'FLOPs saved %':>13}")
            for r in m["layers"]:
                lines.append(f"  {r['layer']:<24} {_fmt(r['flops'] and r['flops'] / 1e6, '9.3f')} "
                             f"{_fmt(r['base_flops'] and r['base_flops'] / 1e6, '9.3f')} "
                             f"{_fmt(r['time_ms'], '8.3f')} {_fmt(r['base_time_ms'], '8.3f')} "
                             f"{_fmt(r['speedup'], '8.2f')} {_fmt(r['flops_saved_pct'], '13.1f')}")
            lines.append(f"  {'other operators':<24} {'':>9} {'':>9} {_fmt(m['other_ms'], '8.3f')} "
                         f"{_fmt(m['base_other_ms'], '8.3f')}")
            lines.append(f"  {'in no operator':<24} {'':>9} {'':>9} {_fmt(m.get('unattributed_ms'), '8.3f')} "
                         f"{_fmt(m.get('base_unattributed_ms'), '8.3f')}")
        elif m["operators"]:
            for o in m["operators"]:
                lines.append(f"  {o['name']:<40} {o['median_ms']:8.3f} ms")
    return "\n".join(lines)

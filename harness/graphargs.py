"""The graph-model branches of ``stats build accuracy export`` (``--model resnet20 | pkg.mod:factory | f.pt2``).

``--model`` absent, ``nin`` or an ``.npz`` keeps the NIN path (``harness.buildargs``); anything else is a graph
model loaded by :func:`specialist.graph.source.load_model`.  Every check that can refuse the input (model spec,
weights, options, supported ops, artifact, classes, level) runs before the slow work, one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from harness.cliutil import parse_int_list
from harness.errors import UsageError

log = logging.getLogger(__name__)


def add_graph_args(p: argparse.ArgumentParser) -> None:
    """``--weights --input-shape --input-mean --input-std`` (graph models only)."""
    p.add_argument("--weights", metavar="FILE", help="graph models: a state_dict file (torch.save) for --model")
    p.add_argument("--input-shape", metavar="C,H,W", help="graph models: one input image's shape (default 3,32,32)")
    p.add_argument("--input-mean", metavar="LIST", help="graph models: per-channel mean of 0-255 pixels")
    p.add_argument("--input-std", metavar="LIST", help="graph models: per-channel std of 0-255 pixels")


def is_graph_spec(spec) -> bool:
    """Whether a ``--model`` value names a graph model (not NIN: absent, empty, ``nin`` or an ``.npz``)."""
    return bool(spec) and spec != "nin" and not str(spec).endswith(".npz")


def is_graph_model(args) -> bool:
    """Whether ``--model`` names a graph model (not NIN)."""
    return is_graph_spec(getattr(args, "model", None))


def nin_branch(args) -> None:
    """Entering a command's NIN branch: ``--model nin`` means the shipped NIN (``args.model = None``); the
    graph-only flags given with NIN are refused one-line."""
    if getattr(args, "model", None) == "nin":
        args.model = None
    given = [f for f in ("weights", "input_shape", "input_mean", "input_std") if getattr(args, f, None)]
    if given:
        raise UsageError(f"--{given[0].replace('_', '-')} applies to graph models (--model resnet20, "
                         "pkg.mod:factory, .pt2), not NIN")


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"{what}: give comma-separated numbers, got {text!r}") from None


def load_graph_model(args):
    """The :class:`~specialist.graph.source.LoadedModel` the flags describe."""
    from specialist.graph.source import load_model

    shape = tuple(parse_int_list(args.input_shape, "--input-shape", 1)) if args.input_shape else None
    return load_model(args.model, weights=args.weights, input_shape=shape,
                      mean=_floats(args.input_mean, "--input-mean"), std=_floats(args.input_std, "--input-std"))


def base_info(args) -> dict:
    """How to rebuild the base model (saved in a specialist file)."""
    return {"spec": args.model, "weights": str(Path(args.weights).resolve()) if args.weights else None,
            "input_shape": args.input_shape, "input_mean": args.input_mean, "input_std": args.input_std}


def load_base_info(info: dict):
    """The base model a specialist file names."""
    ns = argparse.Namespace(model=info["spec"], weights=info.get("weights"), input_shape=info.get("input_shape"),
                            input_mean=info.get("input_mean"), input_std=info.get("input_std"))
    return load_graph_model(ns)


def check_cifar(desc) -> None:
    """The CIFAR-10 images fit the model (3x32x32 inputs, at least 10 classes)."""
    if tuple(desc.input_shape) != (3, 32, 32) or desc.num_classes < 10:
        raise UsageError(f"the model takes {list(desc.input_shape)} inputs and {desc.num_classes} classes; the "
                         "calibration/test data are CIFAR-10 (3x32x32, 10 classes)")


def graph_classes(text: str, k: int) -> list[int]:
    cls = parse_int_list(text, "--classes", 0, k - 1)
    if len(set(cls)) != len(cls):
        raise UsageError(f"--classes: repeated class in {text!r}")
    return sorted(cls)


def build_graph_from_args(args, level: float | None = None, loaded=None):
    """(loaded base model, graph specialist) for the flags; refusals before any slow work."""
    from specialist.graph.artifact import load_stats
    from specialist.graph.groups import analyse
    from specialist.graph.specialize import build_graph_specialist, graph_method

    method = graph_method(args.method, args.compensation, getattr(args, "fold", None), getattr(args, "impact", None),
                          getattr(args, "multiple_of", None), getattr(args, "calib_per_class", None))
    level = args.level if level is None else level
    if not 0 <= level < 100:
        raise UsageError(f"--level must be in [0, 100), got {level:g}")
    loaded = loaded or load_graph_model(args)
    if method.calib_per_class:  # recon reconstructs on CIFAR-10 calibration images
        check_cifar(loaded.description)
    needs_stats = method.needs_stats
    if needs_stats and not getattr(args, "stats", None):
        raise UsageError(f"method {method.name!r} on a graph model needs --stats FILE (make one with 'harness stats "
                         f"--model {args.model} -o FILE')")
    classes = graph_classes(args.classes, loaded.description.num_classes)
    from specialist.graph.artifact import model_hash

    stats, meta = (load_stats(args.stats, model_hash(loaded.module, loaded.description)) if needs_stats
                   else (None, {}))
    graph = analyse(loaded.module, loaded.example())
    spec = build_graph_specialist(loaded, stats, classes, level, method, graph=graph, base=base_info(args),
                                  stats_hash=meta.get("content_hash", ""), calib=getattr(args, "data", None))
    return loaded, spec


def stats_bytes(loaded, per_class: int, data=None, graph=None, impact: str = "grad",
                fd_per_class: int = 10) -> tuple[bytes, dict]:
    """The statistics artifact of ``loaded`` on the first ``per_class`` calibration images of every class
    (CIFAR-10): moments, autograd impacts, and finite-difference impacts too when ``impact`` is fd or both;
    and a summary (model hash, images, consumers, groups, seconds, seconds per phase)."""
    from specialist.data import load_split
    from specialist.graph.artifact import model_hash, stats_to_bytes
    from specialist.graph.groups import analyse
    from specialist.graph.impacts import fd_impacts, grad_impacts
    from specialist.graph.stats import collect_stats

    check_cifar(loaded.description)
    graph = graph or analyse(loaded.module, loaded.example())
    calib = load_split("calib", data).select(range(10), per_class=per_class)
    t0 = time.perf_counter()
    x = loaded.description.normalize(calib.x)
    y = calib.y.astype("int64")
    n_classes = loaded.description.num_classes
    st = collect_stats(graph, x, y, n_classes, gram=True)
    phases = {"moments": time.perf_counter() - t0}
    st.impact_grad = grad_impacts(graph, x, y, n_classes)
    phases["grad"] = time.perf_counter() - t0 - sum(phases.values())
    if impact in ("fd", "both"):
        st.impact_fd = fd_impacts(graph, x, y, n_classes, per_class=fd_per_class)
        phases["fd"] = time.perf_counter() - t0 - sum(phases.values())
    mhash = model_hash(loaded.module, loaded.description)
    blob = stats_to_bytes(st, graph, mhash, loaded.description,
                          {"per_class": per_class, "data": calib.source, "images": len(calib), "impact": impact})
    return blob, {"model_hash": mhash, "images": len(calib), "consumers": len(st.mean), "groups": len(graph.groups),
                  "seconds": round(time.perf_counter() - t0, 2),
                  "phase_seconds": {k: round(v, 2) for k, v in phases.items()}, "bytes": len(blob)}


def graph_stats(args) -> dict:
    """``harness stats --model GRAPH``: compute and write the artifact; returns the JSON summary."""
    from device.files import atomic_write_bytes

    if args.per_class < 1:
        raise UsageError("--per-class must be at least 1")
    loaded = load_graph_model(args)
    blob, info = stats_bytes(loaded, args.per_class, args.data, impact=getattr(args, "impact", "grad") or "grad",
                             fd_per_class=getattr(args, "fd_per_class", 10) or 10)
    atomic_write_bytes(args.output, blob)
    return {"output": args.output, "model": args.model, **info}


def graph_accuracy(args) -> dict:
    """``harness accuracy --model GRAPH``: the specialist and the unpruned model on the classes' test images."""
    from specialist.data import load_split
    from specialist.graph.specialize import subset_accuracies

    if args.per_class is not None and args.per_class < 1:
        raise UsageError("--per-class must be at least 1")
    loaded = load_graph_model(args)
    check_cifar(loaded.description)
    test = load_split("test", args.data)
    loaded, spec = build_graph_from_args(args, loaded=loaded)
    sub = test.select(spec.classes, per_class=args.per_class, exact_only=args.exact_only)
    x = loaded.description.normalize(sub.x)
    acc, ref = subset_accuracies(loaded.module, spec.module, spec.classes, x, sub.y)
    return {"model": args.model, "classes": spec.classes, "level": spec.level, "method": spec.method.name,
            "flops_pruned_pct": round(spec.flops_pruned_pct, 3), "accuracy": acc, "accuracy_unpruned": ref,
            "n": len(sub), "exact_only": bool(args.exact_only), "build_ms": round(spec.build_ms, 1)}

"""``harness export``: a specialist (file, or built on the fly) to a verified ExecuTorch ``.pte`` + manifest."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cliutil import add_json_flag, bounded_int, check_output_file, finite_float, print_json, short
from harness.errors import UsageError


def register(sub) -> None:
    from harness.buildargs import add_build_args

    p = sub.add_parser(
        "export", help="export a specialist (or the base model) to an ExecuTorch .pte with a manifest",
        description="Export SPEC (a specialist file from 'harness build -o', or --classes/--level to build one; "
                    "--level 0 exports the base model) to an ExecuTorch program (XNNPACK delegate by default), "
                    "check it with the ExecuTorch runtime against PyTorch (max abs diff <= 1e-4) and write "
                    "OUT.pte plus OUT.manifest.json.")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="specialist file (.pt from 'harness build -o')")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pte", help="program to write")
    add_build_args(p, classes_required=False, level=False)
    p.add_argument("--level", type=finite_float(0.0, 99.0), default=None, metavar="PCT",
                   help="build on the fly: percent of channels removed (0 = the base model)")
    p.add_argument("--multiple-of", type=bounded_int(1, 1024), default=None, metavar="N",
                   help="round kept channel counts to a multiple of N (XNNPACK-friendly widths)")
    p.add_argument("--backend", choices=("xnnpack", "portable"), default=None,
                   help="XNNPACK delegate (default) or ExecuTorch's portable kernels")
    p.add_argument("--quantize", choices=("none", "int8"), default=None,
                   help="int8: post-training quantization with the XNNPACK quantizer on calibration images")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 directory (calibration and test images)")
    p.add_argument("--no-accuracy", action="store_true",
                   help="skip the test-accuracy comparison of exact vs bias-folded compensation")
    p.add_argument("--options", metavar="TOML", help="export options file ([export] table); flags win")
    add_json_flag(p)
    p.set_defaults(func=run)


def _options(args):
    import dataclasses

    from harness.options import load_options
    from specialist.export import ExportOptions

    opts = load_options(ExportOptions, args.options, "export", "export options", UsageError) if args.options \
        else ExportOptions()
    changes: dict = {"measure_accuracy": not args.no_accuracy}
    if args.backend:
        changes["backend"] = args.backend
    if args.quantize:
        changes["quantize"] = args.quantize
    if args.fold:
        changes["fold"] = args.fold
    return dataclasses.replace(opts, **changes)


def _resolve(args):
    """(weights, classes, level, method name, flops, flops_base, base hash, stats hash)."""
    from harness.buildargs import build_from_args, load_base, parse_classes
    from specialist.flops import BASE_FLOPS, total_flops

    if args.spec and args.level is not None:
        raise UsageError("give either SPEC or --classes/--level, not both")
    if args.spec:
        from specialist.specialist_io import load_specialist

        s = load_specialist(args.spec)
        return (s.weights, list(s.classes), float(s.level), s.method.name, int(s.flops), int(s.flops_base),
                s.hashes.get("base_model", ""), s.hashes.get("stats", ""))
    if args.level is None:
        raise UsageError("give a specialist file SPEC, or --classes and --level (--level 0: the base model)")
    base = load_base(args)
    if args.level == 0:
        classes = parse_classes(args.classes) if args.classes else list(range(10))
        return base, classes, 0.0, "base", total_flops(base.channels()), BASE_FLOPS, base.content_hash(), ""
    if not args.classes:
        raise UsageError("--level needs --classes (e.g. --classes 0,1,2)")
    # Built with exact constants, so the export can fold them itself and measure the border error.
    s = build_from_args(args, float(args.level), base=base, fold="exact", multiple_of=args.multiple_of)
    return (s.weights, list(s.classes), float(s.level), s.method.name, int(s.flops), int(s.flops_base),
            s.hashes.get("base_model", ""), s.hashes.get("stats", ""))


def run(args) -> int:
    from harness.exportcheck import ExportCheckError, export_weights, write_manifest_for

    out = Path(args.output)
    if out.suffix != ".pte":
        raise UsageError(f"-o {short(str(out))}: the output must end in .pte")
    check_output_file(out)  # before the build and export: a bad -o costs nothing and leaves nothing
    from harness.graphargs import is_graph_model, nin_branch
    from specialist.graph.specialize import is_graph_specialist_file

    if is_graph_model(args) or (args.spec and is_graph_specialist_file(args.spec)):
        return _run_graph(args, out)
    nin_branch(args)
    opts = _options(args)
    weights, classes, level, method, flops, flops_base, base_hash, stats_hash = _resolve(args)
    try:
        report, exported = export_weights(weights, out, opts, classes=classes, data=args.data)
        write_manifest_for(report, exported, base_hash=base_hash, stats_hash=stats_hash, classes=classes,
                           level=level, method=method, flops=flops, flops_base=flops_base)
    except ExportCheckError as exc:
        if args.json:
            d = exc.report.to_dict()
            d["error"] = str(exc)
            print_json(d)
        raise
    except OSError as exc:  # the exporter removes its temporary file
        raise UsageError(f"-o {short(str(out))}: cannot write ({exc.strerror or exc})") from None
    d = report.to_dict()
    d.update({"classes": classes, "level": level, "method": method, "flops": flops,
              "flops_pruned_pct": round(100.0 * (1 - flops / flops_base), 3), "channels": exported.channels()})
    if args.json:
        print_json(d)
    else:
        print(f"wrote {out} ({report.pte_bytes} bytes, {report.backend}, quantize {report.quantize}) and "
              f"{report.manifest}")
        print(f"check: max abs diff {report.max_abs_diff:.3g} <= {report.atol:g} on {report.verify_images} "
              f"{report.verify_input}; portable ops {report.portable_ops}; extra nodes {report.extra_nodes}")
        if report.border_error:
            be = report.border_error
            print(f"compensation folded into biases: border error max {be['max_abs_scores']:.3g} "
                  f"(scores), top-1 agreement {be['top1_agreement_pct']:.1f}%"
                  + (f"; accuracy exact {be['accuracy']['exact_pct']:.2f}% vs folded {be['accuracy']['folded_pct']:.2f}% "
                     f"on {be['accuracy']['images']} test images" if be.get("accuracy") else ""))
        if report.accuracy and "float_pct" in report.accuracy:
            a = report.accuracy
            print(f"accuracy on {a['images']} test images: float {a['float_pct']:.2f}%, int8 {a['int8_pct']:.2f}% "
                  f"({a['change_pct']:+.2f})")
        sys.stdout.flush()
    return 0


def _run_graph(args, out: Path) -> int:
    """Graph models: a saved graph specialist, or --model/--classes/--level built on the fly (--level 0: the
    base model); lowered with the model's own input shape (XNNPACK, portable or int8), verified with the
    ExecuTorch runtime and written with a manifest (``harness.graphexport``)."""
    from harness.graphargs import build_graph_from_args, graph_classes, load_base_info, load_graph_model
    from harness.graphexport import GraphExportJob, export_graph
    from specialist.graph.artifact import model_hash

    if args.options:
        raise UsageError("graph models: --options is not supported yet (use --backend, --quantize, --multiple-of)")
    if args.multiple_of and (args.spec or args.level == 0):
        raise UsageError("--multiple-of applies when building (--classes/--level > 0), not to SPEC or --level 0")
    if args.spec and args.level is not None:
        raise UsageError("give either SPEC or --classes/--level, not both")
    backend, quantize = args.backend or "xnnpack", args.quantize or "none"
    if quantize == "int8" and backend != "xnnpack":
        raise UsageError("--quantize int8 needs --backend xnnpack (the portable kernels have no int8 convolution)")
    fold, extra, stats_hash = "none", 0, ""
    if args.spec:
        from specialist.graph.specialize import read_specialist_file, rebuild

        d = read_specialist_file(args.spec)
        loaded = load_base_info(d["base"])
        module, classes, level, method = rebuild(loaded, d), list(d["classes"]), float(d["level"]), d["method"]
        flops, flops_base = int(d["flops"]), int(d["flops_base"])
        fold, extra, stats_hash = d["fold"], len(d["per_position"]), d["hashes"].get("stats", "")
    elif args.level is None:
        raise UsageError("give a specialist file SPEC, or --classes and --level (--level 0: the base model)")
    elif args.level == 0:
        loaded = load_graph_model(args)
        k = loaded.description.num_classes
        classes = graph_classes(args.classes, k) if args.classes else list(range(k))
        module, level, method = loaded.module, 0.0, "base"
        from specialist.graph.flops import total_flops

        flops = flops_base = total_flops(module, loaded.example())
    else:
        if not args.classes:
            raise UsageError("--level needs --classes (e.g. --classes 0,1,2)")
        loaded, spec = build_graph_from_args(args, float(args.level))
        module, classes, level, method = spec.module, spec.classes, spec.level, spec.method.name
        flops, flops_base = spec.flops, spec.flops_base
        fold, extra, stats_hash = spec.method.fold, len(spec.report.per_position), spec.hashes.get("stats", "")
    job = GraphExportJob(module, loaded.description, tuple(classes), level, method, int(flops), int(flops_base),
                         model_hash(loaded.module, loaded.description), stats_hash, fold=fold, extra_nodes=extra,
                         backend=backend, quantize=quantize, data=args.data)
    try:
        d = export_graph(job, out)
    except OSError as exc:
        raise UsageError(f"-o {short(str(out))}: cannot write ({exc.strerror or exc})") from None
    if args.json:
        print_json(d)
    else:
        print(f"wrote {out} ({d['pte_bytes']} bytes, {d['backend']}, quantize {d['quantize']}) and {d['manifest']}")
        print(f"check: max abs diff {d['max_abs_diff']:.3g} <= {d['atol']:.3g} on {d['verify_images']} "
              f"{d['verify_input']}; {d['flops_pruned_pct']:.1f}% FLOPs pruned")
        sys.stdout.flush()
    return 0

"""harness build: a specialist from the statistics artifact, with its Table 1 layer table."""

from __future__ import annotations

import sys

from harness.buildargs import add_build_args, build_from_args
from harness.cliutil import add_json_flag, check_output_file, print_json, short
from harness.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("build", help="build a specialist (prune + compensate) and print its layer table")
    add_build_args(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the specialist here (.pt)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.exportcheck import save_specialist
    from harness.graphargs import is_graph_model, nin_branch
    from specialist.flops import flops_table_markdown, layer_costs

    if args.output:
        check_output_file(args.output)  # before the build: a bad -o costs nothing and leaves nothing
    if is_graph_model(args):
        return _run_graph(args)
    nin_branch(args)
    spec = build_from_args(args)
    if args.output:
        try:
            save_specialist(spec, args.output)
        except OSError as exc:  # the temporary file is already removed
            raise UsageError(f"-o {short(args.output)}: cannot write ({exc.strerror or exc})") from None
    if args.json:
        out = spec.summary()
        out["output"] = args.output
        print_json(out)
    else:
        print(f"specialist for classes {spec.classes}, level {spec.level:g}% ({spec.method.name}: "
              f"{spec.method.compensation} compensation, {spec.method.impact} impacts)")
        print(flops_table_markdown(layer_costs(spec.weights.channels())))
        print(f"FLOPs {spec.flops:.3g} of {spec.flops_base:.3g}: {spec.flops_pruned_pct:.1f}% pruned; "
              f"built in {spec.build_ms:.0f} ms" + (f"; saved to {args.output}" if args.output else ""))
        sys.stdout.flush()
    return 0


def _run_graph(args) -> int:
    from device.files import atomic_write_bytes
    from harness.graphargs import build_graph_from_args
    from specialist.graph.flops import format_table
    from specialist.graph.specialize import specialist_bytes

    _, spec = build_graph_from_args(args)
    if args.output:
        atomic_write_bytes(args.output, specialist_bytes(spec))
    if args.json:
        out = spec.summary()
        out["output"] = args.output
        print_json(out)
    else:
        m = spec.method
        print(f"{args.model} specialist for classes {spec.classes}, level {spec.level:g}% ({m.name}: {m.criterion} "
              f"selection, {m.compensation} compensation, {m.fold} fold)")
        print(format_table(spec.rows))
        print(f"FLOPs {spec.flops:.4g} of {spec.flops_base:.4g}: {spec.flops_pruned_pct:.1f}% pruned; built in "
              f"{spec.build_ms:.0f} ms" + (f"; saved to {args.output}" if args.output else ""))
        sys.stdout.flush()
    return 0

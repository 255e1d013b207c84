"""harness accuracy: a specialist's accuracy on its classes' test images beside the unpruned model's."""

from __future__ import annotations

from harness.buildargs import add_build_args, build_from_args, load_base
from harness.cliutil import add_json_flag, bounded_int, print_json


def register(sub) -> None:
    p = sub.add_parser("accuracy", help="accuracy of a specialist on the test images of its classes")
    add_build_args(p)
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 directory (default: $HARNESS_DATA or ../shared/data/cifar10)")
    p.add_argument("--per-class", type=bounded_int(1, 100_000), metavar="N", help="at most N test images per class")
    p.add_argument("--exact-only", action="store_true", help="only the bit-exact test images")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.errors import UsageError
    from harness.graphargs import graph_accuracy, is_graph_model, nin_branch
    from specialist.accuracy import subset_accuracy
    from specialist.data import load_split

    if is_graph_model(args):
        out = graph_accuracy(args)
        if args.json:
            print_json(out)
        else:
            print(f"{args.model} classes {out['classes']}, level {out['level']:g}% ({out['flops_pruned_pct']:.1f}% "
                  f"FLOPs pruned, {out['method']}): accuracy {100 * out['accuracy']:.2f}% vs unpruned "
                  f"{100 * out['accuracy_unpruned']:.2f}% on {out['n']} test images")
        return 0
    nin_branch(args)
    if args.per_class is not None and args.per_class < 1:
        raise UsageError("--per-class must be at least 1")
    base = load_base(args)
    test = load_split("test", args.data)
    spec = build_from_args(args, base=base)
    test = test.select(spec.classes, per_class=args.per_class, exact_only=args.exact_only)
    acc = subset_accuracy(spec.weights, spec.classes, test, class_outputs=spec.classes)
    ref = subset_accuracy(base, spec.classes, test)
    out = {"classes": spec.classes, "level": spec.level, "method": spec.method.name,
           "flops_pruned_pct": round(spec.flops_pruned_pct, 3), "accuracy": acc.accuracy,
           "accuracy_unpruned": ref.accuracy, "n": acc.n, "exact_only": bool(args.exact_only),
           "build_ms": round(spec.build_ms, 1)}
    if args.json:
        print_json(out)
    else:
        print(f"classes {spec.classes}, level {spec.level:g}% ({spec.flops_pruned_pct:.1f}% FLOPs pruned, "
              f"{spec.method.name}): accuracy {100 * acc.accuracy:.2f}% vs unpruned {100 * ref.accuracy:.2f}% "
              f"on {acc.n} test images")
    return 0

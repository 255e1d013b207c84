"""harness sweep: the paper's Table 2 (accuracy by subset size and level, mean and 95% CI) for any method."""

from __future__ import annotations

from harness.buildargs import add_model_args
from harness.cliutil import LazyChoices, add_json_flag, add_output_flag, print_json

DESCRIPTION = ("For each subset size, --subsets seeded random class subsets; for each level, build the specialist "
               "and measure its accuracy on the test images of its classes.  Cells: mean and 95%% CI half-width "
               "over the subsets, plus the unpruned 'None' column.  Writes Markdown, CSV, PNG and JSON under "
               "-o/--output; finished work is kept in OUTPUT/sweep.sqlite, so an interrupted sweep continues where it "
               "stopped.")


def _engines() -> tuple[str, ...]:
    from specialist.evaluate import ENGINES  # imports torch: only when --engine is given or help is shown

    return tuple(ENGINES)


def register(sub) -> None:
    from specialist.methods import DEFAULT_METHOD

    p = sub.add_parser("sweep", help="accuracy sweep over subset sizes and levels (Table 2), resumable",
                       description=DESCRIPTION)
    p.add_argument("--sizes", metavar="LIST", help="subset sizes, e.g. 2-10 or 2,5,10 (default 2-10)")
    p.add_argument("--levels", metavar="LIST", help="percent of channels removed, e.g. 10,20,30,40,50 (default)")
    p.add_argument("--subsets", type=int, metavar="N", help="random class subsets per size (default 10)")
    p.add_argument("--seed", type=int, metavar="N", help="seed of the subset draw (default 0)")
    p.add_argument("--method", metavar="NAME[,NAME]",
                   help=f"method preset(s) or .toml file(s), comma-separated (default {DEFAULT_METHOD}); "
                        "see 'harness methods'")
    p.add_argument("--per-class", type=int, metavar="N", help="at most N test images per class (default all)")
    p.add_argument("--exact-only", action="store_true", default=None, help="only the bit-exact test images")
    p.add_argument("--quick", action="store_true", help="3 subsets and 200 test images per class")
    p.add_argument("--compare-paper", action="store_true", help="put the measured cells beside the paper's")
    p.add_argument("--paper-table", metavar="CSV",
                   help="the paper's Table 2 in table2_accuracy.csv layout (default: the published numbers)")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 directory (default: $HARNESS_DATA or ../shared/data/cifar10)")
    add_model_args(p)
    from harness.graphargs import add_graph_args

    add_graph_args(p)
    add_output_flag(p, "output directory (default results/sweep)", dest="out", old=("--out",),
                    default="results/sweep", metavar="DIR")
    p.add_argument("--fresh", action="store_true", help="discard stored results of this sweep and recompute")
    p.add_argument("--db", default=None, metavar="PATH|URL",
                   help="keep the finished cells here (a SQLite file or postgresql:// URL; default $HARNESS_DB "
                        "when set, else OUT/sweep.sqlite)")
    p.add_argument("--engine", choices=LazyChoices(_engines), metavar="NAME",
                   help="evaluation engine: %(choices)s (default auto: checked bfloat16 where the CPU has native "
                        "bfloat16, else torch-cl; every engine gives float32's counts, docs/sweep.md)")
    p.add_argument("--calib-per-class", type=int, metavar="N", help="calibration images per target class for "
                   "methods that reconstruct from images (recon: default 200, each with its mirror image); "
                   "other methods are unchanged")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default 2; 1 = this process)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads per worker (default 1 with workers)")
    p.add_argument("--chunk", type=int, metavar="N", help="images per evaluation chunk (default 32)")
    p.add_argument("--config", metavar="TOML", help="sweep options from a TOML file ([sweep] table); flags override")
    p.add_argument("--lab", metavar="HEAD", help="run the tasks as Ray tasks on the lab at HEAD (HOST:PORT; docs/lab.md)")
    add_json_flag(p)
    p.set_defaults(db_default_own=True)  # no --db: $HARNESS_DB, else OUT/sweep.sqlite (not the results database)
    p.set_defaults(func=run)


def _options(args):
    from harness.sweep import SweepOptions, parse_levels, parse_sizes

    opts = SweepOptions.from_toml(args.config) if args.config else SweepOptions()
    if args.quick:
        opts = opts.quick()
    methods = None
    if args.method is not None:
        methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
    return opts.replace(
        sizes=parse_sizes(args.sizes) if args.sizes is not None else None,
        levels=parse_levels(args.levels) if args.levels is not None else None,
        subsets=args.subsets, seed=args.seed, methods=methods, per_class=args.per_class,
        exact_only=args.exact_only, engine=args.engine, workers=args.workers, threads=args.threads,
        chunk_images=args.chunk, calib_per_class=args.calib_per_class,
    )


def _lab_executor(args):
    """``--lab HEAD``: the tasks as Ray tasks on the lab (harness/lab/sweep.py)."""
    if not getattr(args, "lab", None):
        return None
    from harness.lab.sweep import lab_executor

    return lab_executor(args.lab)


def run(args) -> int:
    from harness import sweep as sw
    from harness.cliutil import progress
    from harness.errors import HarnessError, UsageError
    from harness.graphargs import is_graph_model, nin_branch
    from harness.sweep.run import nin_methods
    from harness.sweep.store import cells_location

    opts = _options(args)
    cells_location(args.out, getattr(args, "db", None))  # a malformed --db: one line, before any work
    graph = is_graph_model(args)
    if graph:  # resnet20, pkg.mod:factory, .pt2 (harness/sweep/graph.py)
        from harness.sweep.graph import graph_methods

        if args.input_shape or args.input_mean or args.input_std:
            raise UsageError("sweep: --input-shape/--input-mean/--input-std are not supported (CIFAR-10 models)")
        from specialist.graph.specialize import GRAPH_DEFAULT_METHOD
        from specialist.methods import DEFAULT_METHOD

        if args.method is None and opts.methods == (DEFAULT_METHOD,):  # the default: the graph default
            opts = opts.replace(methods=(GRAPH_DEFAULT_METHOD,))
        graph_methods(opts.methods, opts.calib_per_class)
    else:
        nin_branch(args)
    if not graph:  # unknown names: one line listing the known ones; --calib-per-class without such a method
        nin_methods(opts)
    paper = None
    if args.compare_paper:
        paper = sw.load_paper_table(args.paper_table) if args.paper_table else sw.PAPER_TABLE2
    bar: dict = {}

    def on_progress(done: int, total: int) -> None:
        if "it" not in bar:
            bar["it"] = iter(progress(range(total), total=total, desc="sweep tasks", unit="task"))
        next(bar["it"], None)

    from concurrent.futures.process import BrokenProcessPool

    try:
        res = sw.run_sweep(opts, model_path=args.model, stats_path=args.stats, data_dir=args.data,
                           out_dir=args.out, fresh=args.fresh, progress=on_progress, weights=args.weights,
                           db=getattr(args, "db", None), executor=_lab_executor(args))
    except BrokenProcessPool as exc:
        raise HarnessError(f"a sweep worker died ({exc}); finished tasks are saved in {args.out}/sweep.sqlite: "
                           "run the same command again to continue") from None
    files = sw.write_outputs(res, args.out, paper)
    if args.json:
        print_json(sw.result_json(res, paper, files))
        return 0
    for t in res.tables:
        print(f"## method {t.method}\n")
        print(sw.compare_paper_markdown(t, paper) if paper is not None else sw.table2_markdown(t))
    if len(res.tables) > 1:
        print("## methods side by side (paired differences to the first)\n")
        print(sw.methods_markdown(res.tables))
    for note in res.notes:
        print(f"note: {note}")
    tm = sw.result_json(res)["timing"]
    print(f"wall {tm['wall_s']} s: {tm['jobs_run']} jobs run, {tm['jobs_resumed']} resumed, "
          f"{tm['image_evals']} image evaluations ({tm['image_evals_per_worker_s']} per worker-second), "
          f"builds {tm['build_ms_total'] / 1000:.1f} s")
    print("files: " + ", ".join(files.values()))
    return 0

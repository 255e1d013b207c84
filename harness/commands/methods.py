"""harness methods: the method presets and what each combines."""

from __future__ import annotations

from harness.cliutil import add_json_flag, print_json


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the specialist-building method presets")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from specialist.methods import DEFAULT_METHOD, PRESETS

    if args.json:
        print_json({"default": DEFAULT_METHOD, "methods": [m.as_dict() for m in PRESETS.values()]})
        return 0
    for m in PRESETS.values():
        star = " (default)" if m.name == DEFAULT_METHOD else ""
        alloc = m.allocation + (f" (max {m.max_remove_pct:g}% of a layer)" if m.allocation == "global" else "")
        extra = f" multiple_of={m.multiple_of}" if m.multiple_of > 1 else ""
        print(f"{m.name}{star}: {m.description}\n    score={m.score} impact={m.impact} allocation={alloc} "
              f"compensation={m.compensation} fold={m.fold} ridge={m.ridge:g}{extra}")
    return 0

"""Flags shared by every command that builds a specialist (build, accuracy, sweep, export, run)."""

from __future__ import annotations

import argparse

from harness.cliutil import LazyChoices, parse_int_list
from harness.graphargs import add_graph_args


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODEL", help="base model: NIN weights .npz (default: the shipped NIN), a zoo "
                   "name (resnet20, resnet56, vgg16_bn, mobilenetv2), package.module:factory or a .pt2 program")
    p.add_argument("--stats", metavar="FILE", help="statistics artifact (default: the one shipped for the default model)")


def add_build_args(p: argparse.ArgumentParser, classes_required: bool = True, level: bool = True) -> None:
    from specialist.methods import DEFAULT_METHOD, PRESETS, choices

    def names(field: str) -> LazyChoices:  # the registries import torch: read them only when a flag is used
        return LazyChoices(lambda: choices()[field])

    p.add_argument("--classes", required=classes_required, metavar="LIST",
                   help="target classes, e.g. 0,1,2 (CIFAR-10 indices 0-9)")
    if level:
        p.add_argument("--level", type=float, required=True, metavar="PCT",
                       help="percent of channels removed from CCCP2..CCCP5 (0 = the unpruned model)")
    p.add_argument("--method", default=None, metavar="NAME",
                   help=f"method preset ({', '.join(PRESETS)}) or a .toml file (default {DEFAULT_METHOD}; graph "
                   "models: lsq, impact, activation, l1, variance, default lsq)")
    p.add_argument("--compensation", choices=names("compensation"), metavar="NAME",
                   help="override the preset's compensation: %(choices)s")
    p.add_argument("--impact", choices=names("impact"), metavar="NAME",
                   help="override the preset's impact, finite difference or autograd: %(choices)s")
    p.add_argument("--fold", choices=names("fold"), metavar="NAME",
                   help="mean constants: exact per-position add node, or folded into the bias: %(choices)s")
    p.add_argument("--calib-per-class", type=int, metavar="N", help="calibration images per target class for "
                   "methods that reconstruct from images (recon: default 200)")
    add_model_args(p)
    add_graph_args(p)


def parse_classes(text: str) -> list[int]:
    from specialist.model import N_CLASSES
    from specialist.select import check_classes

    return check_classes(parse_int_list(text, "--classes", 0, N_CLASSES - 1))


def load_base(args):
    from specialist.model import load_weights

    return load_weights(getattr(args, "model", None))


def build_from_args(args, level: float | None = None, base=None, **overrides):
    """Build the specialist the flags describe (level 0 still goes through the builder): the one call of
    :func:`specialist.build.build_specialist` for every command.  ``overrides`` (method fields such as
    ``fold`` or ``multiple_of``) win over the flags."""
    from specialist.build import build_specialist

    flags = {"compensation": args.compensation, "impact": args.impact, "fold": getattr(args, "fold", None),
             "calib_per_class": getattr(args, "calib_per_class", None)}
    from specialist.methods import DEFAULT_METHOD

    return build_specialist(parse_classes(args.classes), args.level if level is None else level,
                            args.method or DEFAULT_METHOD,
                            base=base if base is not None else load_base(args),
                            stats_path=getattr(args, "stats", None) or None, calib=getattr(args, "data", None),
                            **{**flags, **overrides})

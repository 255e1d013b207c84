"""Three ways to bring a model: a zoo name, ``package.module:factory`` + a state_dict, a ``.pt2`` program.

:func:`load_model` returns a :class:`LoadedModel`: the eval-mode module and its
:class:`~specialist.zoo.ModelDescription` (input shape, class count, normalisation).  The input shape and
class count come from the model (a ``.pt2`` records its input; a factory's model is run once on the default
CIFAR shape, or the shape given); CIFAR-10 normalisation is the default for 3-channel models.  Overrides:
``input_shape``, ``mean``, ``std``, or a sidecar JSON next to the weights / program (``<file>.json`` with any of
``input_shape``, ``input_mean``, ``input_std``; other keys ignored).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specialist.errors import DataError, InputError, UsageError
from specialist.zoo import (
    CIFAR10_MEAN,
    CIFAR10_SHAPE,
    CIFAR10_STD,
    ZOO,
    ModelDescription,
    load_state_dict_file,
    zoo_model,
)

log = logging.getLogger(__name__)

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the graph machinery: eval-mode module plus its description."""

    module: nn.Module
    description: ModelDescription

    def example(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the model's shape."""
        return torch.zeros((batch, *self.description.input_shape))


def model_kind(spec: str) -> str:
    """``zoo``, ``factory`` or ``program`` for a ``--model`` value (UsageError when none fits)."""
    if spec in ZOO:
        return "zoo"
    if spec.endswith(".pt2"):
        return "program"
    if _FACTORY.match(spec):
        return "factory"
    raise UsageError(f"--model {spec!r} is neither a zoo name ({', '.join(sorted(ZOO))}), a "
                     "package.module:factory nor a .pt2 program")


def _sidecar(path: Path | None) -> dict:
    if path is None:
        return {}
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"sidecar {side} is not JSON: {exc}") from None
    return {k: data[k] for k in ("input_shape", "input_mean", "input_std") if isinstance(data, dict) and k in data}


def _tuple(v, what: str, kind=float) -> tuple:
    try:
        return tuple(kind(x) for x in v)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a list of numbers, got {v!r}") from None


def _call_factory(spec: str) -> nn.Module:
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InputError(f"cannot import {mod_name!r} for --model {spec}: {exc}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise InputError(f"{mod_name} has no callable {fn_name!r} (--model {spec})")
    model = fn()
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


@torch.no_grad()
def _num_classes(model: nn.Module, shape: tuple[int, ...], spec: str) -> int:
    try:
        out = model(torch.zeros((1, *shape)))
    except Exception as exc:  # noqa: BLE001 - the user's model failing on its input is a usage problem
        raise InputError(f"{spec} does not run on an input of shape {list(shape)} "
                         f"(give --input-shape): {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(f"{spec} must return class scores [N, classes]; it returned "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return int(out.shape[1])


def load_model(spec: str, weights: str | Path | None = None, input_shape=None, mean=None, std=None,
               pretrained: bool = True, seed: int = 0) -> LoadedModel:
    """Load ``spec`` (zoo name, ``package.module:factory`` or ``.pt2`` path) in eval mode.

    ``weights``: a state_dict file for a factory (or to replace a zoo model's weights); refused for a program.
    """
    kind = model_kind(spec)
    wpath = Path(weights) if weights is not None else None
    if kind == "program":
        if wpath is not None:
            raise UsageError("--weights does not apply to a .pt2 program (its weights are inside it)")
        from specialist.graph.pt2 import load_program, program_to_module

        module, shape = program_to_module(load_program(spec))
        side = _sidecar(Path(spec))
        name, source = Path(spec).stem, f"program:{spec}"
    elif kind == "zoo":
        module, desc = zoo_model(spec, pretrained=pretrained and wpath is None, seed=seed)
        if wpath is not None:  # a state_dict; NIN also takes its own .npz format
            loader = ZOO[spec].loader if wpath.suffix == ".npz" and ZOO[spec].loader else load_state_dict_file
            loader(module, wpath)
        shape, side = desc.input_shape, _sidecar(wpath)
        name, source = spec, f"zoo:{spec}" + (f"+{wpath}" if wpath else "")
        if wpath is None and input_shape is None and mean is None and std is None:
            return LoadedModel(module.eval(), desc)
    else:
        module = _call_factory(spec)
        if wpath is not None:
            load_state_dict_file(module, wpath)
        shape, side = CIFAR10_SHAPE, _sidecar(wpath)
        name, source = spec, f"factory:{spec}" + (f"+{wpath}" if wpath else "")
    if input_shape is None and "input_shape" in side:
        input_shape = side["input_shape"]
    if input_shape is not None:
        shape = _tuple(input_shape, "input shape", int)
    module = module.eval()
    c = shape[0] if shape else 3
    default_mean, default_std = (CIFAR10_MEAN, CIFAR10_STD) if c == 3 else ((0.0,) * c, (1.0,) * c)
    m = _tuple(mean if mean is not None else side.get("input_mean", default_mean), "input mean")
    s = _tuple(std if std is not None else side.get("input_std", default_std), "input std")
    k = _num_classes(module, shape, spec)
    return LoadedModel(module, ModelDescription(name, shape, k, m, s, source))

"""Calibration images for :mod:`specialist.recon`: the first images of each target class of the calibration
split, and augmented copies (mirror images, reflection-padded translations) up to a budget.  The targets of the
reconstruction are the original network's outputs, so any transformed image is a valid calibration image."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from specialist.data import Split, load_split
from specialist.errors import DataError
from specialist.model import NinWeights

#: calibration images are used together with their horizontal mirror images (:func:`build_reconstructed`)
FLIP = True
#: translations (dy, dx) in pixels of further augmented copies (reflection-padded), used in this order, each on
#: the images and then on their mirror images, while the copies fit in :data:`CALIB_BUDGET`
SHIFTS = ((0, 3), (3, 0), (0, -3), (-3, 0), (2, 2), (-2, -2), (2, -2), (-2, 2))
#: calibration images (originals and copies together) that shifted copies fill up to (the mirror images are
#: always used).  0: none.  Measured (docs/methods.md): 2 classes at level 50, 4,000 images ({3,6} 1.40, {2,3}
#: 2.95 points of drop) against the mirror images only (1.95, 2.70), 5-7x the build time; with the class-aware
#: selection, 2,400 images gave nothing over 800 (1.55/2.70 vs 1.55/2.50)
CALIB_BUDGET = 0

_CALIB_CACHE: OrderedDict[str, Split] = OrderedDict()


def calib_split(data: str | Path | Split | None = None) -> Split:
    """The calibration split: ``data`` itself when it is a :class:`Split`, else loaded from the data directory
    ``data`` (default as :func:`specialist.data.resolve_data_dir`) and cached per directory (the last two)."""
    if isinstance(data, Split):
        return data
    key = str(data)
    if key not in _CALIB_CACHE:
        _CALIB_CACHE[key] = load_split("calib", data)
        while len(_CALIB_CACHE) > 2:
            _CALIB_CACHE.popitem(last=False)
    return _CALIB_CACHE[key]


def calibration_images(base: NinWeights, classes, per_class: int, data: str | Path | Split | None = None,
                       skip: int = 0) -> np.ndarray:
    """The first ``per_class`` calibration images of each target class (after its first ``skip``: held-out
    images, possibly none), normalised for ``base``.

    ``data``: a :class:`Split` of calibration images, or the data directory (default: as
    :func:`specialist.data.resolve_data_dir`); the loaded split is cached per directory."""
    split = calib_split(data)
    sub = split.select(sorted(classes), per_class=per_class + skip)
    if skip:
        rank = np.zeros(len(sub.y), np.int64)
        for c in set(sub.y.tolist()):
            rank[sub.y == c] = np.arange(int(np.sum(sub.y == c)))
        return base.normalize(sub.x[rank >= skip])
    missing = [c for c in classes if not np.any(sub.y == c)]
    if missing:
        raise DataError(f"no calibration images of class {missing[0]} in {split.source}")
    return base.normalize(sub.x)


def shift_images(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` [N, C, H, W] translated by ``dy`` rows down and ``dx`` columns right, the uncovered border filled by
    reflection (``out[.., i, j] = x[.., i - dy, j - dx]``, indices reflected at the edges)."""
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    h, w = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    return np.ascontiguousarray(xp[:, :, p - dy : p - dy + h, p - dx : p - dx + w])


def augment_images(images: np.ndarray, budget: int | None = None, flip: bool | None = None,
                   shifts=None) -> np.ndarray:
    """The calibration images and augmented copies (the targets are the original network's outputs, so any
    transformed image is a valid calibration image): the mirror images (``flip``), then each of ``shifts`` on
    the images and on their mirror images, as many copies as keep the total within ``budget`` (the images
    themselves and, with ``flip``, their mirror images always; defaults: :data:`CALIB_BUDGET`, :data:`FLIP`,
    :data:`SHIFTS`)."""
    budget = CALIB_BUDGET if budget is None else budget
    flip = FLIP if flip is None else flip
    shifts = SHIFTS if shifts is None else shifts
    n = len(images)
    out = [images]
    if flip:
        out.append(np.ascontiguousarray(images[..., ::-1]))
    variants = [(s, m) for s in shifts for m in ((False, True) if flip else (False,))]
    room = max(budget // max(n, 1) - len(out), 0)
    for (dy, dx), mirrored in variants[:room]:
        out.append(shift_images(out[1] if mirrored else images, dy, dx))
    return np.concatenate(out)

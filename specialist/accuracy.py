"""Accuracy of specialists on the test images of their classes (argmax over the kept outputs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from specialist.data import Split
from specialist.model import NinWeights, build_module, predict_scores


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float
    n: int
    correct: int


def subset_accuracy(weights: NinWeights, classes, split: Split, class_outputs=None) -> AccuracyResult:
    """Accuracy over ``split``'s images of ``classes``.

    ``class_outputs``: which class each model output stands for (a specialist's outputs are its classes in
    order; the base model's are 0..9, restricted here to ``classes``: the paper's "None" column).
    """
    cls = np.asarray(sorted(classes))
    sub = split.select(cls)
    if len(sub) == 0:
        return AccuracyResult(float("nan"), 0, 0)
    scores = predict_scores(build_module(weights), weights.normalize(sub.x))
    outputs = np.arange(scores.shape[1]) if class_outputs is None else np.asarray(class_outputs)
    if scores.shape[1] == 10 and len(cls) < 10 and class_outputs is None:
        scores, outputs = scores[:, cls], cls
    pred = outputs[scores.argmax(axis=1)]
    correct = int((pred == sub.y).sum())
    return AccuracyResult(correct / len(sub), len(sub), correct)

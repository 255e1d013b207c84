import numpy as np
import pytest

from specialist import select
from specialist.errors import UsageError


def test_paper_selection_prunes_below_percentile():
    impact = np.array([[0.1, 0.5], [0.9, -1.0], [-0.2, 0.05], [0.3, 0.3]])  # [C=4, classes=2]
    scores = select.paper_scores(impact)
    assert scores.tolist() == [0.5, 0.9, 0.05, 0.3]
    assert select.select_prune(scores, 2).tolist() == [2, 3]
    assert select.kept_from_pruned(4, np.array([2, 3])).tolist() == [0, 1]


def test_ties_are_deterministic():
    assert select.select_prune(np.zeros(6), 3).tolist() == [0, 1, 2]


def test_n_remove_and_multiples():
    assert select.n_remove(192, 30) == 58 and select.n_remove(96, 30) == 29
    assert (192 - select.n_remove(192, 30, multiple_of=8)) % 8 == 0
    assert select.n_remove(192, 0) == 0


@pytest.mark.parametrize("classes,msg", [([], "empty"), ([0, 10], "out of range"), ([1, 1], "repeated"),
                                         ([-1], "out of range")])
def test_bad_classes(classes, msg):
    with pytest.raises(UsageError, match=msg):
        select.check_classes(classes)


@pytest.mark.parametrize("level", [-1, 100, 150])
def test_bad_level(level):
    with pytest.raises(UsageError):
        select.check_level(level)

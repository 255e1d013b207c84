"""Widths that suit the runtime on graph models: ``multiple_of`` keeps every kept channel count a multiple and
lands at or under the level's FLOPs budget (uniform and global allocations)."""

from __future__ import annotations

import dataclasses

import pytest

from specialist.graph.methods import FlopModel, graph_method, plan_keep, uniform_counts
from tests.specialist.test_graph_methods import CLASSES, _setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def r20():
    return _setup("resnet20")


@pytest.mark.parametrize("method", ["lsq", "best"])
@pytest.mark.parametrize("multiple", [8, 16])
def test_rounded_widths_are_multiples_within_the_budget(r20, method, multiple):
    _, graph, st = r20
    m = dataclasses.replace(graph_method(method), multiple_of=multiple)
    model = FlopModel(graph, len(CLASSES))
    sizes = {g.root: g.size for g in graph.prunable}
    pruned_any = False
    # multiples of 16 on ResNet-20 (16/32/64 channels) cannot reach levels 40-50: every width is at 16 already
    for level in (10, 20, 30, 40, 50) if multiple == 8 else (10, 20, 30):
        keep = plan_keep(graph, st, CLASSES, level, m)
        kept = {r: len(v) for r, v in keep.items()}
        assert all(k % multiple == 0 and k >= multiple for k in kept.values()), (level, kept)
        budget = model.flops(model.vector(uniform_counts(graph, level)))
        got = model.flops(model.vector({r: sizes[r] - k for r, k in kept.items()}))
        assert got <= budget * (1 + 1e-12), (method, multiple, level, got, budget, kept)
        assert got >= 0.75 * budget, (method, multiple, level, got, budget)  # the budget is spent, not wasted
        pruned_any |= any(k < sizes[r] for r, k in kept.items())
    assert pruned_any


def test_multiple_of_one_is_the_plain_uniform_plan(r20):
    _, graph, st = r20
    plain = plan_keep(graph, st, CLASSES, 30, graph_method("lsq"))
    ones = plan_keep(graph, st, CLASSES, 30, dataclasses.replace(graph_method("lsq"), multiple_of=1))
    assert plain == ones


def test_bad_multiple_refused():
    from specialist.errors import UsageError

    with pytest.raises(UsageError, match="multiple-of"):
        graph_method("lsq", multiple_of=0)
    assert graph_method("lsq", multiple_of=8).multiple_of == 8

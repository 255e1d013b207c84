import csv
from pathlib import Path

import pytest

from specialist.flops import BASE_FLOPS, conv_flops, layer_costs, total_flops
from specialist.model import NIN_LAYERS, PRUNABLE
from specialist.select import n_remove

PAPER = Path(__file__).resolve().parents[3] / "shared" / "paper"


def full() -> dict[str, int]:
    return {s.name: s.out_ch for s in NIN_LAYERS}


def test_base_flops_by_hand():
    assert conv_flops(NIN_LAYERS[0], 3, 192) == 5 * 5 * 3 * 192 * 32 * 32 * 2 == 29_491_200
    assert conv_flops(NIN_LAYERS[3], 96, 192) == 5 * 5 * 96 * 192 * 16 * 16 * 2
    assert conv_flops(NIN_LAYERS[8], 192, 10) == 192 * 10 * 8 * 8 * 2
    assert BASE_FLOPS == 444_973_056
    assert round(BASE_FLOPS / 1e8, 2) == 4.45
    costs = layer_costs(full())
    assert costs[1].params_after == 192 * 160 + 160
    assert costs[0].params_after == 14_592  # the paper's table says 1.92e4; the architecture says this


@pytest.mark.parametrize("level,paper_pct", [(10, 14.3), (20, 27.9), (30, 38.9), (40, 48.6), (50, 57.8)])
def test_levels_give_papers_flops_pruned(level, paper_pct):
    ch = full()
    for L in PRUNABLE:
        ch[L] -= n_remove(ch[L], level)
    ch["CCCP6"] = 5
    pct = 100 * (1 - total_flops(ch) / BASE_FLOPS)
    assert abs(pct - paper_pct) <= 1.0


def test_table1_case_study_matches_paper_csv():
    if not (PAPER / "table1_layers.csv").is_file():
        pytest.skip("paper tables not available")
    rows = {r["layer"]: r for r in csv.DictReader(open(PAPER / "table1_layers.csv"))}
    ch = {L: int(rows[L]["maps_after"]) for L in rows if L != "TOTAL"}
    for c in layer_costs(ch):
        r = rows[c.name]
        assert c.flops_before == pytest.approx(float(r["flops_before"]), rel=0.01)
        assert c.flops_after == pytest.approx(float(r["flops_after"]), rel=0.01)
    pct = 100 * (1 - total_flops(ch) / BASE_FLOPS)
    assert pct == pytest.approx(float(rows["TOTAL"]["flops_pruned_pct"]), abs=0.1)

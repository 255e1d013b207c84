"""Method presets: names, TOML loading, validation, `harness methods`, and every preset building a specialist."""

import json

import numpy as np
import pytest

from specialist.allocation import plan_flops, uniform_counts
from specialist.build import build_specialist
from specialist.errors import UsageError
from specialist.flops import BASE_FLOPS
from specialist.methods import DEFAULT_METHOD, PRESETS, get_method, load_method_toml

REQUIRED = ("paper", "thinet", "captor", "l1", "variance", "merge", "best")


def test_required_presets_exist_and_paper_is_as_published():
    for name in REQUIRED:
        assert get_method(name).name == name
    p = PRESETS["paper"]
    assert (p.impact, p.score, p.allocation, p.compensation, p.corr_threshold) == ("fd", "impact", "uniform",
                                                                                   "auto", 0.5)
    assert DEFAULT_METHOD in PRESETS


def test_unknown_method_lists_known_ones():
    with pytest.raises(UsageError) as e:
        get_method("nosuch")
    assert "paper" in str(e.value) and "best" in str(e.value)


def test_toml_method(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('[method]\nname = "mine"\ndescription = "x"\nbase = "best"\nmultiple_of = 8\n'
                 '[method.layer_weights]\nCCCP5 = 2.0\n')
    m = load_method_toml(f)
    assert (m.score, m.allocation, m.multiple_of) == ("recon", "global", 8)
    assert dict(m.layer_weights) == {"CCCP5": 2.0}
    bad = tmp_path / "bad.toml"
    bad.write_text('[method]\nscore = "astrology"\n')
    with pytest.raises(UsageError, match="score"):
        load_method_toml(bad)
    bad.write_text('[method]\nallocation = "random"\n')
    with pytest.raises(UsageError, match="allocation"):
        load_method_toml(bad)


def test_methods_command_json(capsys):
    from harness.cli import main

    assert main(["methods", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in out["methods"]]
    assert set(REQUIRED) <= set(names)
    assert out["default"] == DEFAULT_METHOD
    best = next(m for m in out["methods"] if m["name"] == "best")
    assert best["allocation"] == "global"


@pytest.mark.parametrize("name", REQUIRED)
def test_every_preset_builds(name, small_stats, base_weights):
    classes = [1, 4, 7]
    m = get_method(name).replace(impact="grad")  # the small fixture artifact has autograd impacts only
    spec = build_specialist(classes, 30, m, stats=small_stats, base=base_weights)
    assert spec.kept["CCCP6"] == classes
    budget = plan_flops(uniform_counts(30, m.multiple_of), len(classes))
    # level 30 means the uniform plan's FLOPs: every method spends that budget (global within 0.5 points)
    assert spec.flops <= budget + 1
    assert 100 * (budget - spec.flops) / BASE_FLOPS < 0.5
    if m.allocation == "uniform":
        assert spec.flops == budget
    w = spec.weights
    assert all(np.isfinite(w.weights[L]).all() for L in w.weights)
    assert spec.summary()["method"] == name

import json
import math
from collections import Counter

import numpy as np
import pytest

from harness.errors import UsageError
from harness.plan import (
    RunPlan,
    balanced_latin_square,
    ci_reached,
    closing_idle,
    inferences_per_window,
    load_toml,
    make_plan,
    round_orders,
    schedule,
)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_williams_square_is_latin_and_carryover_balanced(n):
    sq = balanced_latin_square(n)
    assert sq.shape == (n if n % 2 == 0 else 2 * n, n)
    for row in sq:
        assert sorted(row) == list(range(n))
    pairs = Counter((int(a), int(b)) for row in sq for a, b in zip(row[:-1], row[1:], strict=True))
    assert len(pairs) == n * (n - 1)  # every ordered pair occurs ...
    assert len(set(pairs.values())) == 1  # ... equally often
    positions = Counter((int(s), p) for row in sq for p, s in enumerate(row))
    assert len(set(positions.values())) == 1  # each model equally often in each position


def test_schedule_brackets_every_inference_with_idle():
    keys = ["L0", "L10", "L20", "L30", "L40", "L50"]
    slots = schedule(keys, 3, seed=7)
    assert len(slots) == 2 * 6 * 3 + 1
    assert [s.seq for s in slots] == list(range(len(slots)))
    for s in slots:
        if s.kind == "inference":
            assert slots[s.seq - 1].kind == "idle" and slots[s.seq + 1].kind == "idle"
    for r in range(3):
        assert sorted(s.model_key for s in slots if s.round_idx == r and s.kind == "inference") == sorted(keys)
    assert closing_idle(6, 1) == slots[24]
    assert slots == schedule(keys, 3, seed=7)  # deterministic: resume sees the same plan
    assert round_orders(keys, 6, 1) != round_orders(keys, 6, 2)


def test_round_orders_counterbalanced_over_a_block():
    keys = ["a", "b", "c", "d"]
    orders = round_orders(keys, 4, seed=3)
    first = Counter(o[0] for o in orders)
    assert set(first.values()) == {1}


def test_defaults_by_kind_and_overrides():
    real = make_plan("real", "nexus4")
    assert real.window_s * real.min_reps >= 60 and real.min_inferences_per_model >= 1024
    v = make_plan("virtual", "virtual", {"levels": [10, 20], "seed": 5})
    assert v.levels == (10, 20) and v.seed == 5 and v.kind == "virtual"
    assert RunPlan.from_json(v.to_json()) == v


@pytest.mark.parametrize("over,msg", [
    ({"levels": [120]}, "out of range"),
    ({"levels": [10, 10]}, "repeats"),
    ({"classes": [3]}, "at least two"),
    ({"min_reps": 5, "max_reps": 3}, "min_reps"),
    ({"window_s": -1}, "window_s must be a finite number > 0"),
    ({"monitor": "usb"}, "monsoon or gauge"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"window_s": "abc"}, "window_s must be a number, not 'abc'"),
    ({"levels": "10,20"}, "levels must be a list of whole numbers"),
    ({"levels": 10}, "levels must be a list of whole numbers"),
    ({"levels": [10.7, 20]}, "levels must be a list of whole numbers"),
    ({"classes": [[0, 1]]}, "classes must be a list of whole numbers"),
    ({"target_ci_pct": "5"}, "target_ci_pct must be a number"),
    ({"min_reps": "2"}, "min_reps must be a whole number"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"seed": -1}, "seed must be a whole number from 0"),
    ({"cooldown_temp_c": "hot"}, "cooldown_temp_c must be a number or none"),
    ({"min_reps": True}, "min_reps must be a whole number"),
    ({"target_ci_pct": float("nan")}, "target_ci_pct must be a number"),
    ({"idle_s": float("inf")}, "idle_s must be a number or none"),
    ({"window_s": 1e6}, "window_s must be a finite number > 0 and <= 600"),
    ({"threads": 10000}, "threads must be a whole number from 1 to"),
    ({"max_reps": 10**9}, "max_reps must be a whole number from 2 to 1000"),
    ({"serial": "a\x00b"}, "without NUL"),
])
def test_bad_settings(over, msg):
    with pytest.raises(UsageError, match=msg):
        make_plan("virtual", "virtual", over)


def test_toml(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('[run]\nlevels = [10, 30]\nwindow_s = 2.5\n')
    assert make_plan("host", "host", load_toml(p)).window_s == 2.5
    p.write_text('levels = [10]\nwindw_s = 2\n')
    with pytest.raises(UsageError, match="unknown key.*windw_s"):
        load_toml(p)
    p.write_text('levels = [10')
    with pytest.raises(UsageError, match="not valid TOML"):
        load_toml(p)


def test_inferences_per_window():
    plan = make_plan("real", "nexus4")
    # 15 s window at 80 ms -> 188; 1024 / 4 reps -> 256
    assert inferences_per_window(plan, 80.0) == 256
    assert inferences_per_window(plan, 10.0) == 1500


def test_ci_reached():
    tight = {"a": [10.0, 10.1, 9.9, 10.0], "b": [5.0, 5.01, 4.99]}
    assert ci_reached(tight, 5.0, 3)
    assert not ci_reached(tight, 5.0, 4)  # b has only 3
    assert not ci_reached({"a": [10.0, 20.0, 5.0]}, 5.0, 3)
    assert not ci_reached({"a": list(np.full(3, np.nan))}, 5.0, 2)


def test_bad_settings_from_toml_name_the_file(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('levels = [10.7, 20]\n')
    with pytest.raises(UsageError, match=r"--config '.*run.toml': levels must be a list of whole numbers"):
        load_toml(p)
    p.write_text('run = 3\n')
    with pytest.raises(UsageError, match=r"\[run\] must be a table"):
        load_toml(p)


def test_check_inputs_refuses_unknown_method_model_stats(tmp_path):
    from harness.plan import check_inputs

    for over, msg in (({"method": "bogus"}, "unknown method 'bogus'"),
                      ({"model": str(tmp_path / "missing.npz")}, "--model .*no such file"),
                      ({"stats": str(tmp_path / "missing.npz")}, "--stats .*no such file")):
        with pytest.raises(Exception, match=msg) as info:
            check_inputs(make_plan("virtual", "virtual", over))
        from harness.errors import INPUT_ERRORS

        assert isinstance(info.value, INPUT_ERRORS)


def _row(model, level, t, t_ci, ts_ci, e=None, e_ci=None, es_ci=None):
    return {"model": model, "level": level, "time_ms": t, "time_ms_ci": t_ci, "time_saved_pct_ci": ts_ci,
            "energy_mj": e, "energy_mj_ci": e_ci, "energy_saved_pct_ci": es_ci}


def test_target_misses_names_the_level_and_by_how_much():
    from harness.plan import target_misses

    plan = make_plan("virtual", "virtual", {"target_saved_ci_pts": 2.0})
    assert plan.target_ci_pct is None  # the virtual default targets savings only
    rows = [_row("L0", 0, 10.0, 5.0, math.nan, 20.0, 9.0, math.nan),
            _row("L10", 10, 9.0, 0.1, 1.5, 18.0, 0.1, 2.6),
            _row("L30", 30, 7.0, 0.1, math.nan, 14.0, 0.1, 1.0)]
    misses = target_misses(rows, plan, measures_energy=True)
    assert [(m.model, m.what) for m in misses] == [("L10", "energy saved"), ("L30", "time saved")]
    assert misses[0].missed_by == pytest.approx(0.6) and misses[0].unit == "points"
    assert "level 10" in misses[0].text and "missed by 0.60" in misses[0].text
    assert misses[1].half_width is None and "no CI yet" in misses[1].text
    assert target_misses(rows, plan, measures_energy=False) == misses[1:]  # energy not judged without it
    # the per-model target (percent of the value) when set
    per_model = make_plan("virtual", "virtual", {"target_saved_ci_pts": 3.0, "target_ci_pct": 10.0})
    got = target_misses(rows, per_model, measures_energy=False)
    assert [(m.model, m.what, m.half_width) for m in got] == [("L0", "time", 50.0), ("L30", "time saved", None)]


def test_target_from_events_and_status_text():
    from harness.plan import status_text, target_from_events

    ev = [("started", "x", "t"), ("target_not_reached", "level 10: ...", "t"),
          ("complete", json.dumps({"target_reached": False, "misses": ["level 10: ..."]}), "t")]
    tgt = target_from_events(ev)
    assert tgt == {"reached": False, "misses": ["level 10: ..."]}
    assert status_text("complete", tgt) == "complete, target not reached"
    assert status_text("complete", {"reached": True, "misses": []}) == "complete, target reached"
    assert target_from_events([("complete", json.dumps({"wall_s": 1}), "t")]) is None  # older runs
    assert target_from_events([("started", "", "t")]) is None
    assert status_text("interrupted", tgt) == "interrupted"

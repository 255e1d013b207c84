"""``harness compare`` on the virtual lab: the same plan twice is "same"; a genuinely slower model is caught.

Real runs on the virtual lab (virtual phone over loopback ADB, virtual Monsoon, real ExecuTorch programs of
small NIN variants); nothing of ours is mocked.  The regression is a genuinely bigger program: L50 exported
28 channels wide instead of 20, about 20-25% more time per inference on this host.  Seven rounds, so that a
window or two lost to sync markers under heavy load leave enough.  Three runs of 20-50 s each and three small
exports: slow (``HARNESS_SLOW=1``; 5.5 minutes at load 14-15).
"""

import json

import pytest

from device.files import file_hash
from harness.backends import VirtualLabBackend
from harness.cli import main
from harness.plan import make_plan
from harness.runloop import PreparedModel, create_run, run_experiment
from harness.store import Store

pytestmark = pytest.mark.slow

PLAN = {"window_s": 0.25, "idle_s": 0.2, "min_reps": 7, "max_reps": 7, "min_inferences_per_model": 20,
        "min_inference_s_per_model": 0.25, "warmup_inferences": 5}


def _model(key, level, pte):
    h = file_hash(pte)
    return PreparedModel(key, level, (0, 1, 2, 3, 4), "paper", 100 - level, float(level), f"m{key}", h, str(pte))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_weights, tiny_pte):
    from harness.exportcheck import export_weights
    from specialist.export import ExportOptions

    tmp = tmp_path_factory.mktemp("cmpv")
    pte = {}
    for width in (48, 20, 28):
        pte[width] = tmp / f"tiny{width}.pte"
        export_weights(tiny_weights(width), pte[width], ExportOptions(verify_images=1))
    same = [_model("L0", 0, pte[48]), _model("L30", 30, tiny_pte), _model("L50", 50, pte[20])]
    slower = same[:2] + [_model("L50", 50, pte[28])]  # the regression: a bigger L50
    plan = make_plan("virtual", "virtual", PLAN)
    db = tmp / "h.db"
    ids = []
    with Store(db) as st, VirtualLabBackend("virtual-nexus4", plan, tmp / "lab") as be:
        for models in (same, same, slower):
            rid = create_run(st, be, plan)
            out = run_experiment(st, be, plan, models, rid, progress=False)
            assert out.status.startswith("complete")
            ids.append(rid)
    return db, ids


def _compare(capsys, db, a, b):
    rc = main(["compare", a, b, "--db", str(db), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def _why(res):
    return [(c["model"], c["metric"], c["verdict"], c["n_a"], c["n_b"], c["reason"]) for c in res["comparisons"]]


def test_same_plan_twice_is_same(runs, capsys):
    db, (a, b, _) = runs
    rc, res = _compare(capsys, db, a, b)
    assert rc == 0 and not res["regressed"]
    assert res["mode"] == "relative" and res["threshold_default"]
    verdicts = {(c["model"], c["metric"]): c["verdict"] for c in res["comparisons"]}
    assert set(verdicts) == {(m, x) for m in ("L0", "L30", "L50") for x in ("time_ms", "energy_mj")}
    assert set(verdicts.values()) == {"same"}, _why(res)


def test_a_slower_model_is_a_regression(runs, capsys):
    db, (a, _, c) = runs
    rc, res = _compare(capsys, db, a, c)
    assert rc == 1 and res["regressed"]
    got = {(x["model"], x["metric"]): x for x in res["comparisons"]}
    for metric in ("time_ms", "energy_mj"):
        assert got[("L50", metric)]["verdict"] == "regressed", _why(res)
        assert got[("L50", metric)]["effect_vs_common_pct"] > 10.0
        assert not got[("L50", metric)]["same_artifact"]
        assert got[("L0", metric)]["verdict"] == "same" and got[("L30", metric)]["verdict"] == "same"
    # the other way round the bigger model was replaced by the smaller one: improved, exit 0
    rc, res = _compare(capsys, db, c, a)
    assert rc == 0 and {x["verdict"] for x in res["comparisons"] if x["model"] == "L50"} == {"improved"}

"""Per-layer profiles: operators mapped to layers, a short virtual run profiled per model, ``harness profile``."""

import json

import pytest

from device.files import file_hash
from harness.backends import VirtualLabBackend
from harness.cli import main
from harness.plan import make_plan
from harness.profile import (
    LayerFlops,
    align,
    collect_run_profiles,
    nin_layers,
    profile_table_data,
    run_profile_dir,
)
from harness.runloop import PreparedModel, create_run, run_experiment
from harness.store import Store

#: the XNNPACK operators of the shipped NIN, in execution order (an ETDump of the base model)
NIN_OPS = ["Transpose", "Convolution IGEMM #1", "Fully Connected #1", "Fully Connected #2", "Max Pooling #1",
           "Convolution IGEMM #2", "Fully Connected #3", "Fully Connected #4", "Convolution DWConv #1",
           "Convolution IGEMM #3", "Fully Connected #5", "Fully Connected #6", "Mean #1", "Transpose #2"]


def _ops(names):
    from device.etdump import op_kind

    return [{"name": n, "kind": op_kind(n), "median_ms": 0.1} for n in names]


def test_nin_operators_map_to_its_nine_layers(tiny_weights):
    layers = nin_layers(tiny_weights(16))
    got = align(_ops(NIN_OPS), layers)
    assert [g for g in got if g] == [lay.name for lay in layers]
    # the average pool that XNNPACK runs as a depthwise convolution is not CONV3
    assert got[NIN_OPS.index("Convolution DWConv #1")] is None
    assert got[NIN_OPS.index("Convolution IGEMM #3")] == "CONV3"
    assert all(lay.flops > 0 for lay in layers)
    # narrower layers: fewer FLOPs in every layer but the first one's input side
    narrow = {lay.name: lay.flops for lay in nin_layers(tiny_weights(8))}
    assert all(narrow[lay.name] < lay.flops for lay in layers)


def test_a_depthwise_layer_takes_a_dwconv_and_extra_layers_stay_unmatched():
    layers = [LayerFlops("stem", ("conv",), 10), LayerFlops("dw", ("depthwise", "conv"), 2),
              LayerFlops("fc", ("fc",), 1), LayerFlops("never", ("fc",), 1)]
    got = align(_ops(["Convolution IGEMM #1", "Convolution DWConv #1", "Max Pooling", "Fully Connected #1"]),
                layers)
    assert got == ["stem", "dw", None, "fc"]


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory, tiny_pte, tiny_weights):
    """A short virtual run of two models (the tiny NIN standing for both), then one profiled pass each."""
    tmp = tmp_path_factory.mktemp("profiled-run")
    h = file_hash(tiny_pte)
    models = [PreparedModel("L0", 0, (0, 1), "paper", 100, 0.0, "m0", h, str(tiny_pte)),
              PreparedModel("L50", 50, (0, 1), "paper", 50, 50.0, "m50", h, str(tiny_pte))]
    plan = make_plan("virtual", "virtual", {"window_s": 0.3, "idle_s": 0.3, "min_reps": 2, "max_reps": 2,
                                            "min_inferences_per_model": 4, "min_inference_s_per_model": 0.2,
                                            "warmup_inferences": 1})
    db = tmp / "h.db"
    layers = nin_layers(tiny_weights(16))
    with Store(db) as st:
        be = VirtualLabBackend("virtual-nexus4", plan, tmp / "lab")
        with be:
            run_id = create_run(st, be, plan)
            assert run_experiment(st, be, plan, models, run_id, progress=False).status.startswith("complete")
            n_windows = len(st.windows(run_id))
            doc = collect_run_profiles(be, models, run_profile_dir(db, run_id), run_id,
                                       {"L0": layers, "L50": layers}, runs=3)
            # the profiled pass is no window: nothing was added to the measurements
            assert len(st.windows(run_id)) == n_windows
            remote_left = be.device.run(["ls", f"{be.profile.work_dir}"], check=False).output
    return db, run_id, doc, remote_left


def test_a_virtual_run_has_a_profile_for_each_model(profiled_run):
    db, run_id, doc, remote_left = profiled_run
    assert [m["model"] for m in doc["models"]] == ["L0", "L50"]
    for m in doc["models"]:
        assert "note" not in m, m.get("note")
        assert m["runs"] == 3 and m["execute_ms"] > 0
        assert m["operators"] and all(o["median_ms"] >= 0 and o["min_ms"] >= 0 for o in m["operators"])
        assert [r["layer"] for r in m["layers"]][:2] == ["CONV1", "CCCP1"]
        assert all(r["time_ms"] is not None and r["time_ms"] >= 0 for r in m["layers"])
        assert m["unattributed_ms"] >= 0
        etdp = run_profile_dir(db, run_id) / m["etdump"]
        assert etdp.is_file() and file_hash(etdp) == m["etdump_sha256"]
    assert ".etdp" not in remote_left  # pulled and removed from the phone
    stored = json.loads((run_profile_dir(db, run_id) / "profile.json").read_text())
    assert stored["schema_version"] == 1 and stored["run_id"] == run_id


def test_profile_table_data_compares_with_the_full_model(profiled_run):
    db, run_id, _, _ = profiled_run
    data = profile_table_data(db, run_id)
    assert data["base_model"] == "L0" and [m["model"] for m in data["models"]] == ["L0", "L50"]
    for r in data["models"][1]["layers"]:
        assert r["base_flops"] == r["flops"] and r["flops_saved_pct"] == 0.0
        assert r["speedup"] is None or r["speedup"] > 0
    assert [m["model"] for m in profile_table_data(db, run_id, "L50")["models"]] == ["L50"]


def test_profile_command_text_and_json(profiled_run, capsys):
    db, run_id, _, _ = profiled_run
    assert main(["profile", run_id[:8], "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] == run_id and len(out["models"]) == 2
    assert all(m["layers"] and m["operators"] for m in out["models"])
    assert main(["profile", run_id, "--db", str(db), "--model", "L50"]) == 0
    text = capsys.readouterr().out
    assert "L50 (level 50%)" in text and "CONV1" in text and "speedup" in text and "L0 (level" not in text
    assert "in no operator" in text
    assert main(["profile", run_id, "--db", str(db), "--model", "L99"]) == 2
    assert "L99" in capsys.readouterr().err


def test_a_run_without_profile_is_one_clear_line(tmp_path, capsys):
    from harness.store_records import RunRecord  # noqa: F401 - the store exists with a run but no profile

    plan = make_plan("host", "host", {})
    db = tmp_path / "h.db"
    with Store(db) as st:
        from harness.backends import HostBackend

        run_id = create_run(st, HostBackend(), plan)
    assert main(["profile", run_id, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "no per-layer profile" in err and err.count("\n") == 1


def test_host_backend_profiles_outside_its_windows(tiny_pte, tmp_path, tiny_weights):
    from harness.backends import HostBackend

    m = PreparedModel("L0", 0, (0, 1), "paper", 100, 0.0, "m0", file_hash(tiny_pte), str(tiny_pte))
    with HostBackend(threads=1) as be:
        be.prepare(m, warmup=1)
        doc = collect_run_profiles(be, [m], tmp_path / "prof", "r1", None, runs=2)
        assert be.run_window(m, 3, 0).valid  # the loaded program still runs after the profiled pass
    (entry,) = doc["models"]
    assert entry["runs"] == 2 and entry["operators"] and entry["layers"] == []
    assert "FLOPs per layer unknown" in entry["note"]


def test_a_layer_timed_at_zero_ms_has_no_speedup():
    from harness.profile import _ratio

    assert _ratio(2.0, 1.0) == 2.0
    assert _ratio(0.0, 1.0) is None and _ratio(1.0, 0.0) is None and _ratio(None, 1.0) is None

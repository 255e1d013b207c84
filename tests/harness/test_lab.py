"""The lab without a cluster: lab files, device groups and resources, ``--lab`` input checks, and the record of
a lost node's window against a real store (the cluster itself: test_lab_cluster.py)."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.errors import InputError
from harness.lab.inventory import LabDevice, expand_devices, load_lab_file, node_resources, owned_devices

LAB = """
[[devices]]
serial = "R1"
kind = "real"
profile = "nexus4"
monitor_serial = "M7"
host = "bench-a"

[[devices]]
serial = "vp9"
host = "bench-b"

[groups]
nightly = ["R1", "vp9"]
"""


def test_lab_file_devices_groups_and_resources(tmp_path, monkeypatch):
    p = tmp_path / "lab.toml"
    p.write_text(LAB)
    lab = load_lab_file(p)
    assert [d.serial for d in lab.devices] == ["R1", "vp9"]
    assert lab.group("nightly") == ("R1", "vp9")
    assert node_resources(list(lab.devices)) == {"device:R1": 1.0, "monsoon:M7": 1.0, "pair:R1:M7": 1.0,
                                                  "device:vp9": 1.0, "monsoon:vmon-vp9": 1.0,
                                                  "pair:vp9:vmon-vp9": 1.0}
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))  # no virtual phones running there
    assert [d.serial for d in owned_devices(p, "bench-a", discover=False)] == ["R1"]
    assert [d.serial for d in owned_devices(p, "elsewhere", discover=False)] == []
    assert expand_devices("nightly,R1,extra", p) == ("R1", "vp9", "extra")


@pytest.mark.parametrize("text, message", [
    ('[[devices]]\nserial = "a b"\n', "serial 'a b'"),
    ('[[devices]]\nserial = "x"\nkind = "phone"\n', "kind 'phone'"),
    ('[[devices]]\nserial = "x"\ncolour = 1\n', "unknown key 'colour'"),
    ('[[devices]]\nserial = "x"\n[[devices]]\nserial = "x"\n', "listed twice"),
    ('[groups]\ng = []\n', "non-empty list"),
    ('hosts = 1\n', "unknown key 'hosts'"),
])
def test_bad_lab_file_is_one_line(tmp_path, text, message):
    p = tmp_path / "lab.toml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_lab_file(p)


def test_device_resource_names_are_checked():
    with pytest.raises(InputError):
        LabDevice("bad/serial")
    assert LabDevice("ok-1", monitor="none").resources() == {"device:ok-1": 1.0}
    assert LabDevice("r2", kind="real").resources() == {"device:r2": 1.0}  # a USB phone with no Monsoon named


def test_a_device_job_needs_its_paired_monitor(tmp_path):
    """The pairing comes from the lab file (or a virtual phone's own Monsoon) and travels with the node's
    resources: the job of a device needs its monitor, so two phones wired to one Monsoon never measure at once."""
    from harness.lab.inventory import device_requirements, paired_monitors

    p = tmp_path / "lab.toml"
    p.write_text('[[devices]]\nserial = "A"\nkind = "real"\nprofile = "nexus4"\nmonitor_serial = "M1"\n'
                 '[[devices]]\nserial = "B"\nkind = "real"\nprofile = "nexus4"\nmonitor_serial = "M1"\n'
                 '[[devices]]\nserial = "C"\nkind = "real"\nprofile = "nexus4"\nmonitor = "none"\n'
                 '[[devices]]\nserial = "vp1"\n')
    res = node_resources(list(load_lab_file(p).devices))
    assert res["monsoon:M1"] == 1.0  # one unit for the one Monsoon both phones share
    assert paired_monitors("A", res) == paired_monitors("B", res) == ["M1"] and paired_monitors("C", res) == []
    assert device_requirements("A", res) == {"device:A": 1.0, "monsoon:M1": 1.0}
    assert device_requirements("B", res) == {"device:B": 1.0, "monsoon:M1": 1.0}
    assert device_requirements("C", res) == {"device:C": 1.0}
    assert device_requirements("vp1", res) == {"device:vp1": 1.0, "monsoon:vmon-vp1": 1.0}
    assert device_requirements("vp", res) == {"device:vp": 1.0}  # no prefix confusion between vp and vp1


def test_a_device_job_refuses_a_changed_pairing(tmp_path, monkeypatch):
    """The node checks the monitor the driver scheduled the job with against its own pairing."""
    from harness.lab.devicejob import run_device_job

    p = tmp_path / "lab.toml"
    p.write_text('[[devices]]\nserial = "A"\nkind = "real"\nprofile = "nexus4"\nmonitor_serial = "M2"\n')
    monkeypatch.setenv("HARNESS_LAB_FILE", str(p))
    monkeypatch.setenv("HARNESS_LAB_HOST", "bench-a")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    reports = []
    out = run_device_job({"serial": "A", "lab_run": "lab-1", "db": str(tmp_path / "h.db"), "models": [],
                          "monitors": ["M1"]}, {}, reports.append)
    assert out["status"] == "failed" and "paired with monitor M2" in out["error"] and "not M1" in out["error"]
    assert not (tmp_path / "h.db").exists() and reports[-1]["state"] == "failed"


@pytest.mark.parametrize("argv, message", [
    (["run", "--lab", "127.0.0.2:1"], "--lab needs --devices"),
    (["run", "--lab", "nohost", "--devices", "a"], "HOST:PORT"),
    (["run", "--lab", "127.0.0.2:1", "--devices", "a", "--device", "host"], "drop --device"),
    (["run", "--lab", "127.0.0.2:1", "--devices", "a b"], "--devices: serial"),
    (["run", "--lab", "127.0.0.2:1", "--resume", "lab-x", "--levels", "10"], "drop --levels"),
    (["run", "--lab", "127.0.0.2:1", "--devices", "a", "--levels", "200"], "levels"),
    (["sweep", "--lab", "nohost"], "HOST:PORT"),
])
def test_lab_flags_bad_input_exit_2_before_any_work(tmp_path, capsys, argv, message):
    db = tmp_path / "r" / "h.db"
    code = main([*argv, "--db", str(db)] if argv[0] == "run" else [*argv, "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not db.exists() and not (tmp_path / "s").exists()


def test_lost_node_window_is_recorded_invalid_once(tmp_path):
    from harness.lab.labrun import lab_runs_of, pending_slot, record_lost
    from harness.plan import make_plan
    from harness.store import RunRecord, Store, WindowRecord

    plan = make_plan("virtual", "virtual", {"levels": [50], "min_reps": 2, "max_reps": 2, "target_ci_pct": 0.001})
    with Store(tmp_path / "h.db") as st:
        st.create_run(RunRecord("r1", "virtual", "fp", "{}", True, True, "monsoon", plan.to_json()))
        st.add_event("r1", "lab", json.dumps({"lab_run": "lab-1", "serial": "vp1", "host": "a"}))
        for seq in range(3):
            st.add_window(WindowRecord("r1", seq, 0, "idle" if seq % 2 == 0 else "inference", "", "valid"))
        assert lab_runs_of(st, "lab-1") == {"vp1": "r1"} and lab_runs_of(st, "lab-2") == {}
        assert pending_slot(st, "r1").seq == 3
        assert record_lost(st, "r1", "node lost: NodeDiedError") == 3
        w = {x.seq: x for x in st.windows("r1")}[3]
        assert w.status == "invalid" and w.reason == "node lost: NodeDiedError" and w.kind == "inference"
        assert st.run_status("r1") == "interrupted"
        assert pending_slot(st, "r1").seq == 4  # a resume goes on after it: nothing measured twice
        for seq in range(4, 9):
            st.add_window(WindowRecord("r1", seq, seq // 4, "idle", "", "valid"))
        assert pending_slot(st, "r1") is None  # 2 rounds x 2 models x 2 + the closing idle


def test_ray_cluster_messages_do_not_reach_stdout(monkeypatch, capsys, caplog):
    """Ray's driver prints a dead node's "Raylet is terminated" to stdout; the lab sends it to the log so
    that ``harness run --lab --json`` stays one JSON object."""
    import ray._private.worker as ray_worker

    from harness.lab import ray_adapter

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored afterwards
    ray_adapter._quiet_stdout(ray_adapter._ray())
    with caplog.at_level("WARNING", logger="harness.lab.ray_adapter"):
        ray_worker.print_to_stdstream({"lines": ["Raylet is terminated."], "pid": "raylet", "is_err": False},
                                      ignore_prefix=False)
    assert capsys.readouterr().out == ""
    assert "ray (raylet): Raylet is terminated." in caplog.text

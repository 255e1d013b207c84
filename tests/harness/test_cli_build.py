"""The builder's commands through the real CLI entry point: JSON output, one-line errors, exit 2, nothing written."""

import json

import numpy as np
import pytest

from harness.cli import main
from specialist.stats import default_stats_path

needs_artifact = pytest.mark.skipif(not default_stats_path().is_file(), reason="no shipped statistics artifact")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@needs_artifact
def test_build_json_and_file(tmp_path, capsys):
    out_file = tmp_path / "spec.pt"
    code, out, _ = run(capsys, "build", "--classes", "0,1,2", "--level", "30", "--impact", "grad",
                       "-o", str(out_file), "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("classes", "level", "flops_base", "flops", "flops_pruned_pct", "layers", "build_ms"):
        assert key in d
    assert d["classes"] == [0, 1, 2] and d["flops_base"] == 444_973_056
    assert 38.9 - 1 < d["flops_pruned_pct"] < 38.9 + 1.5  # the default rounds widths to 16: at or under budget, coarser
    assert {"name", "maps_before", "maps_after", "flops_before", "flops_after"} <= set(d["layers"][2])
    assert out_file.is_file()


@needs_artifact
def test_accuracy_json(capsys, data_dir):
    code, out, _ = run(capsys, "accuracy", "--classes", "3,5", "--level", "0", "--per-class", "20",
                       "--data", str(data_dir), "--json")
    d = json.loads(out)
    assert code == 0 and d["n"] == 40
    assert d["accuracy"] == pytest.approx(d["accuracy_unpruned"])  # level 0 is the unpruned model


@pytest.mark.parametrize("argv,msg", [
    (["--classes", "0,1,10", "--level", "30"], "out of range"),
    (["--classes", "1,1", "--level", "30"], "repeated"),
    (["--classes", "", "--level", "30"], "empty"),
    (["--classes", "0,,2", "--level", "30"], "empty item"),
    (["--classes", "a", "--level", "30"], "not a whole number"),
    (["--classes", "0,1", "--level", "-5"], "at least 0"),
    (["--classes", "0,1", "--level", "100"], "below 100"),
    (["--classes", "0,1", "--level", "30", "--method", "nope"], "unknown method"),
])
def test_bad_input_exit_2_nothing_written(tmp_path, capsys, argv, msg):
    target = tmp_path / "spec.pt"
    code, out, err = run(capsys, "build", *argv, "-o", str(target))
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not target.exists() and out == ""


def test_corrupt_artifact_and_weights(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    code, _, err = run(capsys, "build", "--classes", "0,1", "--level", "10", "--stats", str(bad))
    assert code == 2 and "corrupt" in err
    code, _, err = run(capsys, "build", "--classes", "0,1", "--level", "10", "--model", str(bad))
    assert code == 2 and "truncated" in err


@needs_artifact
def test_artifact_from_other_model(tmp_path, capsys, base_weights):
    from specialist.model import weights_to_arrays

    arrays = weights_to_arrays(base_weights)
    arrays["CONV1.bias"] = arrays["CONV1.bias"] + np.float32(0.5)
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    code, _, err = run(capsys, "build", "--classes", "0,1", "--level", "10", "--model", str(other),
                       "--stats", str(default_stats_path()))
    assert code == 2 and "another base model" in err


def test_data_dir_without_files(tmp_path, capsys):
    code, _, err = run(capsys, "accuracy", "--classes", "0,1", "--level", "0", "--data", str(tmp_path))
    assert code == 2 and "neither test.npz" in err
    code, _, err = run(capsys, "stats", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "s.npz"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "s.npz").exists()


def test_methods_lists_paper(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0 and "paper" in [m["name"] for m in json.loads(out)["methods"]]
